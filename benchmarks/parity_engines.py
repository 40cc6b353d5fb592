"""Bit-for-bit parity of local training across a refactor of the step loop and the run set-up.

The cases of benchmarks/parity.py cover the methods; these cover the two LoRA kernels (peft, fused),
clients trained together or one by one, the corrections (FedProx, SCAFFOLD), a per-step lr
schedule with gradient clipping and weight decay, LoRA dropout, and the visible fallbacks to peft
(heterogeneous ranks, ffa's B-only jobs, gradient checkpointing), local DP, and the parts of the
run set-up only the simulation has (attacks, simulated secure aggregation, client targets).

    python benchmarks/parity_engines.py --out /tmp/engines-before          # on the old commit
    python benchmarks/parity_engines.py --out /tmp/engines-after --compare /tmp/engines-before
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import parity  # noqa: E402

KERNELS = {"fused3": ["--lora-kernel", "fused", "--concurrent-clients", "3"],
           "fused1": ["--lora-kernel", "fused", "--concurrent-clients", "1"],
           "peft": ["--lora-kernel", "peft"]}
METHODS = {"fedavg": [],
           "fedprox": ["--strategy", "fedprox", "--proximal-mu", "0.1"],
           "scaffold": ["--strategy", "scaffold"],
           "sched": ["--lr-schedule", "cosine", "--lr-schedule-unit", "step", "--warmup-steps", "1",
                     "--grad-clip", "0.01", "--weight-decay", "0.1", "--lora-dropout", "0.2"]}
CASES = {f"{m}-{k}": [*margs, *kargs] for m, margs in METHODS.items() for k, kargs in KERNELS.items()}
CASES.update({
    "zero-pad-8-4-auto": ["--lora-aggregation", "zero-pad", "--client-ranks", "8,4"],
    "ffa-auto": ["--lora-aggregation", "ffa"],
    "checkpointing-auto": ["--gradient-checkpointing"],
    "dp-local-fused": ["--dp-clip", "0.5", "--dp-noise-multiplier", "0.5", "--dp-noise-seed", "3",
                       "--dp-mode", "local", "--lora-kernel", "fused"],
    # the run set-up's simulation-only parts (fedit.runners.session): attacks, secure aggregation, client targets
    "backdoor": ["--attack", "backdoor", "--attackers", "0.34"],
    "scale-attack": ["--attack", "scale", "--attackers", "0.34"],
    "secagg": ["--secure-aggregation"],
    "client-targets": ["--client-targets", "all-linear;q_proj,v_proj;q_proj"],
})


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--compare", type=Path)
    ap.add_argument("--only", nargs="*", choices=list(CASES))
    args = ap.parse_args()
    parity.CASES.clear()
    parity.CASES.update(CASES)
    names = args.only or list(CASES)
    parity.run(args.out, names)
    return 0 if args.compare is None or parity.compare(args.out, args.compare, names) else 1


if __name__ == "__main__":
    sys.exit(main())
