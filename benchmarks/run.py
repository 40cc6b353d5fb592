"""fedit benchmarks (make bench): side-by-side ratios on SmolLM2-135M-Instruct with Dolly records.

Not tests: each figure is a ratio of two things measured in this one process, on this machine.
  0. the matmul peak of this machine (2048^2, fp32; bf16 where native) and the client update's
     FLOP/s as a fraction of it (model FLOPs: 4 x linear parameters x tokens)
  1. client throughput: fedit's LocalTrainer.fit (default fused LoRA kernel; and --lora-kernel peft)
     vs a plain PEFT + torch loop on the same batches
  1b. round time with the round's clients trained together (multi-LoRA) vs one after another
  2. simulation overhead: round wall time minus the clients' forward/backward/step time
  3. fedit per round vs a Trainer-per-client loop (Shepherd's way: HF Trainer rebuilt per client,
     datasets re-tokenized, adapters deep-copied and sent through disk), same clients and steps;
     and the FlowerTune-like variant that also reloads the base model per client
  4. useful (non-padding) tokens/s with length-grouped dynamic padding vs padding to max length
  5. peak RSS and adapter swap time

    .venv/bin/python benchmarks/run.py --out bench-results [--steps 4] [--clients 3]
    smoke test: --model tiny-random --steps 1 --clients 2 --records 8 --repeats 1
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from baselines import plain_peft_loop, trainer_per_client_round  # noqa: E402
from speed import bench_concurrency, cpu_bf16_support, cpu_peaks, linear_params  # noqa: E402

from fedit.client.batching import plan_steps  # noqa: E402
from fedit.config import Config  # noqa: E402
from fedit.data import load_examples  # noqa: E402
from fedit.model import get_adapter_state, set_adapter_state  # noqa: E402
from fedit.runners.common import build_workbench  # noqa: E402
from fedit.runners.simulation import Simulation  # noqa: E402

log = logging.getLogger("bench")


def machine() -> str:
    try:
        model = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if "model name" in line)
    except (OSError, StopIteration):
        model = platform.processor()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    bf16 = f"CPU bf16: {cpu_bf16_support()}"
    return (f"{model}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, {bf16}, {gpu}, "
            f"torch {torch.__version__}")


def client_files(dolly: Path, clients: int, records: int, tmp: Path) -> Path:
    """`records` random records (seeded) of each of the first `clients` Shepherd client files."""
    folder = tmp / "clients"
    folder.mkdir()
    for i in range(clients):
        data = json.loads((dolly / f"local_training_{i}.json").read_text())
        (folder / f"client_{i}.json").write_text(json.dumps(random.Random(i).sample(data, records)))
    return folder


def dolly_sample(dolly: Path, records: int, tmp: Path) -> Path:
    """`records` random records (seeded) from all of Dolly's training files: a typical length mix."""
    data = [r for f in sorted(dolly.glob("local_training_*.json")) for r in json.loads(f.read_text())]
    path = tmp / "sample.json"
    path.write_text(json.dumps(random.Random(0).sample(data, records)))
    return path


def best_of(fn, repeats: int) -> float:
    """Fastest of `repeats` runs (seconds): the least disturbed by other load on the machine."""
    return min(fn() for _ in range(repeats))


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bench_throughput(bench, cfg, toks, steps: int, repeats: int) -> dict:
    plan = plan_steps([len(t.input_ids) for t in toks], batch_size=cfg.train.batch_size,
                      micro_batch_size=cfg.train.micro_batch_size, epochs=1, steps=steps,
                      rng=np.random.default_rng(0))
    used = sorted({i for step in plan for mb in step for i in mb})
    data = [toks[i] for i in used]
    train = cfg.train.__class__(**{**cfg.train.__dict__, "local_steps": steps})
    real_tokens = sum(len(toks[i].input_ids) for step in plan for mb in step for i in mb)

    kernel = bench.trainer.lora_kernel

    def fedit_fit(lora_kernel):
        def go():
            bench.trainer.lora_kernel = lora_kernel
            try:
                return timed(lambda: bench.trainer.fit(bench.initial_state, data, train, seed=0, round_idx=0,
                                                       client_id=0))
            finally:
                bench.trainer.lora_kernel = kernel
        return go

    def plain(pad_to=None):
        def go():
            return plain_peft_loop(bench, bench.initial_state, toks, plan, train, pad_to=pad_to)
        return go

    fedit_fit(kernel)()  # warm-up (allocator, autocast caches)
    # interleaved, best of each: the three see the same load on a shared machine
    runs: dict[str, list[float]] = {"fedit": [], "fedit_peft": [], "plain": []}
    for _ in range(repeats):
        runs["fedit"].append(fedit_fit(kernel)())
        runs["fedit_peft"].append(fedit_fit("peft")())
        runs["plain"].append(plain()()[0])
    t_fedit, t_fedit_peft, t_plain = (min(runs[k]) for k in ("fedit", "fedit_peft", "plain"))
    padded_time, padded_tokens = plain(pad_to=cfg.data.max_len)()
    return {
        "steps": steps, "tokens": real_tokens, "lora_kernel": kernel,
        "fedit_tokens_per_s": real_tokens / t_fedit, "plain_tokens_per_s": real_tokens / t_plain,
        "fedit_peft_kernel_tokens_per_s": real_tokens / t_fedit_peft,
        "throughput_ratio": t_plain / t_fedit, "fused_vs_peft_kernel": t_fedit_peft / t_fedit,
        "all_seconds": runs,
        "padded_to_max_useful_tokens_per_s": real_tokens / padded_time,
        "padded_to_max_share_padding": 1 - real_tokens / padded_tokens,
        "dynamic_vs_padded_ratio": padded_time / t_plain,
    }


