"""Faults a Flower federation meets, checked without starting a process: a node that never answers
(no silent stall), a node the SuperLink no longer lists, the roll call's colliding or out-of-range
client-index, and the lower items of issue 15 (a dominant outlier, huge int metrics, a readable
node key, Krum before start-up, the checkpoint warning's text)."""

from __future__ import annotations

import json
import logging
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("flwr")

from flwr.app import ConfigRecord, Message, RecordDict  # noqa: E402

from fedit.client.job import ClientJob, ClientUpdate  # noqa: E402
from fedit.config import Config, DeployConfig  # noqa: E402
from fedit.errors import ConfigError, FeditError, UpdateError  # noqa: E402
from fedit.runners.federation import ClientFailure, Federation  # noqa: E402
from fedit.runners.flower import exchange as ex  # noqa: E402
from fedit.runners.flower import wire  # noqa: E402
from fedit.runners.flower.roll_call import assign_indices  # noqa: E402
from fedit.runners.flower.server_app import FlowerClients, FlowerServer, ServerSettings  # noqa: E402
from fedit.runners.rundir import RunDir  # noqa: E402
from fedit.server import build_strategy  # noqa: E402
from fedit.server.checks import check_metrics  # noqa: E402
from fedit.server.trust import dominant_outliers  # noqa: E402

STATE = {"m.lora_A.weight": torch.zeros(1, 2)}


@pytest.fixture(autouse=True)
def task_identity(monkeypatch):
    """Messages take their run and sender from the process's task identity (set by Flower's runtime)."""
    from flwr.supercore.task_identity import TaskIdentity

    for name, value in (("_run_id", 1), ("_node_id", 0), ("_task_id", 0)):
        monkeypatch.setattr(TaskIdentity, name, value)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


class ScriptedGrid:
    """Nodes answer ``answer(node, msg)`` after ``delay[node]`` s of the clock (None: never)."""

    def __init__(self, nodes, answer, delay=None, clock=None, listed=None):
        self.nodes, self.answer, self.delay, self.clock = list(nodes), answer, delay or {}, clock or Clock()
        self.listed = list(nodes) if listed is None else listed
        self.pending, self.sent = {}, []

    def get_node_ids(self):
        return list(self.listed)

    def push_messages(self, msgs):
        ids = []
        for msg in msgs:
            mid = uuid.uuid4().hex
            dst = msg.metadata.dst_node_id
            self.sent.append(dst)
            reply = SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=mid), has_error=lambda: False,
                                    content=self.answer(dst, msg))
            delay = self.delay.get(dst, 0.0)
            self.pending[mid] = (None if delay is None else self.clock.now + delay, reply)
            ids.append(mid)
        return ids

    def pull_messages(self, ids):
        out = []
        for mid in ids:
            due, reply = self.pending.get(mid, (None, None))
            if due is not None and due <= self.clock.now:
                out.append(self.pending.pop(mid)[1])
        return out


def messages(nodes):
    return [SimpleNamespace(metadata=SimpleNamespace(dst_node_id=n)) for n in nodes]


# --- no silent stall ---------------------------------------------------------------------------------

def test_without_a_round_timeout_a_silent_node_is_given_up_after_the_derived_deadline(caplog):
    """Before: --round-timeout 0 waited forever, with no line. Now the first reply (at 10 s) sets the
    deadline: max(300, 3 x 10) s more; a line every 60 s names the node awaited."""
    clock = Clock()
    grid = ScriptedGrid([1, 2, 3], lambda n, m: n, delay={1: 10.0, 2: 20.0, 3: None}, clock=clock)
    with caplog.at_level(logging.INFO, logger="fedit.runners.flower.exchange"):
        replies = ex.exchange(grid, messages([1, 2, 3]), ["a", "b", "c"], None, what="round 1 updates",
                              name=lambda k: f"client {k}", clock=clock, sleep=clock.sleep)
    assert sorted(replies) == ["a", "b"]
    assert clock.now == pytest.approx(310.0, abs=0.6)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "waiting 60 s for round 1 updates of client c (2 of 3 answered; 250 s left)"
    assert len([x for x in lines if x.startswith("waiting")]) == 5
    assert lines[-1] == "gave up after 310 s waiting for round 1 updates of client c"


