"""Secure aggregation under faults, with Flower's own SecAgg+ (its mod on every node, its workflow on
the server) run in process over a stand-in Grid whose nodes can lie or die at a chosen stage:
a member's bad clear-text metric, a node lost during set-up, key sharing or training, a node that is
gone by the next round, a halted round started over, and the share limit inside the secure sum."""

from __future__ import annotations

import copy
import json
import math
import uuid

import pytest
import torch

pytest.importorskip("flwr")

from flwr.app import Context, Error, Message, RecordDict  # noqa: E402
from flwr.clientapp import ClientApp  # noqa: E402

from fedit.client.job import ClientJob, ClientUpdate, PooledUpdate  # noqa: E402
from fedit.config import Config  # noqa: E402
from fedit.privacy import secagg  # noqa: E402
from fedit.privacy.secagg_transport import SimulatedSecureAggregation  # noqa: E402
from fedit.runners.federation import ClientFailure, Federation  # noqa: E402
from fedit.runners.flower import wire  # noqa: E402
from fedit.runners.flower.secagg import SecureFlowerClients, secure_aggregation_mod  # noqa: E402
from fedit.runners.rundir import RunDir  # noqa: E402
from fedit.server import build_strategy  # noqa: E402

GLOBAL = {"m.lora_A.weight": torch.full((2, 3), 0.5), "m.lora_B.weight": torch.zeros(3, 2)}
STAGES = ("setup", "share_keys", "collect_masked_vectors", "unmask")


@pytest.fixture(autouse=True)
def task_identity(monkeypatch):
    from flwr.supercore.task_identity import TaskIdentity

    for name, value in (("_run_id", 1), ("_node_id", 0), ("_task_id", 0)):
        monkeypatch.setattr(TaskIdentity, name, value)


def node(cid: int) -> int:
    return 10**18 + 7 * cid


