"""The trust boundary of a Flower deployment (docs/flower.md, "Threat model"), on loopback.

An outsider holds the CA certificate and can reach the address the SuperNodes connect to, as
every data owner can. Before fedit's Fleet front they ran their own app on the SuperLink and on
every node (which sent back the start of each node's private file), and registered a node of their
own. Now: the address serves the Fleet API alone, so both attempts fail and the federation's own
run finishes; and a node asked to run an app that is not fedit's (here through the Control API left
open with --insecure-open-control-api) refuses it before importing it.
"""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("flwr")

import httpx  # noqa: E402 - installed with flwr

from fedit.config import DeployConfig, load_config  # noqa: E402
from fedit.runners.flower import appdir  # noqa: E402
from fedit.runners.flower.local import LocalOptions, deploy_local  # noqa: E402
from fedit.runners.flower.processes import bin_dir, flower_env  # noqa: E402
from fedit.runners.flower.security import make_node_key  # noqa: E402

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
TINY = FIXTURES / "tiny"

OUTSIDER_APP = '''\
import json
from pathlib import Path
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

server = ServerApp()
client = ClientApp()


@server.main()
def main(grid: Grid, context: Context) -> None:
    Path("{marker}.server").write_text("ran")
    nodes = list(grid.get_node_ids())
    msgs = [Message(RecordDict({{"c": ConfigRecord({{"x": 1}})}}), dst_node_id=n, message_type="train")
            for n in nodes]
    replies = list(grid.send_and_receive(msgs, timeout=90))
    Path("{marker}.replies").write_text(json.dumps([r.error.reason if r.has_error() else "ok" for r in replies]))


@client.train()
def train(msg: Message, context: Context) -> Message:
    data = Path(str(context.node_config["data-path"])).read_text()[:40]
    Path("{marker}.client").write_text(data)
    return Message(RecordDict({{"c": ConfigRecord({{"leak": data}})}}), reply_to=msg)
'''

OUTSIDER_PYPROJECT = '''\
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "harmless"
version = "1.0.0"
dependencies = []

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "outsider"

[tool.flwr.app.components]
serverapp = "outsider_app:server"
clientapp = "outsider_app:client"

[tool.flwr.app.config]
'''


def _config(rounds: int = 2):
    return load_config("cpu-demo").override(dict(
        model="tiny-random", test_data=str(FIXTURES / "tiny_test.jsonl"), partition="files", rounds=rounds,
        clients_per_round=2, local_steps=2, batch_size=4, micro_batch_size=2, max_len=64))


def _outsider_app(folder: Path, marker: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "pyproject.toml").write_text(OUTSIDER_PYPROJECT)
    (folder / "outsider_app.py").write_text(OUTSIDER_APP.format(marker=marker))
    return folder


def _wait_for(work: Path, name: str, timeout: float = 120) -> list[str]:
    """The command line of the process ``deploy local`` recorded as ``name`` (once it started)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            record = json.loads((work / "pids.json").read_text())
        except (OSError, ValueError):
            record = {}
        for proc in record.get("processes", []):
            if proc["name"] == name:
                return proc["cmdline"]
        time.sleep(0.5)
    raise TimeoutError(f"{name} did not start")


def _port_of(cmdline: list[str]) -> int:
    return int(cmdline[cmdline.index("--port") + 1])


def _post(address: str, path: str, ca: Path) -> int:
    """The status of a bare HTTPS call, as the outsider's own client would make it."""
    return httpx.post(f"https://{address}{path}", content=b"", timeout=30,
                      verify=ssl.create_default_context(cafile=str(ca))).status_code


def _superlink_of(cmdline: list[str]) -> str:
    return cmdline[cmdline.index("--superlink") + 1]


def _outsider(home: Path, address: str, ca: Path, *argv: str) -> subprocess.CompletedProcess:
    """A ``flwr`` command of the outsider's: their own FLWR_HOME, the CA certificate, ``address``."""
    appdir.write_connection(home, address, ca, name="target")
    env = flower_env(home)
    return subprocess.run([str(bin_dir() / "flwr"), *argv], env=env, capture_output=True, text=True, timeout=180)


def _run_federation(tmp_path: Path, **opts) -> tuple[threading.Thread, dict, Path, Path]:
    out, work = tmp_path / "run", tmp_path / "run.flower"
    result: dict = {}

    def federation() -> None:
        try:
            result["ok"] = deploy_local(_config(), out, LocalOptions(
                node_data=[TINY / "client_0.json", TINY / "client_1.json"], tls=True, auth=True,
                deploy=DeployConfig(min_nodes=2), **opts), echo=lambda line: None)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            result["error"] = exc

    thread = threading.Thread(target=federation)
    thread.start()
    return thread, result, out, work


