"""Next-token loss on labelled (response) positions only.

The output projection of a small LLM is a large share of its compute (SmolLM2: 49152 x 576,
about a fifth of the forward FLOPs). For decoder models whose logits are a plain linear map of
the last hidden state, fedit applies that projection only at the positions that carry a loss
(the response), instead of materialising full-vocabulary logits for the whole sequence as the
stock ``model(...).logits`` does. Other models take the stock path. Both give the same loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fedit.data.prompts import IGNORE_INDEX

# Architectures whose logits are exactly lm_head(final hidden state) (no softcapping or scaling).
PLAIN_HEAD_MODELS = {"llama", "mistral", "qwen2", "qwen3", "phi3", "olmo2", "granite"}


def _plain_head(model: torch.nn.Module):
    """(decoder, lm_head) when the selective-head path is exact for this model, else None."""
    causal = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(causal, "config", None)
    if getattr(config, "model_type", None) not in PLAIN_HEAD_MODELS or \
            getattr(config, "final_logit_softcapping", None) or getattr(config, "logits_scaling", None):
        return None
    decoder, head = causal.get_decoder(), causal.get_output_embeddings()
    if decoder is None or not isinstance(head, torch.nn.Linear) or head.bias is not None:
        return None
    return decoder, head


def token_losses(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token fp32 cross-entropy at labelled positions, and the batch row of each of them."""
    targets = batch["labels"][:, 1:]
    keep = targets != IGNORE_INDEX
    plain = _plain_head(model)
    if plain is not None:
        decoder, head = plain
        hidden = decoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        logits = head(hidden[:, :-1][keep])
    else:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1][keep]
    losses = F.cross_entropy(logits.float(), targets[keep], reduction="none")
    return losses, keep.nonzero()[:, 0]
