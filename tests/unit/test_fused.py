"""The fused LoRA kernel, sequence packing and multi-LoRA training on tiny-random."""

import pytest
import torch

from fedit.client.batching import collate
from fedit.client.engines.dropout import DropoutStreams
from fedit.client.engines.fused import fused_engine, micro_batch_losses
from fedit.client.job import ClientJob, proximal_correction
from fedit.client.loss import token_losses
from fedit.client.engines.packed import pack
from fedit.client.multilora import concurrency
from fedit.client.runs import ClientRun
from fedit.config import Config, DataConfig, TrainConfig
from fedit.data import load_examples
from fedit.data.prompts import TokenizedExample
from fedit.errors import ConfigError
from fedit.model import adapter_parameters, set_adapter_state


def make_bench(dropout: float):
    from fedit.runners.common import build_workbench

    cfg = Config().override({"model": "tiny-random", "precision": "fp32", "device": "cpu",
                             "lora_dropout": dropout})
    return build_workbench(cfg)


@pytest.fixture(scope="module")
def bench(fedit_cache):
    return make_bench(0.1)


@pytest.fixture(scope="module")
def datas(bench, fixtures_dir):
    out = []
    for i in range(3):
        examples, _ = load_examples(fixtures_dir / "tiny" / f"client_{i}.json")
        out.append(bench.tokenize(examples, DataConfig(max_len=128)))
    return out


def random_state(bench, seed: int) -> dict:
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=gen) * 0.05 for k, v in bench.initial_state.items()}


def test_pack_lays_examples_end_to_end_with_positions_and_targets_per_example():
    a = TokenizedExample([5, 6, 7], [-100, 6, 7], "x")
    b = TokenizedExample([8, 9], [-100, 9], "x")
    c = TokenizedExample([1, 2], [-100, 2], "x")
    batch = pack([(0, [a, b]), (1, [c])])
    assert batch.input_ids.tolist() == [[5, 6, 7, 8, 9, 1, 2]]
    assert batch.position_ids.tolist() == [[0, 1, 2, 0, 1, 0, 1]]
    assert batch.targets.tolist() == [6, 7, -100, 9, -100, 2, -100]  # never across examples
    assert batch.bounds == [(0, 3), (3, 5), (5, 7)]
    assert batch.blocks == [(0, 0, 5), (1, 5, 7)]


def test_fused_equals_peft_without_dropout(fedit_cache, datas):
    """Same per-token losses and LoRA gradients as PEFT on a padded batch (float rounding only)."""
    bench = make_bench(0.0)
    set_adapter_state(bench.model, random_state(bench, 0))
    params = adapter_parameters(bench.model)
    micro = datas[0][:4]
    bench.model.train()
    ref = token_losses(bench.model, collate(micro, bench.tokenizer.pad_token_id))[0]
    ref.sum().backward()
    ref_grads = {k: p.grad.clone() for k, p in params.items()}
    bench.model.zero_grad(set_to_none=True)
    sums, tokens = micro_batch_losses(bench.model, [(0, micro, (1, 0))], [params], torch.device("cpu"), None)
    sums.sum().backward()
    assert tokens == sum(len(e.input_ids) for e in micro)
    torch.testing.assert_close(sums[0], ref.sum(), rtol=1e-5, atol=0)
    for key, p in params.items():
        torch.testing.assert_close(p.grad, ref_grads[key], rtol=1e-4, atol=1e-7)
    bench.model.zero_grad(set_to_none=True)


def test_projections_sharing_an_input_form_one_group_without_copying_weights(bench):
    engine = fused_engine(bench.model)
    kinds = [[s.name.rsplit(".", 1)[1] for s in g.sites] for g in engine.groups]
    assert kinds[:4] == [["q_proj", "k_proj", "v_proj"], ["o_proj"], ["gate_proj", "up_proj"], ["down_proj"]]
    assert len(engine.groups) == 4 * bench.model.config.num_hidden_layers
    qkv = engine.groups[0]
    for site in qkv.sites:  # the layers' weights are views into the group's concatenated weight
        assert site.module.base_layer.weight.untyped_storage().data_ptr() == qkv.weight.untyped_storage().data_ptr()
    assert fused_engine(bench.model) is engine


