"""The CUDA path (skipped without a GPU; CI has none; `make gpu-check` runs these first on a GPU machine):
the fused LoRA kernel against peft in bf16, packing without cross-contamination, clients trained together
vs alone, `fedit run` on tiny-random, resume bit-identical, and a 4-bit base where bitsandbytes is present."""

import json
import os

import pytest
import torch
from safetensors.torch import load_file

from fedit.cli import main
from fedit.client.batching import collate
from fedit.client.engines.fused import micro_batch_losses
from fedit.client.engines.packed import pack, packed_token_losses
from fedit.client.loss import token_losses
from fedit.client.runs import ClientRun
from fedit.config import Config, DataConfig, TrainConfig
from fedit.data import load_examples
from fedit.model import adapter_parameters, set_adapter_state
from fedit.runners import simulation

pytestmark = pytest.mark.gpu
# FEDIT_GPU_TEST_DEVICE=cpu runs the same tests on CPU (how they were checked before any GPU was lent)
CUDA = torch.device(os.environ.get("FEDIT_GPU_TEST_DEVICE", "cuda"))


def make_bench(precision: str, dropout: float = 0.0):
    from fedit.runners.common import build_workbench

    return build_workbench(Config().override({"model": "tiny-random", "device": CUDA.type, "precision": precision,
                                              "lora_dropout": dropout}))


@pytest.fixture(scope="module")
def datas(fixtures_dir):
    bench = make_bench("fp32")
    return [bench.tokenize(load_examples(fixtures_dir / "tiny" / f"client_{i}.json")[0], DataConfig(max_len=128))
            for i in range(3)]


def random_state(bench, seed: int) -> dict:
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=gen) * 0.05 for k, v in bench.initial_state.items()}


def close(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """Relative error of a against b, and their cosine similarity (bf16: rounding of ~3 digits)."""
    a, b = a.float().flatten(), b.float().flatten()
    return ((a - b).norm() / b.norm()).item(), torch.nn.functional.cosine_similarity(a, b, dim=0).item()


@pytest.mark.parametrize("precision, loss_rtol, grad_rel", [("fp32", 1e-5, 1e-4), ("bf16", 2e-2, 5e-2)])
def test_fused_kernel_equals_peft_on_cuda(datas, precision, loss_rtol, grad_rel):
    """Per-token losses and LoRA gradients of the fused kernel (packed) vs peft (padded) on CUDA."""
    bench = make_bench(precision)
    assert bench.base.model.device.type == CUDA.type
    set_adapter_state(bench.model, random_state(bench, 0))
    params = adapter_parameters(bench.model)
    micro = datas[0][:4]
    bench.model.train()
    from fedit.model import autocast
    with autocast(CUDA, bench.base.autocast_dtype):
        ref = token_losses(bench.model, {k: v.to(CUDA) for k, v in collate(micro, bench.tokenizer.pad_token_id).items()})[0]
    ref.sum().backward()
    ref_grads = {k: p.grad.clone() for k, p in params.items()}
    bench.model.zero_grad(set_to_none=True)
    sums, tokens = micro_batch_losses(bench.model, [(0, micro, (1, 0))], [params], CUDA, bench.base.autocast_dtype)
    sums.sum().backward()
    assert tokens == sum(len(e.input_ids) for e in micro)
    torch.testing.assert_close(sums[0], ref.sum(), rtol=loss_rtol, atol=0)
    for key, p in params.items():
        rel, cos = close(p.grad, ref_grads[key])
        assert rel < grad_rel and cos > 1 - grad_rel, (key, rel, cos)


def test_packing_has_no_cross_contamination_on_cuda(datas):
    """An example's losses in a pack equal its losses alone, whatever its neighbours are."""
    bench = make_bench("fp32")
    set_adapter_state(bench.model, random_state(bench, 2))
    a, b, c = datas[0][0], datas[1][0], datas[2][0]
    decoder = bench.model
    with torch.no_grad():
        alone = packed_token_losses(decoder, pack([(0, [a])]).to(CUDA))
        with_b = packed_token_losses(decoder, pack([(0, [a, b])]).to(CUDA))
        with_c = packed_token_losses(decoder, pack([(0, [a]), (1, [c])]).to(CUDA))
    n = alone.numel()
    assert n == sum(t != -100 for t in a.labels[1:])
    torch.testing.assert_close(with_b[:n], alone, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(with_c[:n], alone, rtol=1e-5, atol=1e-6)


def test_clients_trained_together_match_each_alone_on_cuda(datas):
    bench = make_bench("fp32", dropout=0.1)
    start = random_state(bench, 1)
    cfg = TrainConfig(lr=1e-3, batch_size=4, micro_batch_size=2, local_steps=3)

    def runs():
        return [ClientRun(i, 1, start, datas[i], cfg) for i in range(3)]

    together = bench.trainer.train(runs(), seed=7)
    alone = [bench.trainer.train([run], seed=7)[0] for run in runs()]
    assert bench.trainer.lora_kernel == "fused"
    for t, a in zip(together, alone):
        assert t.metrics["train_loss"] == pytest.approx(a.metrics["train_loss"], rel=1e-5)
        for key in start:
            torch.testing.assert_close(t.state[key], a.state[key], rtol=1e-4, atol=1e-6)


def run_args(fixtures_dir, out, *extra):
    return ["run", "--model", "tiny-random", "--device", CUDA.type, "--precision", "bf16",
            "--data", str(fixtures_dir / "tiny"), "--test-data", str(fixtures_dir / "tiny_test.jsonl"),
            "--partition", "files", "--clients-per-round", "2", "--local-steps", "2", "--batch-size", "4",
            "--micro-batch-size", "2", "--max-len", "128", "--out", str(out), *extra]


@pytest.fixture(scope="module")
def cuda_run(tmp_path_factory, fixtures_dir):
    out = tmp_path_factory.mktemp("gpu") / "full"
    assert main(run_args(fixtures_dir, out, "--rounds", "3")) == 0
    return out


def test_run_on_cuda_bf16(cuda_run):
    rounds = [json.loads(x) for x in (cuda_run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["eval"]["overall"]["loss"] for r in rounds if r["type"] == "round"]
    assert len(losses) == 4 and losses[-1] < losses[0]
    assert (cuda_run / "final" / "adapter_model.safetensors").is_file()


def test_resume_on_cuda_is_bit_identical(cuda_run, fixtures_dir, tmp_path, monkeypatch):
    out = tmp_path / "crashed"
    together = simulation.InProcessClients.train_together

    def crash_in_round_2(self, jobs):
        if jobs[0].round == 2:
            raise KeyboardInterrupt
        return together(self, jobs)

    monkeypatch.setattr(simulation.InProcessClients, "train_together", crash_in_round_2)
    assert main(run_args(fixtures_dir, out, "--rounds", "3")) == 130
    monkeypatch.setattr(simulation.InProcessClients, "train_together", together)
    assert main(["run", "--out", str(out), "--resume"]) == 0
    a = load_file(str(cuda_run / "final" / "adapter_model.safetensors"))
    b = load_file(str(out / "final" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("kind", ["nf4", "int8"])
def test_quantized_base_on_cuda(kind, fixtures_dir, tmp_path):
    pytest.importorskip("bitsandbytes")
    out = tmp_path / kind
    assert main(run_args(fixtures_dir, out, "--rounds", "1", "--quantize", kind)) == 0
    assert main(["export", "--run", str(out), "--out", str(tmp_path / "merged")]) == 0
    assert "quantization_config" not in json.loads((tmp_path / "merged" / "config.json").read_text())
