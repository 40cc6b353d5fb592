"""The README's first set-up command, `make demo`, on a fresh clone and again afterwards."""

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


def demo_command(out: Path) -> str:
    done = subprocess.run(["make", "-n", "demo", f"DEMO_OUT={out}"], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    return next(line for line in done.stdout.splitlines() if "fedit run" in line)


def test_make_demo_starts_a_new_run_and_continues_an_existing_one(tmp_path):
    """Regression: `make demo` always passed --resume, and resuming nothing became an error, so
    the README's first command failed on every fresh clone."""
    assert "--resume" not in demo_command(tmp_path / "fresh")
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "config.yaml").write_text("model: {}\n")
    assert "--resume" in demo_command(existing)