def test_a_fixed_round_timeout_still_holds():
    clock = Clock()
    grid = ScriptedGrid([1, 2], lambda n, m: n, delay={1: 1.0, 2: None}, clock=clock)
    replies = ex.exchange(grid, messages([1, 2]), [1, 2], 5.0, clock=clock, sleep=clock.sleep)
    assert list(replies) == [1] and clock.now == pytest.approx(5.0, abs=0.6)


def test_flower_clients_skip_unlisted_nodes_and_drop_silent_ones(monkeypatch):
    monkeypatch.setattr(ex, "AUTO_FLOOR", 0.2)
    update = ClientUpdate(0, STATE, 5, {"train_loss": 1.0})
    grid = ScriptedGrid([10, 11, 12], lambda n, m: wire.update_content(update), delay={11: None}, listed=[10, 11])
    replies = FlowerClients(grid, {0: 10, 1: 11, 2: 12}, 0.0).train([ClientJob(c, 1, STATE, {}) for c in range(3)])
    assert isinstance(replies[0], ClientUpdate) and grid.sent == [10, 11]           # node 12 not contacted
    assert replies[1] == ClientFailure(1, "client 1 (node 11): no reply")
    assert replies[2] == ClientFailure(2, "client 2 (node 12): not connected (the SuperLink no longer lists it)")


# --- roll call ---------------------------------------------------------------------------------------

def test_colliding_and_out_of_range_indices_leave_out_only_those_nodes():
    clients, notes = assign_indices({102: 1, 101: 1, 103: 0, 104: 9}, [105])
    assert clients == {0: 103, 1: 101, 2: 105}
    assert notes == ["node 102 also claims client-index=1 of node 101: it takes no part (the lowest node id keeps "
                     "an index claimed twice)",
                     "node 104 claims client-index=9, but only 4 node(s) take part (indices 0..3): it takes no part"]
    assert assign_indices({1: 0, 2: 1}, [3]) == ({0: 1, 1: 2, 2: 3}, [])
    clients, notes = assign_indices({5: 0, 6: 1, 7: 0, 8: 0}, [])   # deploy local: every node pinned
    assert clients == {0: 5, 1: 6} and notes[0].startswith("nodes 7, 8 also claim client-index=0 of node 5: they")


def test_the_roll_call_goes_on_without_the_node_that_claims_another_ones_index(tmp_path, caplog):
    """Before: 'nodes 7 and 8 both set client-index=0' stopped the run at start, naming both."""
    claims = {6: -1, 7: 0, 8: 0, 9: 1}

    def answer(node, msg):
        return RecordDict({wire.CONFIG: ConfigRecord({"client-index": claims[node], "num-examples": 15,
                                                      "error": "", wire.LORA_RANK_KEY: 0, wire.LORA_TARGETS_KEY: ""})})

    cfg = Config().override({"model": "tiny-random", "num_clients": 3, "clients_per_round": 2})
    out = tmp_path / "run"
    out.mkdir()
    server = FlowerServer(ScriptedGrid(list(claims), answer), ServerSettings(cfg, out, False, DeployConfig(min_nodes=2)))
    nodes, sizes = server._roll_call()
    assert nodes == {0: 7, 1: 9, 2: 6} and sizes == {0: 15, 1: 15, 2: 15}
    assert [r.getMessage() for r in caplog.records if "roll call" in r.getMessage()] == [
        "roll call: node 8 also claims client-index=0 of node 7: it takes no part (the lowest node id keeps an "
        "index claimed twice)"]
    assert [r["node_id"] for r in json.loads((out / "nodes.json").read_text())] == [7, 9, 6]
    server.s.deploy = DeployConfig(min_nodes=4)
    with pytest.raises(FeditError, match="only 3 node"):
        server._roll_call()


# --- the lower items ---------------------------------------------------------------------------------

