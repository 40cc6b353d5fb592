"""`make gpu-check`: the GPU path proven in one command of at most 8 minutes (issue 20).

On a machine with one CUDA GPU, Python and a CUDA build of torch/transformers/peft, and no package index,
it runs from the working tree (PYTHONPATH=src, no `make install`; the wheels in .whl/ that
benchmarks/gpu_wheels.sh fetched are installed into /tmp/site first), in this order, each step in its own
process with its own time limit (a slow or hung step is killed and the next one runs):

  tests        pytest -m gpu (tests/integration/test_gpu.py): fused kernel vs peft in bf16, packing,
               clients together vs alone, a `fedit run` on tiny-random, resume bit-identical
  throughput   the 1B client update: fedit fused, fedit --lora-kernel peft, plain PEFT loop; MFU
  concurrency  the round's clients trained together vs one after another (1B)
  nf4          an 8B-shaped Llama in 4-bit NF4 + LoRA r=8 all-linear, batch 1 x 512: peak memory, step time
  paper        the 7B client update's tokens/s and the paper's full setting estimated from it

and writes gpu-results/gpu.json, gpu-results/gpu.md (the table) and gpu-results/gpu.log (every step's
output). Without a GPU it stops at once with one line. GPU_CHECK_DEVICE=cpu runs the same steps on tiny
shapes (the plumbing, tested in CI: tests/unit/test_gpu_check.py).

    python3 benchmarks/gpu_check.py [--out gpu-results] [--only tests,throughput] [--budget 480]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# (step, seconds on a GPU, seconds on CPU with tiny shapes); the GPU column sums to 450 s, leaving
# 30 s of the 8 minutes for start-up (importing torch, probing the device) and the report.
STEPS = (("tests", 100, 60), ("throughput", 130, 40), ("concurrency", 80, 40), ("nf4", 80, 30),
         ("paper", 60, 30))
BUDGET_S = 480


def say(text: str) -> None:
    print(f"gpu-check: {text}", flush=True)


def probe(device: str) -> dict | None:
    """torch's view of the machine; None when ``device`` is cuda and no GPU is visible."""
    try:
        import torch
    except ImportError:
        return None
    info = {"torch": torch.__version__, "python": platform.python_version(), "cuda": torch.version.cuda,
            "device": device, "cpu": platform.processor() or platform.machine()}
    if device == "cuda":
        if not torch.cuda.is_available():
            return None
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    capability=f"{props.major}.{props.minor}")
    return info


def fedit_metadata(site: Path) -> Path | None:
    """A ``fedit.dist-info`` (its entry points, read from pyproject.toml) in ``site`` when fedit is not
    installed: fedit finds its methods through entry points, and the tree runs with PYTHONPATH=src."""
    from importlib.metadata import entry_points

    if any(ep.value.startswith("fedit.") for ep in entry_points(group="fedit.methods")):
        return None
    write_metadata(site)
    return site