def delta(cid: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(cid)
    return {k: torch.randn(v.shape, generator=gen) * 1e-3 for k, v in GLOBAL.items()}


def node_app(claims: dict[int, int], metrics: dict[int, dict] | None = None) -> ClientApp:
    """fedit's SecAgg+ mod around a train handler that 'trains' to global + delta(client)."""
    app = ClientApp(mods=[secure_aggregation_mod])

    @app.train()
    def train(msg, context):
        job = wire.job_from_message(msg)
        state = {k: job.state[k] + delta(job.client_id)[k] for k in job.state}
        reported = {"train_loss": 1.0 + job.client_id, **(metrics or {}).get(job.client_id, {})}
        return Message(wire.update_content(ClientUpdate(job.client_id, state, claims[job.client_id], reported)),
                       reply_to=msg)

    return app


class FaultyGrid:
    """A stand-in Grid: each node answers at once through its ClientApp, until the stage it dies at
    (``dies``: {node: SecAgg+ stage}); from then on the SuperLink answers for it with an error reply
    (``silent``: no reply at all) and no longer lists it."""

    def __init__(self, app: ClientApp, clients: int, dies: dict[int, str] | None = None, silent: bool = False):
        self.app, self.pending, self.dies, self.silent = app, {}, dict(dies or {}), silent
        self.contexts = {node(c): Context(1, node(c), {}, RecordDict(), {}) for c in range(clients)}
        self.dead: set[int] = set()

    def push_messages(self, messages):
        ids = []
        for msg in messages:
            mid = uuid.uuid4().hex
            msg.metadata.__dict__["_message_id"] = mid
            msg.content = copy.deepcopy(msg.content)
            dst = msg.metadata.dst_node_id
            stage = msg.content.config_records["secaggplus_configs"]["stage"]
            if self.dies.get(dst) == stage:
                self.dead.add(dst)
            ids.append(mid)
            if dst in self.dead:
                if not self.silent:
                    self.pending[mid] = Message(Error(code=0, reason="node unavailable"), reply_to=msg)
                continue
            try:
                self.pending[mid] = self.app(msg, self.contexts[dst])
            except Exception as exc:  # noqa: BLE001 - what a SuperNode does with a crashed ClientApp
                self.pending[mid] = Message(Error(code=0, reason=f"{type(exc).__name__}: {exc}"), reply_to=msg)
        return ids

    def pull_messages(self, ids):
        return [self.pending.pop(i) for i in ids if i in self.pending]

    def get_node_ids(self):
        return [n for n in self.contexts if n not in self.dead]


def config(**kw) -> Config:
    return Config().override({"num_clients": 3, "clients_per_round": 3, "rounds": 2, "secure_aggregation": True,
                              **kw})


def jobs(n: int = 3, round_idx: int = 1) -> list[ClientJob]:
    return [ClientJob(c, round_idx, GLOBAL, {}) for c in range(n)]


def transport(grid: FaultyGrid, sizes: dict[int, int], cfg: Config, timeout: float = 0.0) -> SecureFlowerClients:
    return SecureFlowerClients(grid, {c: node(c) for c in sizes}, sizes, cfg, timeout)


def mean_of(pooled: PooledUpdate) -> dict[str, torch.Tensor]:
    return {k: pooled.state[k].double() - GLOBAL[k].double() for k in GLOBAL}


def expected(weights: dict[int, float]) -> dict[str, torch.Tensor]:
    total = sum(weights.values())
    return {k: sum(w * delta(c)[k].double() for c, w in weights.items()) / total for k in GLOBAL}


def close(pooled: PooledUpdate, weights: dict[int, float], tol: float = 1e-6) -> bool:
    got, want = mean_of(pooled), expected(weights)
    return all((got[k] - want[k]).abs().max().item() <= tol for k in GLOBAL)


SIZES = {0: 10, 1: 20, 2: 30}


# --- a member's clear-text metric ------------------------------------------------------------------

@pytest.mark.parametrize("bad", [math.inf, 3 * 10**18])
def test_a_members_bad_metric_costs_only_its_metrics_and_names_it(bad, tmp_path, caplog):
    """Before: the pooled train loss was inf (or 1e18), the whole pooled reply was dropped as
    'client 0' and the run stopped. Now that member's metrics are dropped, the sum is kept."""
    cfg = config(rounds=1)
    grid = FaultyGrid(node_app(SIZES, {2: {"train_loss": bad}}), 3)
    run_dir = RunDir(tmp_path / "run")
    fed = Federation(cfg, build_strategy(cfg, 3), transport(grid, SIZES, cfg), run_dir, min_updates=3)
    fed.start(dict(GLOBAL), run_dir.prepare(cfg, resume=False))
    record = fed.run_round(1)
    assert record["clients"] == [0, 1, 2] and record["dropped"] == []
    assert record["train_loss"] == pytest.approx((10 * 1.0 + 20 * 2.0 + 30 * 0.0) / 60)  # client 2's: none
    warned = [r.getMessage() for r in caplog.records if "clear-text metrics" in r.getMessage()]
    assert warned == [f"dropping the clear-text metrics of client 2 (node {node(2)}): metric 'train_loss' is "
                      f"{bad!r}, {'expected a finite number' if bad == math.inf else 'an int beyond 2**53'}; "
                      "its update stays in the secure sum"]
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["metrics"] for r in lines if r["type"] == "client"] == [{"train_loss": 1.0}, {"train_loss": 2.0}, {}]
    assert torch.allclose(fed.state["m.lora_A.weight"].double(), GLOBAL["m.lora_A.weight"].double()
                          + expected(SIZES)["m.lora_A.weight"], atol=1e-6)


def test_a_finite_huge_metric_does_not_overflow_the_pooled_mean():
    cfg = config()
    grid = FaultyGrid(node_app(SIZES, {0: {"train_loss": 1e308}, 1: {"train_loss": 1e308}}), 3)
    pooled = transport(grid, SIZES, cfg).train(jobs())[0]
    assert isinstance(pooled, PooledUpdate) and math.isfinite(pooled.metrics["train_loss"])
    assert pooled.metrics["train_loss"] == pytest.approx(0.5e308, rel=1e-12)           # (10 + 20) / 60 of 1e308


# --- nodes lost at each stage ----------------------------------------------------------------------

@pytest.mark.parametrize("stage,name", [("setup", "set-up"), ("share_keys", "key sharing"),
                                        ("collect_masked_vectors", "training")])
