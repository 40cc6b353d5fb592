"""`make bench`'s report names the CPU's bf16 support and the peak of the precision the update trains in."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import run  # noqa: E402
import speed  # noqa: E402


@pytest.mark.parametrize("avx512, amx, text", [
    (True, True, "AVX512-BF16 + AMX"), (True, False, "AVX512-BF16"),
    (False, False, "none (bf16 would be emulated: fedit trains in fp32)")])
def test_cpu_bf16_support_is_named(monkeypatch, avx512, amx, text):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    assert speed.cpu_bf16_support() == text


def results(dtype: str) -> dict:
    t = {"fedit_tokens_per_s": 100.0, "fedit_peft_kernel_tokens_per_s": 80.0, "fused_vs_peft_kernel": 1.25,
         "plain_tokens_per_s": 90.0, "throughput_ratio": 1.1, "padded_to_max_useful_tokens_per_s": 40.0,
         "dynamic_vs_padded_ratio": 2.2}
    c = {"clients": 3, "concurrent_round_s": 10.0, "sequential_round_s": 12.0}
    return {"throughput": t, "rounds": {}, "concurrency": c, "matmul_peak_flops": 600e9, "peak_dtype": dtype,
            "client_flops_per_s": 150e9, "fraction_of_peak": 0.25, "peak_rss_mib": 1000.0}


def test_fraction_is_of_the_training_precision_peak_with_its_goal():
    bf16 = run.table(results("bfloat16"))
    assert "| matmul peak (bfloat16, 2048^2, this process) | 600 GFLOP/s |  |  |" in bf16
    assert ("| client update FLOP/s over the bfloat16 peak (4 x linear params x tokens) | 150.0 GFLOP/s | 25 % "
            "| >= 40 % (bf16 CPU) |") in bf16
    assert "over the float32 peak (4 x linear params x tokens) | 150.0 GFLOP/s | 25 % | >= 50 % |" in \
        run.table(results("float32"))