def bench_rounds(cfg: Config, folder: Path, tmp: Path, repeats: int) -> dict:
    sim_cfg = cfg.override({"data": str(folder), "partition": "files", "test_data": None,
                            "clients_per_round": len(list(folder.iterdir())), "rounds": 1 + repeats})
    sim = Simulation(sim_cfg, tmp / "sim")
    sim.setup()
    records = [sim.run_round(r) for r in range(1, 2 + repeats)]
    timed_rounds = records[1:]  # round 1 tokenizes the clients' data (once per run): not steady state
    overhead = [(r["seconds"] - r["client_compute_seconds"]) / r["seconds"] for r in timed_rounds]
    t_fedit = min(r["seconds"] for r in timed_rounds)
    clients = list(range(len(sim.clients)))
    shepherd, shepherd_train = min(trainer_per_client_round(sim, clients, tmp / "shepherd", reload=False)
                                   for _ in range(repeats))
    flowertune, _ = trainer_per_client_round(sim, clients, tmp / "flowertune", reload=True)
    swap = []
    for _ in range(20):
        t0 = time.perf_counter()
        set_adapter_state(sim.bench.model, sim.state)
        get_adapter_state(sim.bench.model)
        swap.append(time.perf_counter() - t0)
    return {
        "clients": len(clients), "local_steps": sim_cfg.train.local_steps,
        "fedit_round_s": t_fedit, "fedit_first_round_s": records[0]["seconds"],
        "overhead_share": min(overhead), "overhead_share_all": overhead,
        "trainer_per_client_round_s": shepherd, "speedup_vs_trainer_per_client": shepherd / t_fedit,
        "trainer_per_client_setup_s": shepherd - shepherd_train,
        "fedit_client_compute_s": min(r["client_compute_seconds"] for r in timed_rounds),
        "trainer_per_client_reload_round_s": flowertune,
        "speedup_vs_trainer_per_client_reload": flowertune / t_fedit,
        "adapter_swap_ms": 1000 * statistics.median(swap),
    }


