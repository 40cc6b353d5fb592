"""Speed figures shared by benchmarks/run.py (CPU, make bench) and benchmarks/gpu.py.

- the matmul peak of this device, measured in this process (2048 x 2048, best of several)
- model FLOPs of a LoRA step: 4 x (parameters of the base model's linear layers) per token
  (forward 2, input gradient 2; the frozen weights get no gradient), the count issue 11 uses; it
  counts the output head on every token although fedit applies it on response tokens only, and
  leaves out attention scores
- the round time of the simulation with the round's clients trained together vs one by one
"""

from __future__ import annotations

import time
from pathlib import Path

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int = 2048, repeats: int = 10,
                budget_s: float = 20.0) -> float:
    """FLOP/s of the fastest of ``repeats`` n x n matmuls (fewer if one takes too long)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = float("inf")
    spent = 0.0
    for i in range(repeats + 1):
        sync(device)
        t0 = time.perf_counter()
        a @ b
        sync(device)
        took = time.perf_counter() - t0
        spent += took
        if i:  # the first is warm-up
            best = min(best, took)
        if spent > budget_s and i:
            break
    return 2 * n ** 3 / best


def cpu_bf16_support() -> str:
    """What this CPU offers for bf16 matmuls, as torch sees it: AVX512-BF16, AMX (tiles), or neither."""
    cpu = torch.cpu
    found = [name for name, probe in (("AVX512-BF16", "_is_avx512_bf16_supported"), ("AMX", "_is_amx_tile_supported"))
             if getattr(cpu, probe, None) is not None and getattr(cpu, probe)()]
    return " + ".join(found) if found else "none (bf16 would be emulated: fedit trains in fp32)"


def cpu_peaks(device: torch.device) -> dict:
    """fp32 and bf16 peaks; bf16 only where the hardware computes it (else it is emulated and slow)."""
    from fedit.model.load import cpu_has_native_bf16

    out = {"fp32": matmul_peak(device, torch.float32)}
    native = device.type == "cuda" or cpu_has_native_bf16()
    out["bf16"] = matmul_peak(device, torch.bfloat16) if native else None
    return out


def linear_params(model: torch.nn.Module) -> int:
    """Parameters of the base model's linear layers (LoRA factors excluded; a tied head counted)."""
    total = 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and ".lora_" not in name:
            total += module.in_features * module.out_features
    return total


def bench_concurrency(cfg, folder: Path, tmp: Path, repeats: int, bench=None) -> dict:
    """Round time with all clients of the round in shared passes vs one after another, alternating
    on the same resident model (round 1, which tokenizes the clients' data, is not timed)."""
    from fedit.runners.simulation import Simulation

    clients = len(list(folder.iterdir()))
    sim_cfg = cfg.override({"data": str(folder), "partition": "files", "test_data": None,
                            "clients_per_round": clients, "rounds": 1 + 2 * repeats})
    sim = Simulation(sim_cfg, tmp / "concurrency", bench=bench)
    sim.setup()
    sim.run_round(1)
    times: dict[int, list[float]] = {1: [], clients: []}
    compute: dict[int, list[float]] = {1: [], clients: []}
    round_idx = 1
    for _ in range(repeats):
        for width in (1, clients):
            round_idx += 1
            sim.transport.cfg.federation.concurrent_clients = width
            record = sim.run_round(round_idx)
            times[width].append(record["seconds"])
            compute[width].append(record["client_compute_seconds"])
    seq, conc = min(times[1]), min(times[clients])
    return {"clients": clients, "micro_batch_size": sim_cfg.train.micro_batch_size,
            "sequential_round_s": seq, "concurrent_round_s": conc, "concurrent_speedup": seq / conc,
            "sequential_all_s": times[1], "concurrent_all_s": times[clients]}
