"""Starting and stopping the Flower processes fedit launches, and their environment.

Hygiene, measured on a 2-core machine: every process gets its own ``FLWR_HOME``, telemetry
and update checks off, and the venv's ``bin`` first on ``PATH`` (SuperLink and SuperNode start
``flower-superexec`` by name). Each process runs in a session of its own; stopping sends
SIGTERM to that process group, then SIGKILL, and finally to every descendant seen while it
ran (SuperExec detaches into its own session). Nothing is ever stopped by name.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Sequence

import psutil

logger = logging.getLogger(__name__)


def bin_dir() -> Path:
    """The folder of this interpreter's console scripts (flwr, flower-superlink, ...)."""
    return Path(sys.executable).parent


def flower_env(flwr_home: Path, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a Flower process or command: offline, quiet, own FLWR_HOME."""
    env = dict(os.environ if base is None else base)
    env.update(FLWR_HOME=str(flwr_home), FLWR_TELEMETRY_ENABLED="0", FLWR_DISABLE_UPDATE_CHECK="1",
               TOKENIZERS_PARALLELISM="false", TRANSFORMERS_VERBOSITY="error", PYTHONUNBUFFERED="1")
    env["PATH"] = f"{bin_dir()}{os.pathsep}{env.get('PATH', '')}"
    Path(flwr_home).mkdir(parents=True, exist_ok=True)
    return env


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (bind to port 0 and ask which one the OS chose)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def wait_for_port(host: str, port: int, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process {proc.pid} exited with code {proc.returncode} before "
                               f"listening on {host}:{port}")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(0.5)
            if sock.connect_ex((host, port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout:.0f} s")


@dataclass
class Started:
    name: str
    proc: subprocess.Popen
    log_path: Path
    log: IO[bytes]
    seen: set[int] = field(default_factory=set)   # descendant PIDs observed while running


class ProcessGroup:
    """The processes one fedit command started; ``stop()`` ends them all, by PID."""

    def __init__(self) -> None:
        self.started: list[Started] = []

    def start(self, name: str, argv: Sequence[str], *, env: dict[str, str], log_path: Path,
              cwd: Path | None = None) -> subprocess.Popen:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(log_path, "ab")
        proc = subprocess.Popen(list(argv), env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        self.started.append(Started(name, proc, log_path, log))
        logger.info("started %s (pid %d), log %s", name, proc.pid, log_path)
        return proc

    def refresh(self) -> None:
        """Remember the descendants of every running process (to stop detached ones later)."""
        for s in self.started:
            try:
                s.seen.update(c.pid for c in psutil.Process(s.proc.pid).children(recursive=True))
            except psutil.Error:
                pass

    def pids(self) -> list[int]:
        """Every PID started or seen: what must be gone after ``stop()``."""
        self.refresh()
        return sorted({s.proc.pid for s in self.started} | {p for s in self.started for p in s.seen})

    def stop(self, timeout: float = 10.0) -> None:
        self.refresh()
        for s in reversed(self.started):
            _signal_group(s.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for s in reversed(self.started):
            try:
                s.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                logger.warning("%s (pid %d) ignored SIGTERM; killing it", s.name, s.proc.pid)
                _signal_group(s.proc.pid, signal.SIGKILL)
                s.proc.wait(5)
        for s in self.started:
            _stop_pids(s.seen, timeout=5.0)
            s.log.close()


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _stop_pids(pids: set[int], timeout: float) -> None:
    procs = []
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            proc.terminate()
            procs.append(proc)
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            pass


def alive(pids: Sequence[int]) -> list[int]:
    """The PIDs of the list that are still running (zombies count as gone)."""
    out = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                out.append(pid)
        except psutil.Error:
            pass
    return out
