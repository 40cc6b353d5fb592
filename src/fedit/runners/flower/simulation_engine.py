"""``fedit deploy simulate``: fedit's Flower app under Flower's Simulation Engine (Ray backend).

The same ServerApp and ClientApp as a real deployment, but the SuperNodes are virtual: a
SuperLink started with ``--simulation`` runs ``num-supernodes`` ClientApps as Ray actors on this
machine, each with the CPUs/GPUs given by ``client-resources`` (so a multi-GPU node trains that
many clients in parallel: ``--client-gpus 1`` on 4 GPUs runs 4 at once). Node *i* trains client
*i* of the run's partition of ``--data`` (see client_app.py), so the run is ``fedit run`` with
clients executed by Flower. What this module adds to ``fedit deploy local``: no SuperNode
processes, ``--simulation`` on the SuperLink, and the federation config of ``flwr run``:

    flwr run APP CONNECTION --run-config RUN.toml --stream \\
        --federation-config "num-supernodes=N client-resources-num-cpus=C client-resources-num-gpus=G"
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from fedit.config import Config, DeployConfig
from fedit.errors import FeditError
from fedit.runners.flower import appdir, launch
from fedit.runners.flower.local import HOST, LocalFederation, LocalOptions, LocalResult, default_work_dir, registry_file
from fedit.runners.flower.processes import ProcessGroup, flower_env, free_port, stop_leftovers, wait_for_port
from fedit.runners.flower.wire import check_deployable, run_config_values

logger = logging.getLogger(__name__)


@dataclass
class EngineOptions:
    supernodes: int
    client_cpus: float = 1.0
    client_gpus: float = 0.0
    deploy: DeployConfig = dataclasses.field(default_factory=DeployConfig)
    resume: bool = False
    work_dir: Path | None = None


def federation_config(opts: EngineOptions) -> str:
    """The ``--federation-config`` of ``flwr run`` for a local simulation."""
    return (f"num-supernodes={opts.supernodes} client-resources-num-cpus={opts.client_cpus:g} "
            f"client-resources-num-gpus={opts.client_gpus:g}")


class EngineFederation(LocalFederation):
    """A SuperLink in simulation mode + ``flwr run`` with a federation config; no SuperNodes."""

    def __init__(self, cfg: Config, out: Path, opts: EngineOptions,
                 echo: Callable[[str], None] | None = None) -> None:
        self.engine = opts
        self.cfg, self.out = cfg, Path(out).resolve()
        self.opts = LocalOptions(node_data=[], deploy=opts.deploy, resume=opts.resume, work_dir=opts.work_dir)
        self.work = Path(opts.work_dir or default_work_dir(self.out)).resolve()
        self.group = ProcessGroup(registry_file(self.work))
        self.echo = echo or (lambda line: logger.info("%s", line))

    def _check(self) -> None:
        from fedit.server.build import check_methods

        check_methods(self.cfg)
        check_deployable(self.cfg)
        n = self.engine.supernodes
        if n < 1:
            raise FeditError(f"--num-supernodes {n}: must be at least 1")
        if self.engine.client_cpus <= 0 or self.engine.client_gpus < 0:
            raise FeditError("--client-cpus must be > 0 and --client-gpus >= 0")
        if self.opts.deploy.min_nodes > n:
            raise FeditError(f"--min-nodes {self.opts.deploy.min_nodes} is more than --num-supernodes {n}")
        cpr = self.cfg.federation.clients_per_round
        if self.cfg.federation.fraction is None and cpr > n:
            raise FeditError(f"--clients-per-round {cpr} is more than --num-supernodes {n}")
        if not self.opts.resume and self.out.is_dir() and any(self.out.iterdir()):
            raise FeditError(f"--out: {self.out} exists and is not empty; pass --resume to continue the run "
                             "in it or choose another --out")
        self.work.mkdir(parents=True, exist_ok=True)

    def _prepare(self) -> None:
        """The work folder and environment (--client-cpus threads per Ray actor); processes an
        earlier, killed run left are stopped."""
        self.work.mkdir(parents=True, exist_ok=True)
        stop_leftovers(registry_file(self.work))
        self.env = flower_env(self.work / "flwr-home")
        self.env.setdefault("OMP_NUM_THREADS", str(max(1, int(self.engine.client_cpus))))

    def _start_link(self) -> None:
        self.port = free_port(HOST)
        argv = launch.superlink_command(HOST, self.port, tls=None, auth=False) + ["--simulation"]
        proc = self.group.start("superlink", argv, env=self.env, log_path=self.work / "logs" / "superlink.log")
        wait_for_port(HOST, self.port, 60, proc)
        appdir.write_connection(self.env_home, f"{HOST}:{self.port}", None)

    def _start_nodes(self) -> None:
        return None  # the Simulation Engine runs the ClientApps itself

    def _submit(self) -> None:
        app = appdir.write_app(self.work / "app")
        deploy = dataclasses.replace(self.opts.deploy, wait_nodes=self.opts.deploy.wait_nodes or self.engine.supernodes)
        values = run_config_values(self.cfg, self.out, resume=self.opts.resume, deploy=deploy)
        run_toml = appdir.write_run_config(self.work / "run.toml", values)
        argv = launch.submit_command(app, run_toml, stream=True) + ["--federation-config", federation_config(self.engine)]
        proc = self.group.start("flwr-run", argv, env=self.env, log_path=self.work / "logs" / "flwr-run.log",
                                cwd=self.work)
        self._follow(proc, self.work / "logs" / "flwr-run.log")


def absolute_data(cfg: Config) -> Config:
    """Local data paths made absolute: the ServerApp and the Ray actors do not share our cwd."""
    changes = {}
    for name in ("data", "test_data"):
        value = getattr(cfg.data, name)
        if value and Path(value).expanduser().exists():
            changes[name] = str(Path(value).expanduser().resolve())
    return cfg.override(changes) if changes else cfg


def simulate(cfg: Config, out: Path, opts: EngineOptions, echo: Callable[[str], None] | None = None) -> LocalResult:
    """Run ``cfg`` under Flower's Simulation Engine on this machine; the run directory lands in ``out``."""
    return EngineFederation(absolute_data(cfg), out, opts, echo).run()
