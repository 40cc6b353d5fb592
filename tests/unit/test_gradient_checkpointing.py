"""--gradient-checkpointing: activations are recomputed (the decoder layers run twice per step)
and the selective-head loss path gives the same loss and gradients as without it."""

import torch

from fedit.client.batching import collate
from fedit.client.loss import _plain_head, token_losses
from fedit.config import Config, DataConfig
from fedit.data import load_examples
from fedit.model import adapter_parameters
from fedit.runners.common import build_workbench


def loss_and_grads(bench, batch):
    params = adapter_parameters(bench.model)
    for p in params.values():
        p.grad = None
    bench.model.train()
    loss = token_losses(bench.model, batch)[0].sum()
    loss.backward()
    bench.model.eval()
    return loss.detach(), {k: p.grad.clone() for k, p in params.items()}


def test_checkpointed_losses_and_grads_match(fixtures_dir):
    base = {"model": "tiny-random", "precision": "fp32", "device": "cpu", "lora_dropout": 0.0}
    plain = build_workbench(Config().override(base))
    ckpt = build_workbench(Config().override({**base, "gradient_checkpointing": True}))
    assert _plain_head(ckpt.model) is not None          # the selective-head path is the one tested
    assert ckpt.model.get_base_model().is_activation_checkpointing
    assert not plain.model.get_base_model().is_activation_checkpointing
    examples, _ = load_examples(fixtures_dir / "tiny" / "client_0.json")
    batch = collate(plain.tokenize(examples[:4], DataConfig(max_len=128)), plain.tokenizer.pad_token_id)
    calls = []
    layer = ckpt.model.get_base_model().model.layers[0]
    hook = layer.mlp.register_forward_pre_hook(lambda *a: calls.append(1))  # (torch stops the
    # recomputation early, once the last saved tensor is rebuilt: a post-forward hook would not fire)
    loss_c, grads_c = loss_and_grads(ckpt, batch)
    hook.remove()
    assert len(calls) == 2                                # forward + recomputation in backward
    loss_p, grads_p = loss_and_grads(plain, batch)
    torch.testing.assert_close(loss_c, loss_p)
    assert grads_c.keys() == grads_p.keys()
    for key in grads_p:
        torch.testing.assert_close(grads_c[key], grads_p[key])
