"""fedit on a real (loopback) Flower federation: parity with the simulation, TLS + node
authentication, a node with a malformed file, an unregistered node, no process left behind.

Each test starts a SuperLink and SuperNodes; a ClientApp process per message imports torch,
transformers and peft (~7 s on 2 CPU cores), so a round takes ~30 s here: both are ``slow``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import torch
from safetensors.torch import load_file

pytest.importorskip("flwr")

from fedit.config import load_config  # noqa: E402
from fedit.config import DeployConfig  # noqa: E402
from fedit.runners.flower.local import LocalOptions, deploy_local  # noqa: E402
from fedit.runners.flower.processes import alive  # noqa: E402

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
TINY = FIXTURES / "tiny"
TEST_DATA = FIXTURES / "tiny_test.jsonl"
FEDIT = [sys.executable, "-m", "fedit.cli"]
# fp32: parity with the simulation is exact only without bf16 autocast (on a CPU with AVX512-BF16/AMX
# "auto" trains in bf16, whose rounding differs between one process of 2 threads and 1-thread nodes)
JOB = ["--model", "tiny-random", "--precision", "fp32", "--test-data", str(TEST_DATA), "--partition", "files", "--rounds", "2",
       "--local-steps", "3", "--batch-size", "4", "--micro-batch-size", "2", "--seed", "7"]


def _assert_all_stopped(work_dir: Path) -> None:
    record = json.loads((work_dir / "pids.json").read_text())
    assert len(record["pids"]) >= 4, record  # SuperLink, SuperNodes, flwr run, their children
    assert alive(record["pids"]) == []


def _run(args: list[str], **env_extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "FEDIT_DEBUG": "1", **env_extra}
    done = subprocess.run(FEDIT + args, capture_output=True, text=True, env=env, timeout=400)
    assert done.returncode == 0, done.stderr[-4000:]
    return done


@pytest.mark.slow
def test_deploy_local_matches_simulation(tmp_path: Path) -> None:
    """`fedit deploy local` and `fedit run --partition files` over the same files: same adapter."""
    sim, dep = tmp_path / "sim", tmp_path / "dep"
    _run(["run", "--data", str(TINY), "--clients-per-round", "2", "--out", str(sim), *JOB])
    nodes = [str(p) for p in sorted(TINY.glob("client_*.json"))]
    _run(["deploy", "local", "--node-data", *nodes, "--clients-per-round", "2", "--out", str(dep), *JOB])

    a = load_file(str(sim / "final" / "adapter_model.safetensors"))
    b = load_file(str(dep / "final" / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-6), key
    assert not torch.equal(a[next(iter(a))], torch.zeros_like(a[next(iter(a))]))
    # the same run directory layout as fedit run
    for name in ("config.yaml", "metrics.jsonl", "final/adapter_config.json"):
        assert (dep / name).is_file(), name
    assert sorted(p.name for p in (dep / "checkpoints").iterdir()) == ["round_0001", "round_0002"]
    rounds = [json.loads(line) for line in (dep / "metrics.jsonl").read_text().splitlines()]
    sim_rounds = [json.loads(line) for line in (sim / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in rounds if r["type"] == "round"][-1]
    sim_last = [r for r in sim_rounds if r["type"] == "round"][-1]
    assert last["clients"] == sim_last["clients"]
    assert last["eval"]["overall"]["loss"] == pytest.approx(sim_last["eval"]["overall"]["loss"], abs=1e-5)
    _assert_all_stopped(tmp_path / "dep.flower")


@pytest.mark.slow
def test_tls_auth_faulty_and_unregistered_nodes(tmp_path: Path) -> None:
    """TLS + node auth, 2 good nodes, one with a malformed file, one whose key is not registered."""
    bad = tmp_path / "bad.json"
    bad.write_text('[{"instruction": "x", "response": ')
    cfg = load_config("cpu-demo").override(dict(
        model="tiny-random", test_data=str(TEST_DATA), partition="files", rounds=2, clients_per_round=3,
        local_steps=2, batch_size=4, micro_batch_size=2))
    out = tmp_path / "run"
    lines: list[str] = []
    opts = LocalOptions(node_data=[TINY / "client_0.json", TINY / "client_1.json", bad], tls=True, auth=True,
                        deploy=DeployConfig(min_nodes=2), unregistered_nodes=[TINY / "client_2.json"])
    result = deploy_local(cfg, out, opts, echo=lines.append)

    assert result.unregistered_refused is True
    log = (result.work_dir / "logs" / "unregistered-0.log").read_text()
    assert "Failed to activate SuperNode" in log
    nodes = json.loads((out / "nodes.json").read_text())
    assert [n["client"] for n in nodes] == [0, 1, 2]            # the stranger never joined
    assert "invalid JSON" in nodes[2]["error"]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rounds = [r for r in records if r["type"] == "round" and r["round"] > 0]
    assert [r["round"] for r in rounds] == [1, 2]
    for r in rounds:  # the malformed node cost only its own update
        assert r["clients"] == [0, 1]
        assert len(r["dropped"]) == 1 and str(bad) in r["dropped"][0] and "invalid JSON" in r["dropped"][0]
    assert any("dropping update: client 2" in line for line in lines)   # one line in the server log
    assert (out / "final" / "adapter_model.safetensors").is_file()
    assert all(line.count("\n") == 0 for line in lines)
    _assert_all_stopped(result.work_dir)


def _kill_node_when_training(data_path: Path, stop: "threading.Event", killed: list[int]) -> None:
    """Watch for the SuperNode serving ``data_path``; when its second ClientApp process (the first
    is the roll call, the second the train message) has started, SIGKILL the node and that app."""
    node, seen = None, []
    while not stop.is_set() and not killed:
        for proc in psutil.process_iter(["pid", "cmdline"]):
            cmd = " ".join(proc.info["cmdline"] or [])
            if node is None and "flower-supernode" in cmd and str(data_path) in cmd:
                node = proc
                port = cmd.split("--port ", 1)[1].split()[0]
            elif node is not None and "flwr-clientapp" in cmd and f"127.0.0.1:{port} " in cmd + " " \
                    and proc.pid not in seen:
                seen.append(proc.pid)
                if len(seen) == 2:
                    time.sleep(1.0)                      # it is loading the model: mid-round
                    for victim in (proc, node):
                        try:
                            victim.kill()
                        except psutil.Error:
                            pass
                    killed.append(node.pid)
        time.sleep(0.2)


@pytest.mark.slow
def test_node_dying_mid_round_costs_only_its_update(tmp_path: Path) -> None:
    """A SuperNode killed while it trains: the round times out on it and aggregates the others."""
    doomed = tmp_path / "doomed.json"
    doomed.write_text((TINY / "client_2.json").read_text())
    cfg = load_config("cpu-demo").override(dict(
        model="tiny-random", test_data=None, partition="files", rounds=1, clients_per_round=3,
        local_steps=2, batch_size=4, micro_batch_size=2))
    out = tmp_path / "run"
    stop, killed = threading.Event(), []
    watcher = threading.Thread(target=_kill_node_when_training, args=(doomed, stop, killed), daemon=True)
    watcher.start()
    opts = LocalOptions(node_data=[TINY / "client_0.json", TINY / "client_1.json", doomed],
                        deploy=DeployConfig(min_nodes=2, round_timeout=60))
    try:
        result = deploy_local(cfg, out, opts, echo=lambda line: None)
    finally:
        stop.set()
        watcher.join(5)
    assert killed, "the doomed node never started training"
    rounds = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in rounds if r["type"] == "round"][-1]
    assert last["round"] == 1 and last["clients"] == [0, 1]
    assert len(last["dropped"]) == 1 and last["dropped"][0].startswith("client 2")
    assert (out / "final" / "adapter_model.safetensors").is_file()
    _assert_all_stopped(result.work_dir)


def _flower_processes(flwr_home: Path) -> list[psutil.Process]:
    """Processes whose environment names this deployment's FLWR_HOME (ours, whoever started them)."""
    found = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if proc.environ().get("FLWR_HOME") == str(flwr_home):
                found.append(proc)
        except psutil.Error:
            pass
    return found


