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
    # the SuperLink on loopback (Control API: the operator's), the Fleet front on --host/--port
    lines = out.strip().splitlines()
    assert len(lines) == 2 and "--host 127.0.0.1 --port 9092" in lines[0]
    assert "fedit.runners.flower.front --host 0.0.0.0 --port 9093 --upstream http://127.0.0.1:9092" in lines[1]
    assert main(["deploy", "superlink", "--insecure", "--print-command", "--insecure-open-control-api",
                 "--flwr-home", str(tmp_path)]) == 0
    opened = capsys.readouterr()
    assert "--host 0.0.0.0 --port 9093" in opened.out and "front" not in opened.out
    assert main(["deploy", "supernode", "--insecure", "--superlink", "x:1", "--data", str(tmp_path / "d.json"),
                 "--print-command", "--flwr-home", str(tmp_path)]) == 0
    assert f"PATH={tmp_path / 'fedit-guard-bin'}:$PATH" in capsys.readouterr().out   # the node's guard
    assert main(["deploy", "superlink", "--auth", "--insecure", "--flwr-home", str(tmp_path)]) == 2
    assert main(["deploy", "app", str(tmp_path / "app"), "--out", str(tmp_path / "run"),
                 "--model", "tiny-random"]) == 0
    assert "[tool.flwr.app.components]" in (tmp_path / "app" / "app" / "pyproject.toml").read_text()


# --- issue 7: everyday correctness ----------------------------------------------------------------

def _error_line(stderr: str) -> str:
    """The error a user sees: exactly one line, the last one, and no traceback before it."""
    lines = stderr.strip().splitlines()
    errors = [line for line in lines if "error:" in line]
    assert len(errors) == 1 and lines[-1] == errors[0] and "Traceback" not in stderr, stderr
    return errors[0]


def test_deploy_help_is_plain_text(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["deploy", "--help"]) == 0
    out = capsys.readouterr().out
    assert "`" not in out and "local" in out and "SuperLink" in out


