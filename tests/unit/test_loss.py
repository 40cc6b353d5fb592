"""The selective output-head loss equals the loss from the stock full-vocabulary logits."""

import torch
import torch.nn.functional as F

from fedit.client.batching import collate
from fedit.client.loss import _plain_head, token_losses
from fedit.data.prompts import IGNORE_INDEX, TokenizedExample


def test_selective_head_matches_full_logits(tiny_bench):
    model = tiny_bench.model
    assert _plain_head(model) is not None          # llama: the fast path is the one under test
    exs = [TokenizedExample([5, 6, 7, 8, 9], [IGNORE_INDEX, IGNORE_INDEX, 7, 8, 9], "a"),
           TokenizedExample([10, 11, 12], [IGNORE_INDEX, 11, 12], "b")]
    batch = collate(exs, pad_id=0)
    model.eval()
    with torch.no_grad():
        losses, rows = token_losses(model, batch)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    targets = batch["labels"][:, 1:]
    full = F.cross_entropy(logits[:, :-1].transpose(1, 2), targets, ignore_index=IGNORE_INDEX, reduction="none")
    expected = full[targets != IGNORE_INDEX]
    assert rows.tolist() == [0, 0, 0, 1, 1]
    torch.testing.assert_close(losses, expected, rtol=1e-5, atol=1e-5)
