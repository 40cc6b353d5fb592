"""``fedit deploy local``: a whole Flower federation on loopback, for demos and tests.

setup (work folder, TLS material, SuperLink, node keys, SuperNodes) -> submit the run and
stream its log -> cleanup: every process started here is stopped by PID, also on Ctrl-C,
SIGTERM or failure. The run directory is written by the ServerApp to ``out``; Flower's own
state (FLWR_HOME, certificates, keys, process logs, ``pids.json``) goes to the work folder.
``pids.json`` records each process as it starts, so a later ``deploy local`` on the same work
folder, or ``fedit deploy stop``, can stop what a killed ``deploy local`` left running.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from fedit.config import Config, DeployConfig
from fedit.errors import FeditError
from fedit.runners.flower import appdir, launch
from fedit.runners.flower.guard import guarded_env
from fedit.runners.flower.processes import (ProcessGroup, alive, flower_env, free_port, running_owner,
                                            sigterm_as_interrupt, stop_leftovers, wait_for_port)
from fedit.runners.flower.security import make_node_key, make_tls
from fedit.runners.flower.wire import check_deployable, run_config_values

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"
PIDS_FILE = "pids.json"
NODE_LIST = "the --node-data list"   # where deploy local's client count comes from


@dataclass
class LocalOptions:
    node_data: Sequence[Path]
    tls: bool = False
    auth: bool = False
    deploy: DeployConfig = field(default_factory=DeployConfig)
    resume: bool = False
    work_dir: Path | None = None
    open_control_api: bool = False   # the SuperLink itself on the nodes' address (no Fleet front)
    unregistered_nodes: Sequence[Path] = field(default_factory=list)  # tests: nodes with unknown keys


@dataclass
class LocalResult:
    run_dir: Path
    work_dir: Path
    pids: list[int]
    unregistered_refused: bool | None = None


def default_work_dir(out: Path) -> Path:
    return out.parent / f"{out.name}.flower"


def registry_file(work: Path) -> Path:
    """The record of every process a ``deploy local`` on ``work`` started (see processes.py)."""
    return work / PIDS_FILE


class LocalFederation:
    def __init__(self, cfg: Config, out: Path, opts: LocalOptions,
                 echo: Callable[[str], None] | None = None) -> None:
        self.cfg, self.out, self.opts = cfg, Path(out).resolve(), opts
        self.work = Path(opts.work_dir or default_work_dir(self.out)).resolve()
        self.group = ProcessGroup(registry_file(self.work))
        self.echo = echo or (lambda line: logger.info("%s", line))

    def run(self) -> LocalResult:
        self._check()          # everything is validated before anything is written or started
        self._prepare()
        with sigterm_as_interrupt():
            try:
                self._start_link()
                refused = self._start_nodes()
                self._submit()
            finally:
                pids = self.group.pids()
                self.group.stop()
                self.group.write_registry(alive=alive(pids))
        last = [r for r in self._rounds() if r.get("round") == self.cfg.federation.rounds]
        if not last or not (self.out / "final" / "adapter_model.safetensors").is_file():
            raise FeditError(f"the Flower run ended without a final adapter in {self.out}; "
                             f"see {self.work / 'logs'}")
        return LocalResult(self.out, self.work, pids, refused)

    def _rounds(self) -> list[dict]:
        from fedit.runners.rundir import RunDir

        return [r for r in RunDir(self.out).metrics.read() if r.get("type") == "round"]

    def _check(self) -> None:
        """Every check that needs no process: flags, --out, the model and the device."""
        from fedit.model import check_platform, resolve_device, resolve_model, resolve_precision
        from fedit.server.build import check_methods, client_layouts
        from fedit.server.defences import check_round_size

        check_methods(self.cfg)
        check_deployable(self.cfg)
        heterogeneous = self.cfg.lora.client_ranks is not None or self.cfg.lora.client_targets is not None
        # --client-ranks / --client-targets become the nodes' own lora-rank / lora-targets
        self.layouts = client_layouts(self.cfg, len(self.opts.node_data)) if heterogeneous else None
        for path in self.opts.node_data:
            if not Path(path).exists():
                logger.warning("--node-data %s does not exist: that node will report an error", path)
        if self.opts.deploy.min_nodes > len(self.opts.node_data):
            raise FeditError(f"--min-nodes {self.opts.deploy.min_nodes} is more than the "
                             f"{len(self.opts.node_data)} --node-data file(s)")
        check_round_size(self.cfg, self.cfg.federation.clients_to_sample(len(self.opts.node_data), NODE_LIST))
        if self.opts.auth and not self.opts.tls:
            raise FeditError("--auth needs --tls (Flower authenticates SuperNodes only over TLS)")
        if self.opts.resume and not (self.out / "config.yaml").is_file():
            raise FeditError(f"--resume: {self.out} holds no fedit run to resume (no config.yaml); "
                             "drop --resume to start one")
        if not self.opts.resume and self.out.is_dir() and any(self.out.iterdir()):
            raise FeditError(f"--out: {self.out} exists and is not empty; pass --resume to continue the run "
                             "in it or choose another --out")
        owner = running_owner(registry_file(self.work))
        if owner is not None:
            raise FeditError(f"another fedit deploy local (pid {owner}) is running on {self.work}; wait for "
                             f"it or stop it with: fedit deploy stop --out {self.out}")
        device = resolve_device(self.cfg.model.device)  # here, not 20 s later inside the ServerApp
        resolve_precision(self.cfg.model.precision, device)
        check_platform(self.cfg.model.quantize, device.type)
        resolve_model(self.cfg.model.model)

    def _prepare(self) -> None:
        """The work folder and environment; processes an earlier, killed run left are stopped."""
        self.work.mkdir(parents=True, exist_ok=True)
        stop_leftovers(registry_file(self.work))
        self.env = flower_env(self.work / "flwr-home")
        self.env.setdefault("OMP_NUM_THREADS", str(share_cores(self.cfg, len(self.opts.node_data))))

    def _start_link(self) -> None:
        """The SuperLink on its own port (Control and runtime APIs: the operator's), and the Fleet
        front on the port the nodes use (``self.port``), forwarding the Fleet API alone; with
        ``open_control_api`` the nodes use the SuperLink's port itself (see front.py)."""
        self.link_port = free_port(HOST)
        self.tls = make_tls(self.work / "tls") if self.opts.tls else None
        link_tls = launch.LinkTls(self.tls.ca_cert, self.tls.server_cert, self.tls.server_key) if self.tls else None
        argv = launch.superlink_command(HOST, self.link_port, tls=link_tls, auth=self.opts.auth)
        proc = self.group.start("superlink", argv, env=self.env, log_path=self.work / "logs" / "superlink.log")
        wait_for_port(HOST, self.link_port, 60, proc)
        if self.opts.open_control_api:
            warn_open_control_api(f"{HOST}:{self.link_port}")
            self.port = self.link_port
        else:
            self.port = free_port(HOST)
            front = self.group.start("fleet-front", launch.front_command(HOST, self.port, self.link_port, tls=link_tls),
                                     env=self.env, log_path=self.work / "logs" / "fleet-front.log")
            wait_for_port(HOST, self.port, 60, front)
        appdir.write_connection(self.env_home, f"{HOST}:{self.link_port}", self.tls.ca_cert if self.tls else None)

    @property
    def env_home(self) -> Path:
        return Path(self.env["FLWR_HOME"])

    def _start_nodes(self) -> bool | None:
        for index, data in enumerate(self.opts.node_data):
            key = self._node_key(f"node{index}", register=True)
            self._start_node(f"supernode-{index}", data, index, key,
                             layout=self.layouts[index] if self.layouts else None)
        refused = None
        for index, data in enumerate(self.opts.unregistered_nodes):
            key = self._node_key(f"stranger{index}", register=False)
            proc = self._start_node(f"unregistered-{index}", data, None, key, max_wait_time=20)
            refused = self._refused(proc, index)
        return refused

    def _node_key(self, name: str, register: bool) -> Path | None:
        if not self.opts.auth:
            return None
        private, public = make_node_key(self.work / "keys" / name)
        if register:
            self._flwr(launch.register_command(public, name=name), f"register {name}")
        return private

    def _start_node(self, name: str, data: Path, index: int | None, key: Path | None,
                    max_wait_time: float | None = None, layout=None) -> subprocess.Popen:
        argv = launch.supernode_command(f"{HOST}:{self.port}", Path(data), client_index=index,
                                        port=free_port(HOST), root_cert=self.tls.ca_cert if self.tls else None,
                                        private_key=key, max_wait_time=max_wait_time,
                                        lora_rank=layout.rank if layout else None,
                                        lora_targets=layout.targets if layout else None,
                                        personal_dir=self.work / "nodes" / name / "personal")
        env = guarded_env(self.env, self.work / "guard-bin")   # the node runs fedit's app only (guard.py)
        return self.group.start(name, argv, env=env, log_path=self.work / "logs" / f"{name}.log")

    def _refused(self, proc: subprocess.Popen, index: int) -> bool:
        """Wait for an unregistered SuperNode to give up (it must never join)."""
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            return False
        logger.info("unregistered node %d was refused by the SuperLink (exit code %d)", index, proc.returncode)
        return proc.returncode != 0

    def _flwr(self, argv: list[str], what: str) -> str:
        done = subprocess.run(argv, env=self.env, cwd=self.work, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise FeditError(f"{what} failed: {(done.stderr or done.stdout).strip().splitlines()[-1:]}")
        return done.stdout

    def _submit(self) -> None:
        app = appdir.write_app(self.work / "app")
        deploy = self.opts.deploy
        deploy = dataclasses.replace(deploy, wait_nodes=deploy.wait_nodes or len(self.opts.node_data))
        values = run_config_values(self.cfg, self.out, resume=self.opts.resume, deploy=deploy)
        run_toml = appdir.write_run_config(self.work / "run.toml", values)
        argv = launch.submit_command(app, run_toml, stream=True)
        proc = self.group.start("flwr-run", argv, env=self.env, log_path=self.work / "logs" / "flwr-run.log",
                                cwd=self.work)
        self._follow(proc, self.work / "logs" / "flwr-run.log")

    def _follow(self, proc: subprocess.Popen, log_path: Path) -> None:
        """Echo the streamed run log until ``flwr run --stream`` ends."""
        pos = 0
        while True:
            done = proc.poll() is not None
            self.group.refresh()
            with open(log_path, "rb") as fh:
                fh.seek(pos)
                chunk = fh.read()
            lines = chunk.split(b"\n")
            if not done:
                chunk = b"\n".join(lines[:-1]) + (b"\n" if len(lines) > 1 else b"")
                lines = lines[:-1]
            pos += len(chunk)
            for line in lines:
                if line.strip():
                    self.echo(line.decode(errors="replace").rstrip())
            if done:
                return
            time.sleep(0.3)


def warn_open_control_api(address: str) -> None:
    """The loud line of --insecure-open-control-api, logged on every start."""
    logger.warning("--insecure-open-control-api: the SuperLink's Control API is served on %s, the address the "
                   "SuperNodes use; anyone who can reach it (with the CA certificate) can submit an app that runs "
                   "on the server and on every node, or register a node of their own", address)


def share_cores(cfg: Config, nodes: int) -> int:
    """Threads per process when all nodes share this machine: the clients of a round train at the
    same time, and oversubscribed OpenMP threads slow every one of them down many times over."""
    concurrent = min(nodes, cfg.federation.clients_to_sample(nodes, NODE_LIST))
    return max(1, (os.cpu_count() or 1) // max(1, concurrent))


def deploy_local(cfg: Config, out: Path, opts: LocalOptions,
                 echo: Callable[[str], None] | None = None) -> LocalResult:
    """Run ``cfg`` on a loopback Flower federation; the run directory lands in ``out``."""
    return LocalFederation(cfg, out, opts, echo).run()