def table(results: dict) -> str:
    t, r, c = results["throughput"], results["rounds"], results["concurrency"]
    peak = results["matmul_peak_flops"]
    rows = [
        (f"matmul peak ({results['peak_dtype']}, 2048^2, this process)", f"{peak / 1e9:.0f} GFLOP/s", "", ""),
        (f"client update FLOP/s over the {results['peak_dtype']} peak (4 x linear params x tokens)",
         f"{results['client_flops_per_s'] / 1e9:.1f} GFLOP/s", f"{100 * results['fraction_of_peak']:.0f} %",
         ">= 40 % (bf16 CPU)" if results["peak_dtype"] == "bfloat16" else ">= 50 %"),
        ("fused LoRA kernel vs --lora-kernel peft", f"{t['fedit_tokens_per_s']:.0f} vs "
         f"{t['fedit_peft_kernel_tokens_per_s']:.0f} tok/s", f"{t['fused_vs_peft_kernel']:.2f}x", ""),
        (f"round: {c['clients']} clients together vs one by one", f"{c['concurrent_round_s']:.1f} vs "
         f"{c['sequential_round_s']:.1f} s", f"{c['concurrent_round_s'] / c['sequential_round_s']:.2f}x time",
         "<= 0.6x (GPU, <= 1B)"),
        ("client throughput, fedit vs plain PEFT loop", f"{t['fedit_tokens_per_s']:.0f} vs {t['plain_tokens_per_s']:.0f} tok/s",
         f"{t['throughput_ratio']:.2f}x", ">= 0.95x"),
        ("useful tok/s, dynamic vs pad to max length", f"{t['plain_tokens_per_s']:.0f} vs {t['padded_to_max_useful_tokens_per_s']:.0f} tok/s",
         f"{t['dynamic_vs_padded_ratio']:.2f}x", ">= 1.8x"),
        ("peak RSS", f"{results['peak_rss_mib']:.0f} MiB", "", ""),
    ]
    rows += [] if not r else [
        ("simulation overhead (round - client compute)", f"{100 * r['overhead_share']:.2f} % of {r['fedit_round_s']:.1f} s",
         "", "<= 2 %"),
        ("round: fedit vs Trainer per client (Shepherd)", f"{r['fedit_round_s']:.1f} vs {r['trainer_per_client_round_s']:.1f} s",
         f"{r['speedup_vs_trainer_per_client']:.2f}x", ">= 3x"),
        ("  of which Trainer-per-client outside Trainer.train", f"{r['trainer_per_client_setup_s']:.1f} s "
         f"(fedit: {r['fedit_round_s'] - r['fedit_client_compute_s']:.1f} s outside fwd/bwd/step)", "", ""),
        ("round: fedit vs Trainer + model reload per client", f"{r['fedit_round_s']:.1f} vs {r['trainer_per_client_reload_round_s']:.1f} s",
         f"{r['speedup_vs_trainer_per_client_reload']:.2f}x", "(FlowerTune-like)"),
        ("adapter swap (set + get)", f"{r['adapter_swap_ms']:.1f} ms", "", ""),
    ]
    lines = ["| measure | measured | ratio | goal |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="bench-results")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps per measurement / client")
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--records", type=int, default=64, help="records per client file")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--skip-baselines", action="store_true",
                        help="leave out the Trainer-per-client round comparisons (section 2/3)")
    parser.add_argument("--concurrent-micro-batch", type=int, default=2,
                        help="micro-batch of each client in the concurrency measurement (memory: all "
                             "clients' micro-batches share one pass)")
    parser.add_argument("--dolly", default=os.environ.get("FEDIT_DOLLY_DIR", "../shared/data/dolly/shepherd_10clients"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("fedit").setLevel(logging.WARNING)
    dolly = Path(args.dolly)
    if not dolly.is_dir():
        sys.exit(f"bench: error: Dolly folder {dolly} not found (set FEDIT_DOLLY_DIR or --dolly)")
    cfg = Config().override({"model": args.model, "max_len": 512, "batch_size": 8, "micro_batch_size": 4,
                             "local_steps": args.steps, "lr": 1.5e-4})
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        folder = client_files(dolly, args.clients, args.records, tmp)
        log.info("throughput: fedit vs plain loop vs padded to max length")
        bench = build_workbench(cfg)
        dtype = bench.base.autocast_dtype or torch.float32
        peaks = cpu_peaks(bench.base.device)
        peak = peaks["bf16" if dtype == torch.bfloat16 else "fp32"]
        flops_per_token = 4 * linear_params(bench.model)
        examples, _ = load_examples(dolly_sample(dolly, args.records, tmp))
        toks = bench.tokenize(examples, cfg.data)
        throughput = bench_throughput(bench, cfg, toks, args.steps, args.repeats)
        del bench
        log.info("concurrency: the round's clients together vs one by one")
        concurrency = bench_concurrency(cfg.override({"micro_batch_size": args.concurrent_micro_batch}),
                                        folder, tmp, args.repeats)
        rounds = {}
        if not args.skip_baselines:
            log.info("rounds: fedit simulation vs Trainer-per-client")
            rounds = bench_rounds(cfg, folder, tmp, args.repeats)
    client_flops = flops_per_token * throughput["fedit_tokens_per_s"]
    results = {"machine": machine(), "model": args.model, "precision": "auto (bf16 autocast where supported)",
               "batch_size": 8, "micro_batch_size": 4, "max_len": 512, "lora": "r=8 all-linear",
               "client_tokens_per_s": throughput["fedit_tokens_per_s"],
               "plain_peft_tokens_per_s": throughput["plain_tokens_per_s"],
               "cpu_bf16": cpu_bf16_support(),
               "peak_dtype": str(dtype).removeprefix("torch."), "matmul_peak_flops": peak,
               "matmul_peaks_flops": peaks, "model_flops_per_token": flops_per_token,
               "client_flops_per_s": client_flops, "fraction_of_peak": client_flops / peak,
               "concurrent_round_s": concurrency["concurrent_round_s"],
               "sequential_round_s": concurrency["sequential_round_s"],
               "concurrent_speedup": concurrency["concurrent_speedup"],
               "throughput": throughput, "rounds": rounds, "concurrency": concurrency,
               "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
               "git": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                     text=True).stdout.strip()}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(results, indent=2))
    md = f"Machine: {results['machine']}\n\n{table(results)}\n"
    (out / "bench.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