def test_a_node_lost_at_any_stage_costs_only_its_update(stage, name):
    """Before: a node lost during set-up or key sharing made every survivor fail in unmasking
    (KeyError in Flower's secaggplus_mod) and the round halted with no aggregate."""
    cfg = config()
    grid = FaultyGrid(node_app(SIZES), 3, dies={node(1): stage})
    replies = transport(grid, SIZES, cfg).train(jobs())
    pooled, failure = replies
    assert isinstance(pooled, PooledUpdate) and pooled.client_ids == [0, 2]
    assert close(pooled, {0: 10, 2: 30}, tol=2 * secagg.error_bound([10, 30], secagg.round_params(cfg, 3, [10, 20, 30])))
    assert failure == ClientFailure(1, f"client 1 (node {node(1)}): lost during {name} of secure aggregation "
                                       "(node unavailable)")


def test_a_node_that_stops_answering_is_dropped_after_the_round_timeout():
    cfg = config()
    grid = FaultyGrid(node_app(SIZES), 3, dies={node(2): "share_keys"}, silent=True)
    pooled, failure = transport(grid, SIZES, cfg, timeout=0.6).train(jobs())
    assert pooled.client_ids == [0, 1]
    assert failure.reason == f"client 2 (node {node(2)}): lost during key sharing of secure aggregation (no reply)"


def test_a_lost_node_is_not_sent_the_next_round():
    """Before: the node lost in round 1 was sampled again in round 2, which then failed."""
    cfg = config()
    grid = FaultyGrid(node_app(SIZES), 3, dies={node(0): "collect_masked_vectors"})
    clients = transport(grid, SIZES, cfg)
    assert clients.train(jobs())[0].client_ids == [1, 2]
    second = clients.train(jobs(round_idx=2))
    assert second[0].client_ids == [1, 2]
    assert second[1] == ClientFailure(0, f"client 0 (node {node(0)}): not connected (the SuperLink no longer lists "
                                         "it; lost during training in round 1)")


def test_a_round_halted_before_training_starts_over_once_without_the_lost_nodes(monkeypatch, caplog):
    """SecAgg+ with 3 shares among 5 nodes (threshold 2): nodes 1, 2 and 4 lost in set-up leave
    nodes 0 and 3 without a live neighbour, so the round halts; it starts over with 0 and 3."""
    import flwr.server.workflow.secure_aggregation.secaggplus_workflow as workflow

    monkeypatch.setattr(workflow.random, "shuffle", lambda seq: None)  # the ring in job order: 0-1-2-3-4
    sizes = {c: 10 for c in range(5)}
    cfg = config(num_clients=5, clients_per_round=5, secagg_num_shares=3, secagg_threshold=2)
    grid = FaultyGrid(node_app(sizes), 5, dies={node(c): "setup" for c in (1, 2, 4)})
    replies = transport(grid, sizes, cfg).train(jobs(5))
    assert isinstance(replies[0], PooledUpdate) and replies[0].client_ids == [0, 3]
    assert close(replies[0], {0: 1, 3: 1}, tol=1e-5)
    assert sorted(r.client_id for r in replies[1:]) == [1, 2, 4]
    assert all("lost during set-up of secure aggregation" in r.reason for r in replies[1:])
    assert any("starting it over once without" in r.getMessage() for r in caplog.records)


# --- issue 16: the share limit inside the secure sum -----------------------------------------------

LIAR = {0: 1000, 1: 1000, 2: 10**12}


def test_flower_secure_sum_weighs_a_liar_as_plain_fedavg_does():
    """Before: the weights were the roll-call claims, so the secure mean was the liar's update."""
    cfg = config()
    pooled = transport(FaultyGrid(node_app(LIAR), 3), LIAR, cfg).train(jobs())[0]
    assert not close(pooled, {2: 1}, tol=1e-5)
    assert close(pooled, {0: 1000, 1: 1000, 2: 2000}, tol=1e-5)          # the share limit 0.5, as plain FedAvg
    assert pooled.member_examples == {0: 1000, 1: 1000, 2: 2000} and pooled.member_claims[2] == 10**12


class Inner:
    def train(self, jobs):
        return [ClientUpdate(j.client_id, {k: j.state[k] + delta(j.client_id)[k] for k in j.state},
                             LIAR[j.client_id], {"train_loss": 1.0}) for j in jobs]

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


def test_simulated_secure_sum_applies_the_cap_and_share_limit():
    cfg = config(max_client_examples=1500)
    pooled = SimulatedSecureAggregation(Inner(), cfg, [LIAR[c] for c in range(3)]).train(jobs())[0]
    assert pooled.member_examples == {0: 1000, 1: 1000, 2: 1500}
    assert close(pooled, {0: 1000, 1: 1000, 2: 1500}, tol=1e-5)
