"""Fast checks of the Flower deployment's parts (no process started): wire format, keys, CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("flwr")

from cryptography.hazmat.primitives.serialization import load_ssh_private_key, load_ssh_public_key  # noqa: E402
from types import SimpleNamespace  # noqa: E402

from flwr.app import RecordDict  # noqa: E402

from fedit.cli import main  # noqa: E402
from fedit.client.job import ClientJob, ClientUpdate  # noqa: E402
from fedit.config import Config, DeployConfig, load_config  # noqa: E402
from fedit.errors import UpdateError  # noqa: E402
from fedit.runners.flower import wire  # noqa: E402
from fedit.runners.flower.client_app import node_records  # noqa: E402
from fedit.runners.flower.security import make_node_key, make_tls  # noqa: E402


def _reply(content: RecordDict | None = None, error: str | None = None) -> SimpleNamespace:
    """Stands in for a reply Message (real ones need a running Flower task)."""
    return SimpleNamespace(has_error=lambda: error is not None, error=SimpleNamespace(reason=error),
                           content=content, metadata=SimpleNamespace(src_node_id=5))


def test_config_and_update_round_trip(tmp_path: Path) -> None:
    cfg = load_config("cpu-demo").override({"model": "tiny-random", "rounds": 4})
    values = wire.run_config_values(cfg, tmp_path / "run", deploy=DeployConfig(min_nodes=2))
    assert wire.config_from_run(values) == cfg and values["out"] == str((tmp_path / "run").resolve())
    assert wire.deploy_from_run(values) == DeployConfig(min_nodes=2, wait_nodes=2)
    state = {"a.lora_A.weight": torch.randn(2, 3), "a.lora_B.weight": torch.randn(3, 2)}
    extra = {"c": {"a.lora_A.weight": torch.ones(2, 3)}}
    update = ClientUpdate(1, state, 7, {"train_loss": 1.5, "steps": 3}, extra)
    back = wire.update_from_reply(_reply(wire.update_content(update)), 1)
    assert back.num_examples == 7 and back.metrics == {"train_loss": 1.5, "steps": 3}
    assert all(torch.equal(back.state[k], state[k]) for k in state)
    assert set(back.arrays) == {"c"} and torch.equal(back.arrays["c"]["a.lora_A.weight"], torch.ones(2, 3))
    job = ClientJob(2, 3, state, {"proximal_mu": 0.5, "local_steps": 4}, extra)
    sent = wire.job_from_message(SimpleNamespace(content=wire.train_content(job)))
    assert (sent.client_id, sent.round, sent.config) == (2, 3, {"proximal_mu": 0.5, "local_steps": 4})
    assert all(torch.equal(sent.state[k], state[k]) for k in state) and set(sent.arrays) == {"c"}


def test_error_reply_is_one_line_update_error() -> None:
    with pytest.raises(UpdateError, match=r"^client 2 \(node 5\): bad data$"):
        wire.update_from_reply(_reply(error="bad data"), 2)
    with pytest.raises(UpdateError, match="malformed reply"):
        wire.update_from_reply(_reply(RecordDict()), 2)
    with pytest.raises(Exception, match="empty"):
        wire.config_from_run({"fedit-config": ""})
    assert isinstance(Config(), Config)


def test_node_records_errors(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="data-path is not set"):
        node_records({})
    with pytest.raises(Exception, match="no such data file"):
        node_records({"data-path": str(tmp_path / "missing.json")})
    bad = tmp_path / "bad.json"
    bad.write_text("[{")
    with pytest.raises(Exception, match="invalid JSON"):
        node_records({"data-path": str(bad)})


def test_keys_and_certificates(tmp_path: Path) -> None:
    private, public = make_node_key(tmp_path / "node")
    assert load_ssh_private_key(private.read_bytes(), None).curve.name == "secp384r1"
    assert load_ssh_public_key(public.read_bytes()).curve.name == "secp384r1"
    files = make_tls(tmp_path / "tls")
    assert b"BEGIN CERTIFICATE" in files.ca_cert.read_bytes() and files.server_key.stat().st_mode & 0o077 == 0


def test_cli_prints_flower_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["deploy", "superlink", "--insecure", "--print-command", "--flwr-home", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "flower-superlink" in out and "--disable-runtime-dependency-installation" in out
    assert "FLWR_TELEMETRY_ENABLED=0" in out
    assert main(["deploy", "superlink", "--auth", "--insecure", "--flwr-home", str(tmp_path)]) == 2
    assert main(["deploy", "app", str(tmp_path / "app"), "--out", str(tmp_path / "run"),
                 "--model", "tiny-random"]) == 0
    assert "[tool.flwr.app.components]" in (tmp_path / "app" / "app" / "pyproject.toml").read_text()