def write_metadata(site: Path) -> Path:
    """``site``/fedit-VERSION.dist-info with METADATA and the entry points of pyproject.toml."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    info = site / f"fedit-{project['version']}.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: fedit\nVersion: {project['version']}\n")
    lines = []
    for group, eps in project.get("entry-points", {}).items():
        lines += [f"[{group}]", *(f"{name} = {value}" for name, value in eps.items()), ""]
    (info / "entry_points.txt").write_text("\n".join(lines))
    return site


def environment(device: str, work: Path) -> dict[str, str]:
    """The steps' environment: the tree's src, fedit's entry points, a writable copy of the carried
    model cache (.whl/cache: tiny-random), offline hub."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1",
               TOKENIZERS_PARALLELISM="false", GPU_CHECK_DEVICE=device)
    paths = [str(ROOT / "src"), str(ROOT / "benchmarks")]
    wheels = sorted((ROOT / ".whl").glob("*.whl"))
    if wheels:   # what the machine lacks (benchmarks/gpu_wheels.sh), installed without an index
        target = Path(os.environ.get("GPU_CHECK_SITE", "/tmp/site"))
        names = ", ".join(w.name.split("-")[0] + " " + w.name.split("-")[1] for w in wheels)
        done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                               "--no-cache-dir", "--upgrade", "--target", str(target), *map(str, wheels)],
                              capture_output=True, text=True)
        if done.returncode == 0:
            paths.append(str(target))
            say(f"installed {names} into {target}")
        else:   # the steps that need them report what is missing
            say(f"installing {names} from .whl/ failed: {(done.stderr.strip().splitlines() or ['?'])[-1]}")
    site = fedit_metadata(work / "site")
    if site is not None:
        paths.append(str(site))
    env["PYTHONPATH"] = os.pathsep.join(paths + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    carried = ROOT / ".whl" / "cache"
    if carried.is_dir() and "FEDIT_CACHE" not in os.environ:
        shutil.copytree(carried, work / "cache", dirs_exist_ok=True)
        env["FEDIT_CACHE"] = env["FEDIT_TEST_CACHE"] = str(work / "cache")
    return env


def run_step(name: str, limit: float, env: dict[str, str], out: Path, log,
             script: Path = ROOT / "benchmarks" / "gpu_steps.py") -> dict:
    """One step in its own process, killed after ``limit`` seconds; its JSON result and status."""
    result_file = out / f".step-{name}.json"
    result_file.unlink(missing_ok=True)
    cmd = [sys.executable, str(script), name, "--result", str(result_file)]
    log.write(f"\n===== {name} (limit {limit:.0f} s): {' '.join(cmd)}\n")
    log.flush()
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        rc = proc.wait(timeout=max(limit, 1))
        status = "ok" if rc == 0 else f"failed (exit {rc})"
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)   # the step and whatever it started
        proc.wait()
        status = f"timeout after {limit:.0f} s"
    seconds = time.perf_counter() - start
    record = {"step": name, "status": status, "seconds": round(seconds, 1), "limit_s": round(limit)}
    if result_file.is_file():
        record["result"] = json.loads(result_file.read_text())
        result_file.unlink()
        if status == "ok" and "skipped" in record["result"]:
            record["status"] = f"skipped: {record['result']['skipped']}"
        if status == "ok" and (record["result"].get("failed") or record["result"].get("error")):
            record["status"] = "failed"
    say(f"{name}: {record['status']} in {seconds:.0f} s")
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(ROOT / "gpu-results"))
    parser.add_argument("--only", default=",".join(s for s, _, _ in STEPS))
    parser.add_argument("--budget", type=float, default=BUDGET_S, help="seconds for all steps together")
    args = parser.parse_args(argv)
    device = os.environ.get("GPU_CHECK_DEVICE", "cuda")
    started = time.perf_counter()
    info = probe(device)
    if info is None:
        say("no CUDA GPU visible to torch on this machine: nothing run (GPU_CHECK_DEVICE=cpu runs the "
            "plumbing on tiny shapes)")
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    only = set(args.only.split(","))
    results = {"machine": info, "budget_s": args.budget, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "git": git_revision(), "steps": []}
    say(f"{info.get('gpu', 'cpu (tiny shapes)')}, torch {info['torch']}: steps {', '.join(s for s, _, _ in STEPS if s in only)}")
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp, open(out / "gpu.log", "w") as log:
        env = environment(device, Path(tmp))
        for name, gpu_limit, cpu_limit in STEPS:
            if name not in only:
                continue
            left = args.budget - (time.perf_counter() - started) - 5
            if left < 10:
                results["steps"].append({"step": name, "status": "not run: the budget is spent"})
                continue
            results["steps"].append(run_step(name, min(gpu_limit if device == "cuda" else cpu_limit, left),
                                             env, out, log))
            write(results, out, started)
    write(results, out, started)
    print((out / "gpu.md").read_text())
    return 0 if all(s["status"] == "ok" or s["status"].startswith("skipped") for s in results["steps"]) else 1


def git_revision() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def write(results: dict, out: Path, started: float) -> None:
    from gpu_report import goals, table

    results["total_s"] = round(time.perf_counter() - started, 1)
    results["goals"] = goals(results)
    (out / "gpu.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    (out / "gpu.md").write_text(table(results))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    sys.exit(main())
