"""Bit-for-bit parity of the methods across a refactor.

Runs `fedit run` on the tiny-random model and the test fixtures once per method (fixed seeds) and
keeps each run's final adapter; with --compare, checks every tensor against adapters written
earlier (e.g. by the commit before a refactor) with torch.equal.

    python benchmarks/parity.py --out /tmp/parity-before          # on the old commit
    python benchmarks/parity.py --out /tmp/parity-after --compare /tmp/parity-before

Exit status 1 when any adapter differs. Runs in about a minute on 2 cores.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
COMMON = ["--model", "tiny-random", "--precision", "fp32", "--data", str(FIXTURES / "tiny"),
          "--test-data", str(FIXTURES / "tiny_test.jsonl"), "--partition", "files", "--clients-per-round", "3",
          "--local-steps", "2", "--batch-size", "4", "--micro-batch-size", "2", "--max-len", "96",
          "--rounds", "2", "--seed", "7", "--logger", "none"]
CASES: dict[str, list[str]] = {
    "fedavg": [],
    "fedavg-peft": ["--lora-kernel", "peft"],
    "fedavg-one-by-one": ["--concurrent-clients", "1"],
    "fedprox": ["--strategy", "fedprox", "--proximal-mu", "0.1"],
    "fedadam": ["--strategy", "fedadam"],
    "scaffold": ["--strategy", "scaffold"],
    "ffa": ["--lora-aggregation", "ffa"],
    "product-svd": ["--lora-aggregation", "product-svd"],
    "zero-pad-8-4": ["--lora-aggregation", "zero-pad", "--client-ranks", "8,4"],
    "dp-central": ["--dp-clip", "0.5", "--dp-noise-multiplier", "0.5", "--dp-noise-seed", "3"],
    "median": ["--robust", "median"],
    "int8": ["--compress", "int8"],
}


def run(out: Path, names: list[str]) -> None:
    for name in names:
        target = out / name
        shutil.rmtree(target, ignore_errors=True)
        cmd = [str(Path(sys.executable).parent / "fedit"), "run", *COMMON, *CASES[name], "--out", str(target)]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            sys.exit(f"{name}: fedit run failed:\n{res.stderr[-2000:]}")
        print(f"{name}: written", flush=True)


def compare(out: Path, ref: Path, names: list[str]) -> bool:
    same = True
    for name in names:
        new = load_file(str(out / name / "final" / "adapter_model.safetensors"))
        old = load_file(str(ref / name / "final" / "adapter_model.safetensors"))
        diff = [k for k in old if k not in new or not torch.equal(old[k], new[k])] + \
               [k for k in new if k not in old]
        print(f"{name}: {'bit-identical' if not diff else f'{len(diff)} tensors differ, e.g. {diff[0]}'}")
        same = same and not diff
    return same


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for this run's adapters")
    parser.add_argument("--compare", type=Path, help="folder of reference adapters to compare with")
    parser.add_argument("--only", nargs="*", choices=list(CASES), help="run only these cases")
    args = parser.parse_args()
    names = args.only or list(CASES)
    run(args.out, names)
    return 0 if args.compare is None or compare(args.out, args.compare, names) else 1


if __name__ == "__main__":
    sys.exit(main())