@pytest.mark.slow
def test_outsider_with_ca_cannot_submit_an_app_or_register_a_node(tmp_path: Path) -> None:
    """The regression test of issue 15 (1, 2): on the address the SuperNodes use, with the CA
    certificate only, ``flwr run`` of the outsider's app and ``flwr supernode register`` of the
    outsider's key both succeeded before the Fleet front."""
    thread, result, out, work = _run_federation(tmp_path)
    try:
        nodes_address = _superlink_of(_wait_for(work, "supernode-1"))   # what every data owner reaches
        ca = work / "tls" / "ca.crt"
        marker = tmp_path / "outsider"
        app = _outsider_app(tmp_path / "outsider-app", marker)
        submitted = _outsider(tmp_path / "outsider-home", nodes_address, ca, "run", str(app), "target")
        key, public = make_node_key(tmp_path / "outsider-key")
        registered = _outsider(tmp_path / "outsider-home", nodes_address, ca,
                               "supernode", "register", str(public), "target")
        direct = {path: _post(nodes_address, path, ca) for path in ("/v1/control/start-run", "/v1/runtime/get-nodes")}
    finally:
        thread.join(600)
    outcome = {"flwr run": submitted.returncode, "flwr supernode register": registered.returncode}
    assert all(outcome.values()), (outcome, submitted.stdout, registered.stdout)   # both exit 0 on the old code
    assert direct == {"/v1/control/start-run": 403, "/v1/runtime/get-nodes": 403}   # the APIs called directly
    assert "403 Forbidden" in submitted.stdout + submitted.stderr
    assert "403 Forbidden" in registered.stdout + registered.stderr
    assert not any(marker.parent.glob("outsider.*")), "the outsider's app ran"
    front, link = _port_of(_wait_for(work, "fleet-front")), _port_of(_wait_for(work, "superlink"))
    assert nodes_address == f"127.0.0.1:{front}" and front != link
    front_log = (work / "logs" / "fleet-front.log").read_text()
    assert "refused POST /v1/control/start-run" in front_log
    assert "refused POST /v1/control/register-node" in front_log
    assert "error" not in result, result.get("error")
    assert (out / "final" / "adapter_model.safetensors").is_file()   # the federation's own run finished
    nodes = json.loads((out / "nodes.json").read_text())
    assert [n["client"] for n in nodes] == [0, 1]                   # nobody else joined


@pytest.mark.slow
def test_node_refuses_an_app_that_is_not_fedits(tmp_path: Path, caplog) -> None:
    """With the Control API left open, the outsider's ServerApp runs on the SuperLink (as the flag's
    warning says), but every node refuses its ClientApp before importing it: no data leaves."""
    thread, result, out, work = _run_federation(tmp_path, open_control_api=True)
    try:
        link = _port_of(_wait_for(work, "superlink"))
        _wait_for(work, "supernode-1")
        marker = tmp_path / "outsider"
        app = _outsider_app(tmp_path / "outsider-app", marker)
        submitted = _outsider(tmp_path / "outsider-home", f"127.0.0.1:{link}", work / "tls" / "ca.crt",
                              "run", str(app), "target", "--stream")
    finally:
        thread.join(600)
    assert "error" not in result, result.get("error")
    assert (out / "final" / "adapter_model.safetensors").is_file()
    assert submitted.returncode == 0, submitted.stderr
    replies = json.loads(Path(f"{marker}.replies").read_text())
    assert len(replies) == 2 and all(r != "ok" for r in replies), replies
    assert not Path(f"{marker}.client").exists(), "a node ran the outsider's ClientApp"
    node_logs = "".join((work / "logs" / f"supernode-{i}.log").read_text() for i in range(2))
    assert node_logs.count("refused an app the SuperLink sent") >= 2
    assert "it holds files other than fedit's pyproject.toml (outsider_app.py)" in node_logs
    assert "--insecure-open-control-api: the SuperLink's Control API is served on" in caplog.text


def test_operator_commands_against_the_front_fail_with_one_line(tmp_path: Path, capsys) -> None:
    """``deploy register-node`` / ``deploy submit`` pointed at the Fleet front (the data owners' address,
    not the Control port) stop with one line naming the right port; no request reaches Flower."""
    from fedit.cli import main
    from fedit.runners.flower.processes import free_port, wait_for_port

    port = free_port("127.0.0.1")
    front = subprocess.Popen([sys.executable, "-m", "fedit.runners.flower.front", "--host", "127.0.0.1",
                              "--port", str(port), "--upstream", "http://127.0.0.1:9"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port("127.0.0.1", port, 30, front)
        _, public = make_node_key(tmp_path / "node")
        common = ["--superlink", f"127.0.0.1:{port}", "--insecure", "--flwr-home", str(tmp_path / "home")]
        assert main(["deploy", "register-node", str(public), *common]) == 2
        assert main(["deploy", "submit", *common, "--out", str(tmp_path / "run"), "--model", "tiny-random",
                     "--test-data", str(FIXTURES / "tiny_test.jsonl")]) == 2
    finally:
        front.terminate()
        front.wait(10)
    lines = capsys.readouterr().err.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == ["fedit deploy", "fedit deploy"], lines
    assert all(f"--superlink 127.0.0.1:{port} is fedit's Fleet front" in line for line in lines)
    assert "Traceback" not in "".join(lines)
