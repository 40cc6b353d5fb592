"""``transformers serve`` (transformers' own OpenAI-compatible server, the `serve` extra) for tests:
started on a free port with HF_HUB_OFFLINE=1, waited for through its ``/health`` endpoint (bounded:
``START_TIMEOUT_S``; a start that loses the port race is retried) and stopped by its process group id.
Used by tests/integration/test_judge_server.py and test_generate_precision.py."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

START_TIMEOUT_S = 120
STARTS = 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def stop_server(proc: subprocess.Popen) -> None:
    """SIGTERM to the server's process group (it was started in a session of its own), SIGKILL
    if it is still there 15 s later."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=15)
    except ProcessLookupError:
        pass


def start_server(model: Path, log: Path) -> tuple[subprocess.Popen, str]:
    exe = Path(sys.executable).with_name("transformers")
    if not exe.is_file():
        pytest.skip("the `transformers` command is not installed beside this Python")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HOME": str(log.parent / "hf")}
    for _ in range(STARTS):
        port = _free_port()
        with open(log, "ab") as out:
            proc = subprocess.Popen([str(exe), "serve", str(model), "--host", "127.0.0.1", "--port", str(port),
                                     "--device", "cpu", "--log-level", "warning"], env=env, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline and proc.poll() is None:
            if _healthy(url):
                return proc, url + "/v1"
            time.sleep(0.5)
        stop_server(proc)       # exited early (e.g. the port was taken meanwhile) or never became healthy
    pytest.fail(f"transformers serve did not start in {STARTS} tries; log:\n{log.read_text()[-3000:]}")
