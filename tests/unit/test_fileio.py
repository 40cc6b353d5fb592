"""Files fedit writes: modes that respect the umask, and temporaries of a crash cleaned up later."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

from fedit.fileio import make_temp_dir, remove_stale_temporaries


@contextmanager
def umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.mark.parametrize("mask, expected", [(0o022, 0o755), (0o077, 0o700), (0o002, 0o775)])
def test_temp_dir_respects_the_umask(tmp_path, mask, expected):
    with umask(mask):
        tmp = make_temp_dir(tmp_path / "final")
    assert mode(tmp) == expected
    assert tmp.parent == tmp_path and tmp.name.startswith(f".final.tmp-{os.getpid()}-")


def test_stale_temporaries_are_removed_live_ones_kept(tmp_path):
    dead = dead_pid()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        stale = [tmp_path / f".tmp-round_0002-{dead}",              # checkpoint folder (older fedit)
                 tmp_path / ".final.tmp-k2j_9xq1",                  # mkdtemp folder (older fedit: no pid)
                 tmp_path / f".final.tmp-{dead}-0a1b2c3d",
                 tmp_path / f".final.old-{dead}-0a1b2c3d"]
        for path in stale:
            path.mkdir()
            (path / "adapter_model.safetensors").write_bytes(b"half")
        stale.append(tmp_path / f".config.yaml.{dead}.0123abcd.tmp")   # fileio.atomic_write
        stale[-1].write_text("half")
        kept = [tmp_path / f".final.tmp-{live.pid}-0a1b2c3d", tmp_path / "final", tmp_path / ".hidden",
                tmp_path / "config.yaml", tmp_path / f".config.yaml.{live.pid}.0123abcd.tmp"]
        for path in kept[:2]:
            path.mkdir()
        for path in kept[2:]:
            path.write_text("x")
        removed = remove_stale_temporaries(tmp_path)
        assert sorted(removed) == sorted(stale)
        assert sorted(tmp_path.iterdir()) == sorted(kept)
    finally:
        live.kill()
        live.wait()


def test_final_adapter_and_cached_model_respect_the_umask(tmp_path, monkeypatch):
    from fedit.model import add_lora, get_adapter_state, load_base_model, save_adapter
    from fedit.model import resolve as resolve_mod

    import torch
    from safetensors.torch import save_file

    def build(folder):  # what a conversion writes: safetensors creates its files 0600 itself
        save_file({"w": torch.zeros(2)}, str(folder / "model.safetensors"))
        (folder / "config.json").write_text("{}")

    base = load_base_model("tiny-random", device="cpu", precision="fp32")
    model = add_lora(base.model, r=2, alpha=4, dropout=0.0, targets="all-linear", seed=0)
    with umask(0o022):
        out = save_adapter(model, get_adapter_state(model), tmp_path / "final", base.path)
        cached = resolve_mod._ensure_folder(tmp_path / "models" / "m", build, "test")
    assert mode(out) == 0o755
    assert {p.name: mode(p) for p in out.iterdir()} == {p.name: 0o644 for p in out.iterdir()}
    assert mode(cached) == 0o755
    assert {p.name: mode(p) for p in cached.iterdir()} == {p.name: 0o644 for p in cached.iterdir()}


def test_cache_build_removes_the_temporaries_of_a_crashed_build(tmp_path):
    from fedit.model import resolve as resolve_mod

    models = tmp_path / "models"
    crashed = models / ".m.tmp-abc123_x"        # what a killed conversion leaves (older fedit)
    crashed.mkdir(parents=True)
    (crashed / "model.safetensors").write_bytes(b"half")
    resolve_mod._ensure_folder(models / "m", lambda d: (d / "config.json").write_text("{}"), "test")
    assert sorted(p.name for p in models.iterdir()) == ["m", "m.lock"]


def test_personal_adapters_survive_a_failed_replacement(tmp_path, monkeypatch):
    """write_adapters removed RUN/personal before moving the new folder in: a failure in between lost both."""
    import fedit.fileio as fileio
    from fedit.runners.personal import write_adapters

    target = tmp_path / "personal"
    target.mkdir()
    (target / "personal.json").write_text("old")
    real = os.replace

    def failing(src, dst):
        if Path(dst) == target and ".tmp-" in Path(src).name:   # the new folder moving in
            raise OSError("disk full")
        return real(src, dst)

    monkeypatch.setattr(fileio.os, "replace", failing)
    monkeypatch.setattr(Path, "rename", lambda self, dst: failing(self, dst))
    with pytest.raises(OSError, match="disk full"):
        write_adapters(target, "fedsa", None, {})
    assert (target / "personal.json").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["personal"]
