"""The files ``flwr`` reads: the app folder (pyproject.toml naming our ServerApp/ClientApp), the
SuperLink connection in ``$FLWR_HOME/config.toml``, and a run's run-config TOML.

The app's code is this installed package, so the app folder holds only its pyproject.toml:
``flwr run`` builds a FAB from it and SuperLink/SuperNodes (started with runtime dependency
installation off) import ``fedit.runners.flower.server_app:app`` / ``client_app:app`` from the
environment they run in. ``flwr new`` is never needed (and needs the internet).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import tomli_w

from fedit.config import DeployConfig
from fedit.runners.flower import wire
from fedit.runners.flower.guard import APP_NAME, COMPONENTS, installed_version

CONNECTION = "fedit"

APP_PYPROJECT = """\
# The fedit Flower app: `flwr run THIS_FOLDER CONNECTION --run-config RUN.toml`.
# Its code is the installed `fedit` package (pip install 'fedit[flower]' on every machine).
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "{name}"
version = "{version}"
description = "fedit: federated LoRA instruction tuning as a Flower app"
dependencies = []

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "fedit"

[tool.flwr.app.components]
serverapp = "{serverapp}"
clientapp = "{clientapp}"

[tool.flwr.app.config]
{config}"""


def default_run_config() -> dict[str, Any]:
    """The run-config keys the app declares, with neutral defaults (``fedit-config`` empty) and
    DeployConfig's own defaults."""
    return {wire.CONFIG_KEY: "", wire.OUT_KEY: "", wire.RESUME_KEY: False,
            **wire.deploy_values(DeployConfig())}


def write_app(folder: Path) -> Path:
    """Write the app folder (its pyproject.toml) and return the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    config = tomli_w.dumps(default_run_config())
    (folder / "pyproject.toml").write_text(APP_PYPROJECT.format(name=APP_NAME, version=installed_version(),
                                                                config=config, **COMPONENTS))
    return folder


def write_connection(flwr_home: Path, address: str, root_certificates: Path | None,
                     name: str = CONNECTION) -> Path:
    """``$FLWR_HOME/config.toml`` with one SuperLink connection, made the default."""
    conn: dict[str, Any] = {"address": address}
    if root_certificates is None:
        conn["insecure"] = True
    else:
        conn["root-certificates"] = str(Path(root_certificates).resolve())
    flwr_home.mkdir(parents=True, exist_ok=True)
    path = flwr_home / "config.toml"
    path.write_text(tomli_w.dumps({"superlink": {"default": name, name: conn}}))
    return path


def write_run_config(path: Path, values: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(tomli_w.dumps(values))
    return path
