"""Where a client update's time goes, against the matmul peak of the precision it trains in (issue 20).

Measures in one process: the 2048^2 matmul peak in fp32 and (where native) bf16, fedit's client update
(LocalTrainer.fit, default kernel, SmolLM2-135M, LoRA r=8 all-linear, batch 8 / micro-batch 4, Dolly
records) as a fraction of the peak of its own precision, and a torch.profiler table of one more update
by operator (self CPU time). Short: a few optimizer steps; run it with `nice` on a shared machine.

    .venv/bin/python benchmarks/profile_step.py [--steps 3] [--precision auto] [--out bench-results]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from speed import cpu_bf16_support, cpu_peaks, linear_params  # noqa: E402

from fedit.config import Config  # noqa: E402
from fedit.data import load_examples  # noqa: E402
from fedit.runners.common import build_workbench  # noqa: E402


def sustained_matmul(dtype: torch.dtype, seconds: float, n: int = 2048) -> float:
    """FLOP/s of back-to-back n x n matmuls over ``seconds``: on a shared machine, the peak under the
    same load as the update (the best-of-10 peak catches a quiet moment, the update cannot)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    done, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        done += 1
    return done * 2 * n ** 3 / (time.perf_counter() - t0)


def profile_table(prof, rows: int) -> list[dict]:
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) or 1
    return [{"op": e.key, "calls": e.count, "self_ms": e.self_cpu_time_total / 1000,
             "share": e.self_cpu_time_total / total} for e in events[:rows]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--lora-kernel", default="auto")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--records", type=int, default=64)
    parser.add_argument("--rows", type=int, default=15, help="operators in the profile table (0: no profile)")
    parser.add_argument("--sustained-s", type=float, default=10.0,
                        help="seconds of back-to-back matmuls before and after the timed update")
    parser.add_argument("--out", default="bench-results")
    parser.add_argument("--dolly", default=os.environ.get("FEDIT_DOLLY_DIR", "../shared/data/dolly/shepherd_10clients"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    cfg = Config().override({"model": args.model, "precision": args.precision, "device": "cpu", "max_len": 512,
                             "batch_size": 8, "micro_batch_size": 4, "local_steps": args.steps, "lr": 1.5e-4,
                             "lora_kernel": args.lora_kernel})
    bench = build_workbench(cfg)
    dtype = bench.base.autocast_dtype or torch.float32
    peaks = cpu_peaks(bench.base.device)
    peak = peaks["bf16" if dtype == torch.bfloat16 else "fp32"]
    data = [r for f in sorted(Path(args.dolly).glob("local_training_*.json")) for r in json.loads(f.read_text())]
    sample = Path(args.out) / "profile-sample.json"
    sample.parent.mkdir(parents=True, exist_ok=True)
    sample.write_text(json.dumps(random.Random(0).sample(data, args.records)))
    toks = bench.tokenize(load_examples(sample)[0], cfg.data)
    sample.unlink()
    fit = lambda: bench.trainer.fit(bench.initial_state, toks, cfg.train, seed=0, round_idx=0, client_id=0)  # noqa: E731
    fit()   # warm-up
    before = sustained_matmul(dtype, args.sustained_s)
    t0 = time.perf_counter()
    update = fit()
    seconds = time.perf_counter() - t0
    sustained = (before + sustained_matmul(dtype, args.sustained_s)) / 2
    # tokens through the model: with the fused kernel (packed rows) exactly the examples' tokens; with
    # --lora-kernel peft the padding too
    tokens = update.metrics["padded_tokens"]
    flops = 4 * linear_params(bench.model) * tokens / seconds
    table = []
    if args.rows:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            fit()
        table = profile_table(prof, args.rows)
    result = {"cpu_bf16": cpu_bf16_support(), "threads": torch.get_num_threads(), "torch": torch.__version__,
              "precision": str(dtype).removeprefix("torch."), "kernel": bench.trainer.lora_kernel,
              "matmul_peaks_flops": peaks, "peak_flops": peak, "tokens": tokens, "seconds": seconds,
              "tokens_per_s": tokens / seconds, "client_flops_per_s": flops, "fraction_of_peak": flops / peak,
              "sustained_matmul_flops": sustained, "fraction_of_sustained": flops / sustained,
              "load_average": os.getloadavg(), "profile": table}
    (Path(args.out) / f"profile-{result['precision']}.json").write_text(json.dumps(result, indent=2))
    print(f"CPU bf16: {result['cpu_bf16']}; {result['threads']} threads; trains in {result['precision']} "
          f"({result['kernel']} kernel)\nmatmul peak {peak / 1e9:.0f} GFLOP/s; client update {flops / 1e9:.1f} "
          f"GFLOP/s ({tokens / seconds:.0f} tok/s) = {100 * flops / peak:.0f} % of it; back-to-back matmuls "
          f"around it {sustained / 1e9:.0f} GFLOP/s ({100 * flops / sustained:.0f} %); load average "
          f"{os.getloadavg()[0]:.1f}\n")
    print("| operator | calls | self CPU ms | share |\n|---|---|---|---|")
    for row in result["profile"]:
        print(f"| `{row['op']}` | {row['calls']} | {row['self_ms']:.0f} | {100 * row['share']:.1f} % |")


if __name__ == "__main__":
    main()
