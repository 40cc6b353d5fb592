"""Where a result came from: fedit's version and git revision, the main libraries, the machine.

Recorded with every run (``provenance.json`` beside ``config.yaml``), in experiment results and
in reports, so a number can be traced to the code and machine that produced it.
"""

from __future__ import annotations

import functools
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

LIBRARIES = ("torch", "transformers", "peft", "flwr", "numpy", "safetensors", "gguf", "dp-accounting")


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def git_revision(path: Path | None = None) -> str | None:
    """The commit of the fedit source tree (with ``-dirty`` if it has changes), when it is a checkout."""
    root = path or Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return None
    try:
        rev = subprocess.run(["git", "-C", str(root), "describe", "--always", "--dirty", "--abbrev=12"],
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return rev.stdout.strip() or None if rev.returncode == 0 else None


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {"cpu": _cpu_name(), "cores": os.cpu_count(), "platform": platform.platform()}
    try:
        import torch

        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info


@functools.lru_cache(maxsize=1)
def provenance() -> dict[str, Any]:
    """fedit's version and git revision, Python and library versions, and the machine."""
    return {"fedit": _version("fedit"), "git": git_revision(), "python": platform.python_version(),
            "libraries": {name: v for name in LIBRARIES if (v := _version(name)) is not None},
            "machine": machine()}
