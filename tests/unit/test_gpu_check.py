"""`make gpu-check`'s plumbing on CPU (benchmarks/gpu_check.py, gpu_steps.py, gpu.py, gpu_report.py):
every step on tiny shapes in this process, the time box, the report, and the one line without a GPU."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))

import gpu_check  # noqa: E402
import gpu_report  # noqa: E402
import gpu_steps  # noqa: E402

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def steps(fedit_cache):
    """Every measuring step of the check, on CPU with the tiny shape (what a GPU runs at full size)."""
    return {name: gpu_steps.STEPS[name](CPU) for name in ("throughput", "concurrency", "nf4", "paper")}


def test_without_a_gpu_the_check_stops_at_once_with_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv("GPU_CHECK_DEVICE", raising=False)
    assert gpu_check.main(["--out", str(tmp_path / "r")]) == 2
    assert capsys.readouterr().out == ("gpu-check: no CUDA GPU visible to torch on this machine: nothing run "
                                       "(GPU_CHECK_DEVICE=cpu runs the plumbing on tiny shapes)\n")
    assert not (tmp_path / "r").exists()


def test_every_step_measures_on_tiny_shapes(steps):
    t, c, q, p = (steps[k] for k in ("throughput", "concurrency", "nf4", "paper"))
    assert t["size"] == "tiny" and t["kernel"] == "fused" and t["tokens"] > 0
    assert all(t[k]["tokens_per_s"] > 0 and t[k]["mfu_vs_measured"] > 0 for k in ("fedit", "fedit_peft_kernel",
                                                                                  "plain_peft"))
    assert c["clients"] == 2 and c["concurrent_round_s"] > 0 and c["sequential_round_s"] > 0
    assert q["quantize"] == "nf4" and q["kernel"] == "peft" and q["step_s"] > 0   # fused refuses 4-bit layers
    assert p["paper_train_tokens"] == pytest.approx(20 * 5 * 14931 / 100 * 186.3) and p["paper_estimate_s"] > 0


def test_report_marks_goals_only_for_a_gpu(steps):
    results = {"machine": {"torch": "2", "python": "3.12", "device": "cuda", "gpu": "NVIDIA H200"},
               "budget_s": 480, "total_s": 400, "git": "abc",
               "steps": [{"step": k, "status": "ok", "seconds": 1, "limit_s": 2, "result": v} for k, v in steps.items()]}
    results["steps"][0]["result"] = {**steps["throughput"], "fedit": {**steps["throughput"]["fedit"],
                                                                      "mfu_vs_datasheet": 0.36}}
    results["steps"][2]["result"] = {**steps["nf4"], "peak_memory_gb": 17.2}
    goals = gpu_report.goals(results)
    assert [goals[k]["met"] for k in ("mfu_1b_vs_datasheet", "together_vs_alone_time", "nf4_8b_peak_gb")] == \
        [True, steps["concurrency"]["together_vs_alone_time"] <= 0.6, False]
    md = gpu_report.table(results)
    assert "| 1B client update MFU (fused, vs data-sheet bf16) | >= 35% | 36.0% | met |" in md
    assert "| 8B NF4 + LoRA, batch 1 x 512: peak memory | < 16 GB | 17.2 GB | missed |" in md
    results["machine"]["device"] = "cpu"
    assert {g["met"] for g in gpu_report.goals(results).values()} == {None}


def test_a_step_past_its_limit_is_killed_and_the_next_runs(tmp_path):
    script = tmp_path / "slow.py"
    script.write_text("import sys, time\nif sys.argv[1] == 'slow':\n    time.sleep(60)\n"
                      "open(sys.argv[3], 'w').write('{\"skipped\": \"bitsandbytes not present\"}')\n")
    with open(tmp_path / "log", "w") as log:
        slow = gpu_check.run_step("slow", 1, {}, tmp_path, log, script=script)
        fast = gpu_check.run_step("fast", 30, {}, tmp_path, log, script=script)
    assert slow["status"] == "timeout after 1 s" and slow["seconds"] < 10 and "result" not in slow
    assert fast["status"] == "skipped: bitsandbytes not present"


def test_the_check_runs_from_the_tree_with_fedit_not_installed(tmp_path):
    """PYTHONPATH=src and a fedit.dist-info written from pyproject.toml: the methods' entry points resolve."""
    assert gpu_check.fedit_metadata(tmp_path / "installed") is None   # here fedit is installed: nothing written
    info = gpu_check.write_metadata(tmp_path)
    code = ("import sys; sys.path[:0] = sys.argv[1:]; from importlib.metadata import entry_points; "
            "print(sorted(e.name for e in entry_points(group='fedit.methods') if e.dist.name == 'fedit'))")
    out = subprocess.run([sys.executable, "-S", "-c", code, str(info)], capture_output=True, text=True)
    assert "'fedavg'" in out.stdout and "'topk'" in out.stdout, out.stderr


def test_cpu_run_writes_json_and_table(tmp_path, monkeypatch):
    monkeypatch.setenv("GPU_CHECK_DEVICE", "cpu")
    assert gpu_check.main(["--out", str(tmp_path), "--only", "tests"]) == 0
    data = json.loads((tmp_path / "gpu.json").read_text())
    assert [s["step"] for s in data["steps"]] == ["tests"] and data["steps"][0]["status"] == "ok"
    assert data["steps"][0]["result"]["tests"] >= 5   # the gpu tests, collected and skipped without CUDA
    md = (tmp_path / "gpu.md").read_text()
    assert md.startswith("GPU check on CPU (GPU_CHECK_DEVICE=cpu, tiny shapes: plumbing only)")
    assert (tmp_path / "gpu.log").is_file()


@pytest.mark.skipif(torch.cuda.is_available() or shutil.which("make") is None, reason="needs make and no GPU")
def test_make_gpu_check_without_a_gpu_is_one_line():
    root = BENCH.parent
    done = subprocess.run(["make", "-s", "gpu-check", f"GPU_PYTHON={sys.executable}"], cwd=root, capture_output=True,
                          text=True, timeout=120, env={k: v for k, v in os.environ.items() if k != "GPU_CHECK_DEVICE"})
    assert done.returncode != 0
    assert done.stdout == ("gpu-check: no CUDA GPU visible to torch on this machine: nothing run "
                           "(GPU_CHECK_DEVICE=cpu runs the plumbing on tiny shapes)\n")
