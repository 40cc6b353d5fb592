"""The two halves of the deployment's trust boundary that need no process: the Fleet front's rule
(fedit.runners.flower.front.allowed) and a node's check of the app it is asked to run
(fedit.runners.flower.guard.fab_problem)."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest

pytest.importorskip("flwr")

from fedit.runners.flower.appdir import write_app  # noqa: E402
from fedit.runners.flower.front import allowed, make_app  # noqa: E402
from fedit.runners.flower.guard import fab_problem, installed_version  # noqa: E402


def test_front_forwards_the_fleet_api_only() -> None:
    assert allowed("POST", "/v1/fleet/pull-messages") and allowed("POST", "/v1/fleet/register-node")
    for method, path in [("POST", "/v1/control/start-run"), ("POST", "/v1/control/register-node"),
                         ("POST", "/v1/runtime/pull-message"), ("GET", "/v1/fleet/pull-messages"),
                         ("POST", "/v1/fleet/../control/start-run"), ("POST", "/v1/fleet//x"),
                         ("POST", "/health"), ("POST", "/v1/fleetx/pull-messages")]:
        assert not allowed(method, path), (method, path)


def test_front_answers_403_without_reaching_the_superlink() -> None:
    from starlette.testclient import TestClient

    with TestClient(make_app("http://127.0.0.1:9", None)) as client:   # nothing listens on port 9
        refused = client.post("/v1/control/start-run", content=b"x")
        assert refused.status_code == 403 and "Fleet API only" in refused.text
        unreachable = client.post("/v1/fleet/pull-messages", content=b"x")
        assert unreachable.status_code == 502


def _fab(files: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, text in files.items():
            z.writestr(name, text)
    return buf.getvalue()


def test_node_accepts_fedits_app_and_refuses_others(tmp_path: Path) -> None:
    pyproject = (write_app(tmp_path / "app") / "pyproject.toml").read_text()
    version = installed_version()
    assert fab_problem(_fab({"pyproject.toml": pyproject, ".info/CONTENT": "x"}), version) is None
    assert fab_problem(_fab({"pyproject.toml": pyproject, "evil.py": "import os"}), version) == \
        "it holds files other than fedit's pyproject.toml (evil.py)"
    other = pyproject.replace("fedit.runners.flower.client_app:app", "evil:app")
    assert "not fedit's" in fab_problem(_fab({"pyproject.toml": other}), version)
    renamed = pyproject.replace('publisher = "fedit"', 'publisher = "someone"')
    assert "not fedit/fedit-flower" in fab_problem(_fab({"pyproject.toml": renamed}), version)
    assert "but this node runs fedit 0.0.1" in fab_problem(_fab({"pyproject.toml": pyproject}), "0.0.1")
    assert fab_problem(b"not a zip", version).startswith("it is not a readable app bundle")


def test_flower_env_drops_the_legacy_grpc_switches(tmp_path: Path) -> None:
    """Flower's legacy gRPC Control/Fleet servers listen on 0.0.0.0, past the Fleet front: never on."""
    from fedit.runners.flower.processes import flower_env

    env = flower_env(tmp_path, {"FLWR_INTERNAL_GRPC_CONTROL_API": "1", "FLWR_INTERNAL_GRPC_FLEET_API": "1",
                                "PATH": "/bin"})
    assert "FLWR_INTERNAL_GRPC_CONTROL_API" not in env and "FLWR_INTERNAL_GRPC_FLEET_API" not in env
    assert env["FLWR_HOME"] == str(tmp_path)