def test_a_dominant_claim_with_an_outlying_norm_is_warned_about(tmp_path, caplog):
    lines = dominant_outliers({0: 10, 1: 10, 2: 10**12}, {0: 10, 1: 10, 2: 20}, {0: 1.0, 1: 1.2, 2: 130.0})
    assert lines == ["client 2 claims 1000000000000 examples and weighs 50% of the round, and its update's norm "
                     "is 118x the others' median: a lower --max-client-share or --robust bounds it"]
    assert dominant_outliers({0: 10, 1: 10, 2: 30}, {0: 10, 1: 10, 2: 20}, {0: 1.0, 1: 1.2, 2: 1.1}) == []
    assert dominant_outliers({0: 10, 1: 10, 2: 10}, {0: 10, 1: 10, 2: 10}, {0: 1.0, 1: 1.2, 2: 130.0}) == []

    def answer(job):
        liar = job.client_id == 2
        return ClientUpdate(job.client_id, {"a": torch.full((2,), 100.0 if liar else 0.5)}, 10**12 if liar else 10,
                            {"train_loss": 1.0})

    class Scripted:
        def train(self, jobs):
            return [answer(j) for j in jobs]

        def state_dict(self):
            return {}

        def load_state_dict(self, state):
            pass

    cfg = Config().override({"num_clients": 3, "clients_per_round": 3, "rounds": 1})
    run_dir = RunDir(tmp_path / "run")
    fed = Federation(cfg, build_strategy(cfg, 3), Scripted(), run_dir, known_examples={0: 10, 1: 10, 2: 10**12})
    fed.start({"a": torch.zeros(2)}, run_dir.prepare(cfg, resume=False))
    fed.run_round(1)
    assert any(r.getMessage().startswith("round 1: client 2 claims 1000000000000 examples and weighs 50%")
               for r in caplog.records)


def test_int_metrics_are_bounded():
    check_metrics(0, {"tokens": 2**53, "train_loss": 1e308})
    with pytest.raises(UpdateError, match=r"^client 3: metric 'train_loss' is 3070000000000000000, an int beyond 2\*\*53$"):
        check_metrics(3, {"train_loss": 3_070_000_000_000_000_000})


def test_a_node_key_readable_by_others_is_refused(tmp_path):
    from fedit.runners.flower.launch import supernode_command
    from fedit.runners.flower.security import make_node_key

    private, _ = make_node_key(tmp_path / "node")
    argv = supernode_command("x:1", tmp_path / "d.json", client_index=0, port=1, root_cert=tmp_path / "ca",
                             private_key=private)
    assert str(private) in argv
    private.chmod(0o644)
    with pytest.raises(FeditError, match=rf"^{private}: a node's private key must be readable by its owner only "
                                         rf"\(mode 0644\); run: chmod 600 {private}$"):
        supernode_command("x:1", tmp_path / "d.json", client_index=0, port=1, root_cert=tmp_path / "ca",
                          private_key=private)


def test_krum_round_size_is_refused_before_a_deployment_starts(tmp_path):
    from fedit.runners.flower.local import LocalFederation, LocalOptions

    cfg = Config().override({"model": "tiny-random", "partition": "files", "clients_per_round": 3,
                             "robust": "krum", "krum_f": 1})
    nodes = [tmp_path / f"c{i}.json" for i in range(3)]
    opts = LocalOptions(node_data=nodes)
    with pytest.raises(ConfigError, match=r"--krum-f 1: --robust krum needs at least 2f\+3 = 5 clients per round, "
                                          "the run samples 3"):
        LocalFederation(cfg, tmp_path / "out", opts)._check()


def test_a_foreign_checkpoint_is_named_without_torchs_unsafe_advice(tmp_path):
    import fractions

    from fedit.runners.checkpoint import Checkpoint, load_checkpoint, save_checkpoint

    path = save_checkpoint(tmp_path, Checkpoint(1, {"a": torch.zeros(2)}, {}, {}), keep=2)
    torch.save({"round": 1, "strategy": fractions.Fraction(1, 3)}, path / "state.pt")
    with pytest.raises(FeditError) as err:
        load_checkpoint(path)
    text = str(err.value)
    assert "weights_only" not in text and "trust the source" not in text
    assert text.endswith("cannot read checkpoint (UnpicklingError: it holds an object of type fractions.Fraction, "
                         "which fedit never writes (a checkpoint holds tensors and plain values only))")
