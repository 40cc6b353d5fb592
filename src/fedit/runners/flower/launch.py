"""Command lines of the standard Flower processes, as fedit's operator commands start them.

One function per process or ``flwr`` command, so ``fedit deploy superlink|supernode|
register-node|submit`` (one machine each) and ``fedit deploy local`` (all on loopback) build
exactly the same commands; ``--print-command`` shows them for operators who run Flower's
tools directly.
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from fedit.errors import FeditError
from fedit.runners.flower.appdir import CONNECTION
from fedit.runners.flower.processes import bin_dir
from fedit.runners.flower.wire import (CLIENT_INDEX_KEY, DATA_PATH_KEY, LORA_RANK_KEY, LORA_TARGETS_KEY,
                                       PERSONAL_DIR_KEY)


@dataclass
class LinkTls:
    ca_cert: Path
    cert: Path
    key: Path


def _tool(name: str) -> str:
    path = bin_dir() / name
    return str(path) if path.exists() else name


def superlink_command(host: str, port: int, *, tls: LinkTls | None, auth: bool,
                      database: Path | None = None) -> list[str]:
    argv = [_tool("flower-superlink"), "--host", host, "--port", str(port),
            "--disable-runtime-dependency-installation"]
    if tls is None:
        argv.append("--insecure")
    else:
        argv += ["--ssl-ca-certfile", str(tls.ca_cert), "--ssl-certfile", str(tls.cert),
                 "--ssl-keyfile", str(tls.key)]
    if auth:
        argv.append("--enable-supernode-auth")
    if database is not None:
        argv += ["--database", str(database)]
    return argv


def front_command(host: str, port: int, link_port: int, *, tls: LinkTls | None) -> list[str]:
    """The Fleet front (fedit.runners.flower.front) on ``host:port``, forwarding the Fleet API alone
    to the SuperLink on ``127.0.0.1:link_port``."""
    argv = [sys.executable, "-m", "fedit.runners.flower.front", "--host", host, "--port", str(port),
            "--upstream", f"{'https' if tls else 'http'}://127.0.0.1:{link_port}"]
    if tls is not None:
        argv += ["--ssl-ca-certfile", str(tls.ca_cert), "--ssl-certfile", str(tls.cert),
                 "--ssl-keyfile", str(tls.key)]
    return argv


def node_config(data: Path, client_index: int | None, lora_rank: int | None = None,
                lora_targets: str | None = None, personal_dir: Path | None = None) -> str:
    items = [f'{DATA_PATH_KEY}="{Path(data).resolve()}"']
    if client_index is not None:
        items.append(f"{CLIENT_INDEX_KEY}={client_index}")
    if lora_rank is not None:
        items.append(f"{LORA_RANK_KEY}={lora_rank}")
    if lora_targets is not None:
        items.append(f'{LORA_TARGETS_KEY}="{lora_targets}"')
    if personal_dir is not None:
        items.append(f'{PERSONAL_DIR_KEY}="{Path(personal_dir).resolve()}"')
    return " ".join(items)


def check_private_key(path: Path) -> None:
    """Refuse a node's private key that its group or others may read (as ssh refuses one): whoever
    reads it can register as this node."""
    mode = Path(path).stat().st_mode & 0o777 if Path(path).exists() else 0
    if mode & 0o077:
        raise FeditError(f"{path}: a node's private key must be readable by its owner only (mode {mode:04o}); "
                         f"run: chmod 600 {path}")


def supernode_command(superlink: str, data: Path, *, client_index: int | None, port: int,
                      root_cert: Path | None, private_key: Path | None,
                      max_wait_time: float | None = None, lora_rank: int | None = None,
                      lora_targets: str | None = None, personal_dir: Path | None = None) -> list[str]:
    argv = [_tool("flower-supernode"), "--superlink", superlink, "--port", str(port),
            "--node-config", node_config(data, client_index, lora_rank, lora_targets, personal_dir)]
    argv += ["--insecure"] if root_cert is None else ["--root-certificates", str(root_cert)]
    if private_key is not None:
        check_private_key(private_key)
        argv += ["--auth-supernode-private-key", str(private_key)]
    if max_wait_time is not None:
        argv += ["--max-wait-time", str(max_wait_time)]
    return argv


def register_command(public_key: Path, name: str | None = None, connection: str = CONNECTION) -> list[str]:
    argv = [_tool("flwr"), "supernode", "register", str(public_key), connection]
    return argv + (["--name", name] if name else [])


def submit_command(app_dir: Path, run_config: Path, *, stream: bool, connection: str = CONNECTION) -> list[str]:
    argv = [_tool("flwr"), "run", str(app_dir), connection, "--run-config", str(run_config)]
    return argv + (["--stream"] if stream else [])


def shell(argv: list[str]) -> str:
    return shlex.join(argv)