def test_dropout_masks_do_not_depend_on_how_examples_are_batched():
    seeds, lengths = [(1, 2, i) for i in range(3)], [4, 7, 5]
    bounds = [(0, 4), (4, 11), (11, 16)]
    together = DropoutStreams(seeds, bounds)
    alone = [DropoutStreams([s], [(0, n)]) for s, n in zip(seeds, lengths)]
    for width in (6, 3):  # successive draws (layers) continue each example's stream
        assert torch.equal(together.drop(width, 0.3), torch.cat([a.drop(width, 0.3) for a in alone]))
    rate = DropoutStreams([(0, 0, 0)], [(0, 20000)]).drop(10, 0.05).float().mean().item()
    assert rate == pytest.approx(0.05, abs=0.002)  # 200k draws: 4 standard deviations
    assert not DropoutStreams([(0, 0, 0)], [(0, 100)]).drop(10, 0.0).any()


def test_clients_trained_together_match_each_trained_alone(bench, datas):
    """Multi-LoRA: each client's update equals its own (fused) update, up to float rounding, also
    with different step counts and a per-client FedProx correction."""
    start = random_state(bench, 1)
    cfg = TrainConfig(lr=1e-3, batch_size=4, micro_batch_size=2, local_epochs=1.0)
    short = TrainConfig(lr=1e-3, batch_size=4, micro_batch_size=2, local_steps=2)
    prox = proximal_correction(ClientJob(2, 1, start, {"proximal_mu": 5.0}), torch.device("cpu"), {})

    def runs():
        return [ClientRun(0, 1, start, datas[0], cfg), ClientRun(1, 1, start, datas[1], short),
                ClientRun(2, 1, start, datas[2], cfg, [prox])]

    together = bench.trainer.train(runs(), seed=7)
    alone = [bench.trainer.train([run], seed=7)[0] for run in runs()]
    assert [u.metrics["steps"] for u in together] == [4, 2, 4]
    for t, a in zip(together, alone):
        assert t.client_id == a.client_id and t.num_examples == a.num_examples
        assert t.metrics["train_loss"] == pytest.approx(a.metrics["train_loss"], rel=1e-5)
        for key in start:
            torch.testing.assert_close(t.state[key], a.state[key], rtol=1e-5, atol=1e-7)
    assert any(not torch.equal(together[0].state[k], together[2].state[k]) for k in start)
    assert any(not torch.equal(together[0].state[k], start[k]) for k in start)


def test_fit_with_the_fused_kernel_is_the_one_client_case(bench, datas):
    cfg = TrainConfig(lr=1e-3, batch_size=4, micro_batch_size=2, local_steps=3)
    fit = bench.trainer.fit(bench.initial_state, datas[0], cfg, seed=3, round_idx=2, client_id=0)
    alone = bench.trainer.train([ClientRun(0, 2, bench.initial_state, datas[0], cfg)], seed=3)[0]
    assert bench.trainer.lora_kernel == "fused"
    assert all(torch.equal(fit.state[k], alone.state[k]) for k in fit.state)


def test_default_concurrency_fits_memory_and_flags_are_checked(bench, datas):
    cfg = Config().override({"model": "tiny-random", "micro_batch_size": 2, "batch_size": 4})
    assert concurrency(bench.trainer, cfg, datas) == 3  # tiny-random: all clients of the round
    assert concurrency(bench.trainer, cfg.override({"concurrent_clients": 2}), datas) == 2
    with pytest.raises(ConfigError, match="--concurrent-clients: training clients at once needs --lora-kernel"):
        Config().override({"concurrent_clients": 3, "lora_kernel": "peft"})
    with pytest.raises(ConfigError, match="--concurrent-clients: must be at least 1, got 0"):
        Config().override({"concurrent_clients": 0})


def test_lora_kernel_fused_refuses_an_unsupported_model_and_auto_falls_back(bench, monkeypatch):
    from fedit.client.engines import fused
    from fedit.client.train import resolve_lora_kernel

    assert resolve_lora_kernel("auto", bench.model) == "fused"
    assert resolve_lora_kernel("peft", bench.model) == "peft"
    monkeypatch.setattr(fused, "SUPPORTED_MODELS", ("mistral",))
    assert resolve_lora_kernel("auto", bench.model) == "peft"
    with pytest.raises(ConfigError, match=r"^--lora-kernel fused: not supported for this model \(model type "
                                          r"'llama' \(fused LoRA supports mistral\)\); use auto or peft$"):
        resolve_lora_kernel("fused", bench.model)
