"""A data owner's node runs fedit's app and nothing else: the FAB is checked before it is installed.

A SuperNode runs whatever app (FAB) the SuperLink hands it: its ClientApp module, shipped inside
the FAB or named in its pyproject.toml, is imported in a ``flwr-clientapp`` process that the node
starts by name. Flower's own answer, ``flower-supernode --trusted-entities`` with a signed FAB,
needs a SuperLink that marks FABs as verified (``valid_license``): the open-source SuperLink does
not, and such a node then refuses every app, fedit's too. So fedit's nodes start with a folder
first on their PATH that holds fedit's ``flwr-clientapp``: Flower's own command, which first checks
the FAB against :func:`fab_problem` and refuses, before anything is installed or imported, any FAB
that is not fedit's app at this node's fedit version:

- it holds no code: its only files are ``pyproject.toml`` (and Flower's ``.info/CONTENT`` list);
- its components are fedit's (``fedit.runners.flower.client_app:app`` and the ServerApp), its
  publisher ``fedit``, its name ``fedit-flower``, its version this node's installed fedit version;
- so the code that runs is the fedit package the data owner installed, at the version they chose.

The refusal is an error reply to the server and one ERROR line in the node's log.
"""

from __future__ import annotations

import io
import logging
import os
import stat
import sys
import tomllib
import zipfile
from pathlib import Path

logger = logging.getLogger(__name__)

CLIENTAPP_COMMAND = "flwr-clientapp"
APP_NAME = "fedit-flower"   # the app fedit.runners.flower.appdir writes (its name and components are these)
COMPONENTS = {"serverapp": "fedit.runners.flower.server_app:app",
              "clientapp": "fedit.runners.flower.client_app:app"}
FAB_FILES = {"pyproject.toml", ".info/CONTENT"}


class AppNotApproved(Exception):
    """The SuperLink handed this node an app that is not fedit's (the ClientApp is not started)."""


def installed_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("fedit")
    except PackageNotFoundError:
        return "0.1.0"


def fab_problem(content: bytes, version: str) -> str | None:
    """Why the FAB ``content`` is not fedit's app at ``version``; None when it is."""
    try:
        with zipfile.ZipFile(io.BytesIO(content)) as fab:
            names = set(fab.namelist())
            if not names <= FAB_FILES or "pyproject.toml" not in names:
                extra = sorted(names - FAB_FILES)[:3]
                return f"it holds files other than fedit's pyproject.toml ({', '.join(extra) or 'none'})"
            project = tomllib.loads(fab.read("pyproject.toml").decode())
    except (zipfile.BadZipFile, UnicodeDecodeError, tomllib.TOMLDecodeError, KeyError) as exc:
        return f"it is not a readable app bundle ({exc})"
    app = project.get("tool", {}).get("flwr", {}).get("app", {})
    meta = project.get("project", {})
    if app.get("components") != COMPONENTS:
        return f"its components are {app.get('components')!r}, not fedit's"
    if app.get("publisher") != "fedit" or meta.get("name") != APP_NAME:
        return f"it is {app.get('publisher')!r}/{meta.get('name')!r}, not fedit/{APP_NAME}"
    if meta.get("version") != version:
        return f"it is fedit's app at version {meta.get('version')!r}, but this node runs fedit {version}"
    return None


def install_guard(version: str | None = None) -> None:
    """Make this process's Flower ClientApp runtime check every FAB before installing it."""
    from flwr.supernode.runtime import run_clientapp

    expected = version or installed_version()
    install = run_clientapp.install_from_fab

    def checked_install(content: bytes, *args, **kwargs):
        problem = fab_problem(content, expected)
        if problem is not None:
            logger.error("refused an app the SuperLink sent: %s; only fedit's own app runs on this node "
                         "(fedit.runners.flower.guard)", problem)
            raise AppNotApproved(f"this node runs only fedit's app at version {expected}: {problem}")
        return install(content, *args, **kwargs)

    run_clientapp.install_from_fab = checked_install


def main() -> None:
    """``flwr-clientapp`` with the guard installed (what the node's guard folder runs)."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    install_guard()
    from flwr.supernode.cli.flwr_clientapp import flwr_clientapp

    sys.argv[0] = CLIENTAPP_COMMAND    # Flower's exit handling reads the command's name
    flwr_clientapp()


def write_guard_bin(folder: Path) -> Path:
    """A folder holding fedit's ``flwr-clientapp`` (this interpreter, :func:`main`); put it first
    on the SuperNode's PATH (:func:`guarded_env`)."""
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / CLIENTAPP_COMMAND
    script.write_text(f"#!{sys.executable}\nfrom fedit.runners.flower.guard import main\nmain()\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return folder


def guarded_env(env: dict[str, str], folder: Path) -> dict[str, str]:
    """``env`` with the guard folder first on PATH (the node's SuperExec finds fedit's flwr-clientapp)."""
    out = dict(env)
    out["PATH"] = f"{write_guard_bin(folder)}{os.pathsep}{env.get('PATH', '')}"
    return out
