"""--gradient-checkpointing: peak memory and step time of local training with and without it.

Each variant runs in its own process (peak RSS is per process), on synthetic token sequences of
exactly --max-len tokens whose second half carries the loss, through fedit's LocalTrainer.fit.
On CUDA the figure is torch.cuda.max_memory_allocated; on CPU the process's peak RSS.

    .venv/bin/python benchmarks/gradient_checkpointing.py --model smollm2-135m-instruct --max-len 2048
    .venv/bin/python benchmarks/gradient_checkpointing.py --model tiny-random --max-len 128 --steps 1  # smoke
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def measure(args: argparse.Namespace) -> dict:
    import torch

    from fedit.config import Config
    from fedit.data.prompts import IGNORE_INDEX, TokenizedExample
    from fedit.runners.common import build_workbench

    cfg = Config().override({"model": args.model, "device": args.device, "precision": args.precision,
                             "gradient_checkpointing": args.checkpointing, "batch_size": args.batch,
                             "micro_batch_size": args.batch, "local_steps": args.steps})
    bench = build_workbench(cfg)
    gen = torch.Generator().manual_seed(0)
    vocab = bench.tokenizer.vocab_size
    half = args.max_len // 2
    examples = [TokenizedExample(ids, [IGNORE_INDEX] * half + ids[half:], "x")
                for ids in (torch.randint(10, vocab, (args.max_len,), generator=gen).tolist()
                            for _ in range(args.batch))]
    if bench.base.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    update = bench.trainer.fit(bench.initial_state, examples, cfg.train, seed=0, round_idx=1, client_id=0)
    seconds = time.perf_counter() - start
    if bench.base.device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
        what = "CUDA max allocated"
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        what = "peak RSS"
    return {"checkpointing": args.checkpointing, "peak_mib": round(peak, 1), "memory": what,
            "seconds_per_step": round(seconds / args.steps, 3), "loss": update.metrics["train_loss"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto")
    p.add_argument("--max-len", type=int, default=2048)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--checkpointing", action=argparse.BooleanOptionalAction, default=None,
                   help="measure one variant in this process (internal); default: both, in subprocesses")
    args = p.parse_args()
    if args.checkpointing is not None:
        print(json.dumps(measure(args)))
        return
    rows = []
    for variant in ("--no-checkpointing", "--checkpointing"):
        cmd = [sys.executable, __file__, "--model", args.model, "--device", args.device, "--precision",
               args.precision, "--max-len", str(args.max_len), "--batch", str(args.batch), "--steps",
               str(args.steps), variant]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    print(f"{args.model}, {args.batch} x {args.max_len} tokens per step, {args.steps} steps")
    print("| gradient checkpointing | memory (MiB) | s/step | train loss |\n|---|---|---|---|")
    for r in rows:
        print(f"| {'on' if r['checkpointing'] else 'off'} | {r['peak_mib']} ({r['memory']}) | "
              f"{r['seconds_per_step']} | {r['loss']:.6f} |")


if __name__ == "__main__":
    main()
