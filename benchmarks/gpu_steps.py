"""One step of `make gpu-check` (benchmarks/gpu_check.py starts each in its own process):

    python benchmarks/gpu_steps.py STEP --result FILE      (STEP: tests, throughput, concurrency, nf4, paper)

GPU_CHECK_DEVICE (cuda, or cpu for the plumbing) picks the device; on CPU every model is the tiny shape.
The step's result is written as JSON to FILE; ``{"skipped": why}`` when it cannot run here.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def step_tests(device) -> dict:
    """pytest -m gpu; the counts and the failing tests' names (from its JUnit XML)."""
    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / "junit.xml"
        cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "--junitxml", str(xml),
               "tests/integration/test_gpu.py"]
        rc = subprocess.run(cmd, cwd=ROOT).returncode
        if not xml.is_file():
            return {"pytest_exit": rc, "error": "pytest wrote no report"}
        suite = ET.parse(xml).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        cases = suite.findall("testcase")
        failed = [c.get("name") for c in cases if c.find("failure") is not None or c.find("error") is not None]
        skipped = [c.get("name") for c in cases if c.find("skipped") is not None]
        return {"pytest_exit": rc, "tests": len(cases), "passed": len(cases) - len(failed) - len(skipped),
                "failed": failed, "skipped_tests": len(skipped)} if cases else {"pytest_exit": rc, "tests": 0}


def step_throughput(device) -> dict:
    from gpu import bench_throughput

    return bench_throughput(size(device, "1b"), device, steps=2 if device.type == "cuda" else 1)


def step_concurrency(device) -> dict:
    from gpu import bench_concurrency

    with tempfile.TemporaryDirectory() as tmp:
        if device.type == "cuda":
            return bench_concurrency("1b", device, Path(tmp), clients=5, records=64)
        return bench_concurrency("tiny", device, Path(tmp), clients=2, records=4)


def step_nf4(device) -> dict:
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        return {"skipped": "bitsandbytes not present"}
    from gpu import bench_nf4

    return bench_nf4(size(device, "8b"), device, steps=3 if device.type == "cuda" else 1)


def step_paper(device) -> dict:
    from gpu import bench_paper

    return bench_paper(size(device, "7b"), device, steps=2 if device.type == "cuda" else 1)


def size(device, shape: str) -> str:
    return shape if device.type == "cuda" else "tiny"


STEPS = {"tests": step_tests, "throughput": step_throughput, "concurrency": step_concurrency, "nf4": step_nf4,
         "paper": step_paper}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=sorted(STEPS))
    parser.add_argument("--result", required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("fedit").setLevel(logging.WARNING)
    if args.step == "tests":
        device = None
    else:
        import torch

        device = torch.device(os.environ.get("GPU_CHECK_DEVICE", "cuda"))
    result = STEPS[args.step](device)
    Path(args.result).write_text(json.dumps(result, indent=2, default=str))
    print(json.dumps(result, default=str))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    main()