def test_node_keys_are_created_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The private key is 0600 from its first byte: never written 0644 and chmod-ed afterwards."""
    import os
    import stat

    def no_chmod(*args, **kwargs):
        raise AssertionError("a key file was created with the wrong mode and fixed afterwards")

    monkeypatch.setattr(os, "chmod", no_chmod)   # the os module every writer uses
    old = os.umask(0o022)
    try:
        private, public = make_node_key(tmp_path / "node")
        files = make_tls(tmp_path / "tls")
    finally:
        os.umask(old)
    assert stat.S_IMODE(private.stat().st_mode) == 0o600 and stat.S_IMODE(files.server_key.stat().st_mode) == 0o600
    assert stat.S_IMODE(public.stat().st_mode) == 0o644
    make_tls(tmp_path / "tls")   # a second call replaces the files, still 0600
    assert stat.S_IMODE(files.server_key.stat().st_mode) == 0o600


@pytest.mark.parametrize("flags, message", [
    (["--min-nodes", "0"], "--min-nodes: must be at least 1, got 0"),
    (["--round-timeout", "-1"], "--round-timeout: must be >= 0 (0: derived from the first reply), got -1.0"),
    (["--device", "cuda"], "--device cuda: no CUDA device is available (use --device cpu or auto)"),
    (["--model", "./no/such/model"], "--model ./no/such/model: no such file or folder"),
    (["--resume"], "holds no fedit run to resume"),
])
def test_deploy_local_validates_before_starting_anything(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                         flags: list[str], message: str) -> None:
    if flags == ["--device", "cuda"] and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    tiny = Path(__file__).resolve().parents[1] / "fixtures" / "tiny"
    out = tmp_path / "run"
    code = main(["deploy", "local", "--out", str(out), "--model", "tiny-random", "--partition", "files",
                 "--clients-per-round", "1", "--node-data", str(tiny / "client_0.json"), *flags])
    assert code == 2
    assert message in _error_line(capsys.readouterr().err)
    assert list(tmp_path.iterdir()) == []          # no run directory, no work folder, no process


def test_repeated_node_data_flags_add_files(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from fedit.runners.flower import local

    seen = {}

    def fake_deploy(cfg, out, opts, echo=None):
        seen["nodes"] = [p.name for p in opts.node_data]
        raise local.FeditError("stop here")

    monkeypatch.setattr(local, "deploy_local", fake_deploy)
    tiny = Path(__file__).resolve().parents[1] / "fixtures" / "tiny"
    args = ["deploy", "local", "--out", str(tmp_path / "run"), "--model", "tiny-random", "--partition", "files",
            "--clients-per-round", "2"]
    assert main([*args, "--node-data", str(tiny / "client_0.json"), "--node-data", str(tiny / "client_1.json"),
                 str(tiny / "client_2.json")]) == 2
    assert seen["nodes"] == ["client_0.json", "client_1.json", "client_2.json"]
    capsys.readouterr()
    monkeypatch.undo()
    assert main([*args, "--clients-per-round", "3", "--node-data", str(tiny / "client_0.json"),
                 "--node-data", str(tiny / "client_1.json")]) == 2
    assert _error_line(capsys.readouterr().err).endswith(
        "--clients-per-round: 3 is more than the 2 clients (the --node-data list)")


def _sleeper() -> "subprocess.Popen":
    import subprocess
    import sys

    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True)


def test_leftovers_are_stopped_only_when_proved_ours(tmp_path: Path) -> None:
    """A registry entry is stopped only if pid, create time and command line all match."""
    import json

    import psutil

    from fedit.runners.flower.processes import ProcessGroup, stop_leftovers

    ours, reused, other_cmd = _sleeper(), _sleeper(), _sleeper()
    try:
        registry = tmp_path / "pids.json"
        group = ProcessGroup(registry)
        for name, proc in (("superlink", ours), ("supernode-0", reused), ("supernode-1", other_cmd)):
            group.adopt(name, proc)
        data = json.loads(registry.read_text())
        assert [p["pid"] for p in data["processes"]] == [ours.pid, reused.pid, other_cmd.pid]
        data["processes"][1]["create_time"] -= 5.0            # the PID now belongs to another process
        data["processes"][2]["cmdline"] = ["flower-superlink"]  # ... or runs another command
        registry.write_text(json.dumps(data))
        stopped = stop_leftovers(registry)
        assert stopped == [ours.pid]
        assert ours.wait(10) is not None
        assert psutil.pid_exists(reused.pid) and reused.poll() is None and other_cmd.poll() is None
        assert stop_leftovers(registry) == []                   # nothing more to stop, ever
    finally:
        for proc in (ours, reused, other_cmd):
            proc.kill()
            proc.wait()


def test_a_process_caught_in_its_exec_is_recorded_with_its_real_command_line(tmp_path: Path, monkeypatch) -> None:
    """Regression (CI under load): right after its start a process can show an empty command
    line (its exec not done); a registry that recorded [] never matched it again, and `fedit
    deploy stop` left that SuperLink running."""
    import json

    import psutil

    from fedit.runners.flower.processes import ProcessGroup, stop_leftovers

    real, calls = psutil.Process.cmdline, {"n": 0}

    def mid_exec(self):
        calls["n"] += 1
        return [] if calls["n"] <= 2 else real(self)

    proc = _sleeper()
    try:
        monkeypatch.setattr(psutil.Process, "cmdline", mid_exec)
        registry = tmp_path / "pids.json"
        ProcessGroup(registry).adopt("superlink", proc)
        monkeypatch.undo()
        assert json.loads(registry.read_text())["processes"][0]["cmdline"] == real(psutil.Process(proc.pid))
        assert stop_leftovers(registry) == [proc.pid] and proc.wait(10) is not None
    finally:
        proc.kill()
        proc.wait()


def test_next_deploy_local_stops_what_a_killed_one_left(tmp_path: Path) -> None:
    from fedit.runners.flower.local import LocalFederation, LocalOptions, registry_file
    from fedit.runners.flower.processes import ProcessGroup

    fed = LocalFederation(load_config("cpu-demo").override({"model": "tiny-random", "clients_per_round": 1}),
                          tmp_path / "run",
                          LocalOptions(node_data=[tmp_path / "a.json"]))
    leftover, stranger = _sleeper(), _sleeper()
    try:
        ProcessGroup(registry_file(fed.work)).adopt("superlink", leftover)   # what the killed run recorded
        fed._prepare()
        assert leftover.wait(10) is not None and stranger.poll() is None
    finally:
        for proc in (leftover, stranger):
            proc.kill()
            proc.wait()


def test_sigterm_to_deploy_superlink_stops_the_superlink(tmp_path: Path) -> None:
    """`fedit deploy superlink` runs flower-superlink and the Fleet front in sessions of their own:
    SIGTERM to fedit must stop both (Python's default SIGTERM would end fedit and leave them running)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import psutil

    from fedit.runners.flower.processes import free_port

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-m", "fedit.cli", "deploy", "superlink", "--insecure",
                             "--host", "127.0.0.1", "--port", str(free_port()), "--control-port", str(free_port()),
                             "--flwr-home", str(tmp_path)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    started: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 60
        while len(started) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
            started = psutil.Process(proc.pid).children(recursive=False)
        commands = sorted(" ".join(p.cmdline()) for p in started)
        assert len(started) == 2, commands
        assert "fedit.runners.flower.front" in commands[0] and "flower-superlink" in commands[1]
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 130
        gone, alive_ = psutil.wait_procs(started, timeout=20)
        assert not alive_, f"still running after SIGTERM to fedit: {[p.pid for p in alive_]}"
    finally:
        proc.kill()
        proc.wait()
        for child in started:   # the very processes seen above, never by name
            if child.is_running():
                child.kill()


class ScriptedGrid:
    """A Flower Grid whose nodes answer from scripts, no process started: the roll call with a
    record count, each train message with the update ``scripts[node](job)``."""

    def __init__(self, scripts: dict, counts: dict) -> None:
        self.scripts, self.counts, self.pushed = scripts, counts, {}

    def get_node_ids(self) -> list[int]:
        return list(self.scripts)

    def push_messages(self, msgs):
        ids = [f"m{len(self.pushed) + i}" for i in range(len(msgs))]
        self.pushed.update(zip(ids, msgs))
        return ids

    def pull_messages(self, ids):
        from flwr.app import ConfigRecord, MessageType

        replies = []
        for mid in ids:
            msg = self.pushed.pop(mid)
            node = msg.metadata.dst_node_id
            if msg.metadata.message_type == MessageType.QUERY:
                content = RecordDict({wire.CONFIG: ConfigRecord({"client-index": -1, "error": "",
                                                                 "num-examples": self.counts[node]})})
            else:
                content = wire.update_content(self.scripts[node](wire.job_from_message(msg)))
            replies.append(SimpleNamespace(content=content, has_error=lambda: False,
                                           metadata=SimpleNamespace(reply_to_message_id=mid, src_node_id=node)))
        return replies


def test_server_app_caps_counts_and_drops_bad_replies_of_dishonest_nodes(tmp_path, monkeypatch):
    """Issue 9, as found with `deploy local --tls --auth`: after reporting 16 records at the roll
    call, one node claims 10**12 examples, one sends train_loss = [1.0, 2.0], one a float64 update of
    1e300. The ServerApp finishes (no traceback), the claim weighs 16, the other two are dropped."""
    import json

    from flwr.supercore.task_identity import TaskIdentity
    from safetensors.torch import load_file

    from fedit.runners.flower.server_app import FlowerServer, ServerSettings

    for name in ("_run_id", "_node_id", "_task_id"):   # Messages are made outside a Flower run here
        monkeypatch.setattr(TaskIdentity, name, 1)

    def reply(delta=0.0, n=16, dtype=torch.float32, **metrics):
        return lambda job: ClientUpdate(job.client_id, {k: (v + delta).to(dtype) for k, v in job.state.items()}, n,
                                        {"train_loss": 1.0, **metrics})

    scripts = {11: reply(4.0, n=10**12), 12: reply(), 13: reply(train_loss=[1.0, 2.0]),
               14: reply(1e300, dtype=torch.float64)}
    test_data = str(Path(__file__).parents[1] / "fixtures" / "tiny_test.jsonl")
    cfg = load_config("cpu-demo").override(dict(model="tiny-random", precision="fp32", partition="files",
                                                test_data=test_data, rounds=1, clients_per_round=4, max_len=64))
    out = tmp_path / "run"
    FlowerServer(ScriptedGrid(scripts, {n: 16 for n in scripts}),
                 ServerSettings(cfg, out, False, DeployConfig(min_nodes=2, node_timeout=5))).run()
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    clients = {r["client"]: r for r in records if r["type"] == "client"}
    assert (clients[0]["num_examples"], clients[0]["claimed_examples"]) == (16, 10**12)
    assert clients[0]["update_norm"] > clients[1]["update_norm"] == 0.0
    last = records[-1]
    assert last["dropped"][0] == "client 2: metric 'train_loss' is [1.0, 2.0], expected a finite number"
    assert last["dropped"][1].startswith("client 3: adapter update ")
    assert last["dropped"][1].endswith(": contains NaN or infinite values (as float32)") and len(last["dropped"]) == 2
    assert last["bytes_up"] > 0 and last["bytes_down"] > 0 and last["clients"] == [0, 1]
    final = load_file(str(out / "final" / "adapter_model.safetensors"))
    b = next(k for k in final if "lora_B" in k)       # B starts at 0: (16 * 4 + 16 * 0) / 32
    assert torch.allclose(final[b], torch.full_like(final[b], 2.0))
    assert json.loads((out / "nodes.json").read_text())[0]["num_examples"] == 16


def test_deploy_refuses_simulated_attacks_before_starting_anything(tmp_path: Path, capsys) -> None:
    node = str(Path(__file__).parents[1] / "fixtures" / "tiny" / "client_0.json")
    code = main(["deploy", "local", "--node-data", node, "--out", str(tmp_path / "run"), "--model", "tiny-random",
                 "--clients-per-round", "1", "--attack", "scale"])
    assert code == 2 and not (tmp_path / "run").exists() and not (tmp_path / "run.flower" / "pids.json").exists()
    assert "--attack scale: attacks are simulated by `fedit run` only" in capsys.readouterr().err