@pytest.mark.slow
def test_kill_9_of_deploy_local_leaves_a_record_that_deploy_stop_cleans_up(tmp_path: Path) -> None:
    """`kill -9` of `fedit deploy local`: its SuperLink and SuperNodes keep running, but pids.json
    already lists them, and `fedit deploy stop` stops every one of them (and nothing else)."""
    out, work = tmp_path / "dep", tmp_path / "dep.flower"
    nodes = [str(p) for p in sorted(TINY.glob("client_*.json"))]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    deploy = subprocess.Popen(FEDIT + ["deploy", "local", "--node-data", *nodes, "--clients-per-round", "2",
                                       "--out", str(out), *JOB, "--rounds", "50"],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    try:
        names: set[str] = set()
        deadline = time.monotonic() + 240
        while not {"superlink", "supernode-0", "supernode-1", "supernode-2", "flwr-run"} <= names:
            assert time.monotonic() < deadline and deploy.poll() is None, "deploy local did not start"
            time.sleep(0.5)
            try:
                names = {p["name"] for p in json.loads((work / "pids.json").read_text())["processes"]}
            except (OSError, ValueError, KeyError):
                pass
        os.kill(deploy.pid, 9)
        deploy.wait(10)
        record = json.loads((work / "pids.json").read_text())
        assert alive([p["pid"] for p in record["processes"]])           # left running: the bug being fixed
        done = subprocess.run(FEDIT + ["deploy", "stop", "--out", str(out)], env=env, capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        stopped = json.loads(done.stdout)["stopped"]
        assert {p["pid"] for p in record["processes"] if p["name"] == "superlink"} <= set(stopped)
        assert alive([p["pid"] for p in json.loads((work / "pids.json").read_text())["processes"]]) == []
        assert _flower_processes(work / "flwr-home") == []
        assert bystander.poll() is None                                   # nothing else was touched
    finally:
        for proc in (deploy, bystander):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for proc in _flower_processes(work / "flwr-home"):               # a failed test must not leak
            proc.kill()


@pytest.mark.slow
def test_deploy_local_compressed_with_dishonest_nodes(tmp_path: Path) -> None:
    """Real loopback, --compress int8, two nodes altering only their own reply (a helper on
    PYTHONPATH, tests/integration/dishonest): client 0 sends train_loss = [1.0, 2.0] (dropped,
    no traceback), client 1 claims 10**12 examples (weighs its 15 records). Every update's norm
    is logged; the bytes counted up are the int8 replies'."""
    out = tmp_path / "dep"
    nodes = [str(p) for p in sorted(TINY.glob("client_*.json"))]
    helper = Path(__file__).parent / "dishonest"
    _run(["deploy", "local", "--node-data", *nodes, "--out", str(out), "--model", "tiny-random",
          "--test-data", str(TEST_DATA), "--partition", "files", "--rounds", "1", "--clients-per-round", "3",
          "--local-steps", "1", "--batch-size", "2", "--micro-batch-size", "2", "--compress", "int8"],
         PYTHONPATH=f"{helper}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", FEDIT_TEST_DISHONEST="0:metric,1:count")
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    last = records[-1]
    assert last["round"] == 1 and last["clients"] == [1, 2]
    assert last["dropped"] == ["client 0: metric 'train_loss' is [1.0, 2.0], expected a finite number"]
    clients = {r["client"]: r for r in records if r["type"] == "client"}
    assert (clients[1]["num_examples"], clients[1]["claimed_examples"]) == (15, 10**12)
    assert clients[2]["num_examples"] == 15 and "claimed_examples" not in clients[2]
    assert all(clients[c]["update_norm"] > 0 for c in (1, 2)) and "train_loss" in clients[2]["metrics"]
    assert last["bytes_down"] > 1.6 * last["bytes_up"] > 0         # float32 down, int8 up
    assert json.loads((out / "communication.json").read_text())["bytes_total"] == last["bytes_down"] + last["bytes_up"]
    _assert_all_stopped(tmp_path / "dep.flower")
