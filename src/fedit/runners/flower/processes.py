"""Starting and stopping the Flower processes fedit launches, and their environment.

Hygiene, measured on a 2-core machine: every process gets its own ``FLWR_HOME``, telemetry
and update checks off, and the venv's ``bin`` first on ``PATH`` (SuperLink and SuperNode start
``flower-superexec`` by name). Each process runs in a session of its own; stopping sends
SIGTERM to that process group, then SIGKILL, and finally to every descendant seen while it
ran (SuperExec detaches into its own session). Nothing is ever stopped by name.

Every process started (and every descendant seen) is written, as soon as it is known, to a
registry file (``pids.json`` in ``deploy local``'s work folder) with its PID, create time and
command line. If the command that started them is killed (``kill -9``) they keep running;
:func:`stop_leftovers` (the next ``deploy local`` on that folder, or ``fedit deploy stop``) stops
exactly those whose PID, create time and command line all still match: a PID the system has
since given to another process is never touched.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Iterator, Sequence

import psutil

from fedit.fileio import atomic_write_text

logger = logging.getLogger(__name__)


def bin_dir() -> Path:
    """The folder of this interpreter's console scripts (flwr, flower-superlink, ...)."""
    return Path(sys.executable).parent


# Flower 1.42 starts its legacy gRPC Control API (0.0.0.0:9093) / Fleet API (0.0.0.0:9092) when these are "1".
LEGACY_GRPC_SWITCHES = ("FLWR_INTERNAL_GRPC_CONTROL_API", "FLWR_INTERNAL_GRPC_FLEET_API")


def flower_env(flwr_home: Path, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a Flower process or command: offline, quiet, own FLWR_HOME."""
    env = dict(os.environ if base is None else base)
    for name in LEGACY_GRPC_SWITCHES:   # they would serve the Control/Fleet API on 0.0.0.0, past the Fleet front
        if env.pop(name, None) is not None:
            logger.warning("%s is set: ignored (it starts Flower's legacy gRPC API on 0.0.0.0, outside fedit's "
                           "Fleet front)", name)
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


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Let SIGTERM unwind like Ctrl-C (KeyboardInterrupt), so ``finally`` blocks stop the
    processes this one started; Python's default for SIGTERM ends at once and runs none."""
    def handler(signum, frame):
        raise KeyboardInterrupt
    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def identity(pid: int, timeout: float = 5.0) -> dict[str, Any] | None:
    """What proves a process is the one recorded: PID, create time and command line. A process
    caught in the middle of its exec (just started, on a loaded machine) shows an empty command
    line for a moment; that is read again until the exec is done (up to ``timeout`` s), else the
    record would never match the process again and ``deploy stop`` could not stop it."""
    deadline = time.monotonic() + timeout
    try:
        proc = psutil.Process(pid)
        while True:
            with proc.oneshot():
                found = {"pid": pid, "create_time": proc.create_time(), "cmdline": proc.cmdline(),
                         "zombie": proc.status() == psutil.STATUS_ZOMBIE}
            if found["cmdline"] or found["zombie"] or time.monotonic() >= deadline:
                del found["zombie"]
                return found
            time.sleep(0.01)
    except psutil.Error:
        return None


def _proven(entry: dict[str, Any]) -> psutil.Process | None:
    """The live process ``entry`` recorded, or None when that PID is gone or is someone else now."""
    try:
        proc = psutil.Process(int(entry["pid"]))
        with proc.oneshot():
            same = (abs(proc.create_time() - float(entry["create_time"])) < 0.01
                    and proc.cmdline() == list(entry["cmdline"]) and proc.status() != psutil.STATUS_ZOMBIE)
    except (psutil.Error, KeyError, TypeError, ValueError):
        return None
    return proc if same else None


class ProcessGroup:
    """The processes one fedit command started; ``stop()`` ends them all, by PID. With a
    ``registry`` file, each one is recorded there as soon as it starts (see the module doc)."""

    def __init__(self, registry: Path | None = None) -> None:
        self.started: list[Started] = []
        self.registry = registry
        self._records: list[dict[str, Any]] = []

    def start(self, name: str, argv: Sequence[str], *, env: dict[str, str], log_path: Path,
              cwd: Path | None = None) -> subprocess.Popen:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(log_path, "ab")
        proc = subprocess.Popen(list(argv), env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        self.adopt(name, proc, log_path, log)
        logger.info("started %s (pid %d), log %s", name, proc.pid, log_path)
        return proc

    def adopt(self, name: str, proc: subprocess.Popen, log_path: Path | None = None,
              log: IO[bytes] | None = None) -> None:
        """Take ``proc`` into the group (and the registry)."""
        self.started.append(Started(name, proc, log_path or Path(os.devnull), log or open(os.devnull, "ab")))
        self._register(name, [proc.pid])

    def _register(self, name: str, pids: Sequence[int]) -> None:
        known = {r["pid"] for r in self._records}
        new = [rec for pid in pids if pid not in known and (rec := identity(pid)) is not None]
        if not new:
            return
        self._records += [{"name": name, **rec} for rec in new]
        self.write_registry()

    def write_registry(self, **extra: Any) -> None:
        if self.registry is None:
            return
        self.registry.parent.mkdir(parents=True, exist_ok=True)
        record = {"owner": identity(os.getpid()), "processes": self._records,
                  "pids": sorted(r["pid"] for r in self._records), **extra}
        atomic_write_text(self.registry, json.dumps(record, indent=1) + "\n")

    def refresh(self) -> None:
        """Remember the descendants of every running process (to stop detached ones later)."""
        for s in self.started:
            try:
                children = [c.pid for c in psutil.Process(s.proc.pid).children(recursive=True)]
            except psutil.Error:
                continue
            s.seen.update(children)
            self._register(f"{s.name} child", children)

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


def _read_registry(registry: Path) -> dict[str, Any]:
    try:
        data = json.loads(Path(registry).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def running_owner(registry: Path) -> int | None:
    """The PID of the command that wrote ``registry``, if it is provably still running (not us)."""
    owner = _read_registry(registry).get("owner")
    if not isinstance(owner, dict) or owner.get("pid") == os.getpid():
        return None
    proc = _proven(owner)
    return proc.pid if proc is not None else None


def stop_leftovers(registry: Path, timeout: float = 10.0) -> list[int]:
    """Stop the processes ``registry`` recorded that are provably still the same processes
    (PID, create time and command line), with their current descendants; return their PIDs.
    Anything else, including a recorded PID now used by another process, is left alone."""
    entries = _read_registry(registry).get("processes") or []
    procs: dict[int, psutil.Process] = {}
    for entry in entries:
        proc = _proven(entry) if isinstance(entry, dict) else None
        if proc is None:
            continue
        procs[proc.pid] = proc
        try:
            procs.update({c.pid: c for c in proc.children(recursive=True)})
        except psutil.Error:
            pass
    for proc in procs.values():
        try:
            proc.terminate()
        except psutil.Error:
            pass
    _, alive_ = psutil.wait_procs(list(procs.values()), timeout=timeout)
    for proc in alive_:
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive_, timeout=5)
    if procs:
        logger.info("stopped %d process(es) left running by an earlier fedit deploy (%s)", len(procs), registry)
    return sorted(procs)
