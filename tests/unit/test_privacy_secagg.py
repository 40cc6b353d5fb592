"""Secure aggregation: the simulation's arithmetic against Flower's SecAgg+ itself (its mod and its
workflow, run here in process over a stand-in Grid), the documented quantisation bound, what the
server gets (never an update), dropouts up to the threshold, the protocol's bytes, refusals."""

from __future__ import annotations

import copy
import uuid

import numpy as np
import pytest
import torch

pytest.importorskip("flwr")

from flwr.app import Context, Error, Message, RecordDict  # noqa: E402
from flwr.clientapp import ClientApp  # noqa: E402

from fedit.client.job import ClientJob, ClientUpdate, PooledUpdate  # noqa: E402
from fedit.config import Config  # noqa: E402
from fedit.errors import ConfigError  # noqa: E402
from fedit.privacy import secagg  # noqa: E402
from fedit.privacy.secagg_cost import round_cost  # noqa: E402
from fedit.privacy.secagg_transport import SimulatedSecureAggregation  # noqa: E402
from fedit.runners.federation import ClientFailure  # noqa: E402
from fedit.runners.flower import wire  # noqa: E402
from fedit.runners.flower.secagg import SecureFlowerClients, secure_aggregation_mod  # noqa: E402
from fedit.server import build_strategy, make_strategy  # noqa: E402
from fedit.server.build import check_sums_suffice  # noqa: E402
from fedit.server.strategy import StrategyWrapper  # noqa: E402

GLOBAL = {"m.lora_A.weight": torch.full((2, 3), 0.5), "m.lora_B.weight": torch.zeros(3, 2)}
SIZES = {0: 10, 1: 20, 2: 30}
NODES = {cid: 10**18 + 7 * cid for cid in SIZES}      # 19-digit node ids, as Flower's


@pytest.fixture(autouse=True)
def task_identity(monkeypatch):
    """Messages take their run and sender from the process's task identity (set by Flower's runtime)."""
    from flwr.supercore.task_identity import TaskIdentity

    for name, value in (("_run_id", 1), ("_node_id", 0), ("_task_id", 0)):
        monkeypatch.setattr(TaskIdentity, name, value)


def deltas(step: float = 1e-3) -> dict[int, dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    return {cid: {k: torch.randn(v.shape, generator=gen) * step for k, v in GLOBAL.items()} for cid in SIZES}


def config(**kw) -> Config:
    base = {"num_clients": 3, "clients_per_round": 3, "secure_aggregation": True}
    return Config().override({**base, **kw})


def jobs(extra: dict | None = None) -> list[ClientJob]:
    return [ClientJob(cid, 1, GLOBAL, dict(extra or {})) for cid in SIZES]


class InProcessGrid:
    """A stand-in Grid: each message is handled at once by its node's ClientApp, as a SuperNode
    would (on its own copy of the content, as after the wire; an exception in the app becomes an
    error reply); replies are pulled by message id."""

    def __init__(self, app: ClientApp) -> None:
        self.app, self.pending, self.seen = app, {}, []
        self.contexts = {node: Context(1, node, {}, RecordDict(), {}) for node in NODES.values()}

    def push_messages(self, messages):
        ids = []
        for msg in messages:
            mid = uuid.uuid4().hex
            msg.metadata.__dict__["_message_id"] = mid
            msg.content = copy.deepcopy(msg.content)
            try:
                reply = self.app(msg, self.contexts[msg.metadata.dst_node_id])
            except Exception as exc:  # noqa: BLE001 - what a SuperNode does with a crashed ClientApp
                reply = Message(Error(code=0, reason=f"{type(exc).__name__}: {exc}"), reply_to=msg)
            self.pending[mid] = reply
            self.seen.append(reply)
            ids.append(mid)
        return ids

    def pull_messages(self, ids):
        return [self.pending.pop(i) for i in ids if i in self.pending]

    def get_node_ids(self):
        return list(self.contexts)


def node_app(updates: dict[int, dict[str, torch.Tensor]], fail: int | None = None) -> ClientApp:
    """A ClientApp with fedit's SecAgg+ mod whose train handler 'trains' to global + a fixed delta."""
    app = ClientApp(mods=[secure_aggregation_mod])

    @app.train()
    def train(msg, context):
        job = wire.job_from_message(msg)
        if job.client_id == fail:
            raise RuntimeError("node crashed while training")
        state = {k: job.state[k] + updates[job.client_id][k] for k in job.state}
        update = ClientUpdate(job.client_id, state, SIZES[job.client_id], {"train_loss": 1.0 + job.client_id})
        return Message(wire.update_content(update), reply_to=msg)

    return app


def weighted_mean(updates, weights) -> dict[str, torch.Tensor]:
    total = sum(weights)
    return {k: sum(w * updates[c][k].double() for c, w in zip(SIZES, weights)) / total for k in GLOBAL}


def run_flower(cfg: Config, updates, fail: int | None = None):
    grid = InProcessGrid(node_app(updates, fail))
    replies = SecureFlowerClients(grid, NODES, SIZES, cfg, 0.0).train(jobs())
    return replies, grid


def test_flower_secaggplus_gives_the_weighted_mean_within_the_documented_bound():
    cfg, upd = config(), deltas()
    replies, grid = run_flower(cfg, upd)
    assert len(replies) == 1 and isinstance(replies[0], PooledUpdate)
    pooled = replies[0]
    params = secagg.round_params(cfg, 3, list(SIZES.values()))
    bound = secagg.error_bound(list(SIZES.values()), params)
    assert 0 < bound < 1e-6
    exact = weighted_mean(upd, list(SIZES.values()))
    for k in GLOBAL:
        err = (pooled.state[k].double() - GLOBAL[k].double() - exact[k]).abs().max().item()
        assert err <= bound + 1e-7, (k, err, bound)          # + the float32 of the adapter
    assert pooled.client_ids == [0, 1, 2] and pooled.weighting == "examples" and pooled.num_examples == 60
    assert pooled.member_examples == SIZES and pooled.member_metrics[2] == {"train_loss": 3.0}
    assert pooled.metrics["train_loss"] == pytest.approx((10 * 1 + 20 * 2 + 30 * 3) / 60)


def test_the_server_never_receives_an_update():
    cfg, upd = config(), deltas()
    _, grid = run_flower(cfg, upd)
    replies = [r for r in grid.seen if not r.has_error()]
    assert len(replies) == 4 * 3                                     # 4 stages x 3 nodes
    assert all(len(rec) == 0 for r in replies for rec in r.content.array_records.values())
    masked = [r for r in replies if "masked_params" in r.content.config_records["secaggplus_configs"]]
    assert len(masked) == 3
    from flwr.common import bytes_to_ndarray

    for reply in masked:  # what a node uploads are integers modulo 2^32 that look nothing like its update
        arrays = [bytes_to_ndarray(b) for b in reply.content.config_records["secaggplus_configs"]["masked_params"]]
        assert all(a.dtype == np.int64 and a.min() >= 0 and a.max() < 2**32 for a in arrays)
        assert arrays[1].std() > 1e8                                    # uniform-looking masks, not 2^21 +- tiny


def test_a_dropout_within_the_threshold_costs_only_that_client():
    cfg, upd = config(), deltas()                                   # 3 shares, threshold 2: one may drop
    replies, _ = run_flower(cfg, upd, fail=1)
    pooled, failure = replies
    assert isinstance(failure, ClientFailure) and failure.client_id == 1
    assert "lost during training of secure aggregation" in failure.reason and "node crashed while training" in failure.reason
    exact = {k: (10 * upd[0][k].double() + 30 * upd[2][k].double()) / 40 for k in GLOBAL}
    params = secagg.round_params(cfg, 3, list(SIZES.values()))
    for k in GLOBAL:
        assert (pooled.state[k].double() - GLOBAL[k] - exact[k]).abs().max().item() <= 2 * secagg.error_bound(
            [10, 30], params) + 1e-7
    assert pooled.client_ids == [0, 2]


def test_below_the_threshold_the_round_has_no_aggregate():
    cfg = config(secagg_threshold=3)                                  # every share needed: no dropout allowed
    replies, _ = run_flower(cfg, deltas(), fail=2)
    assert all(isinstance(r, ClientFailure) for r in replies) and len(replies) == 3
    assert replies[0].reason == ("client 0 (node 1000000000000000000): secure aggregation halted during training: "
                                 "2 of the 3 nodes of the round still answer, fewer than --secagg-threshold 3")
    assert replies[2].reason.startswith("client 2 (node 1000000000000000014): lost during training of secure "
                                        "aggregation (RuntimeError: node crashed while training); secure")


def on_grid(updates) -> dict[int, dict[str, torch.Tensor]]:
    """Updates whose weighted values sit exactly on the quantisation grid (2c/Q = 2^-21): stochastic
    rounding is then exact, so Flower's result is deterministic and comparable bit for bit."""
    return {c: {k: torch.round(v * 2**21) / 2**21 for k, v in u.items()} for c, u in updates.items()}


class Inner:
    """The in-process transport as SimulatedSecureAggregation sees it: clients answer with updates."""

    def __init__(self, updates) -> None:
        self.updates = updates

    def train(self, jobs):
        return [ClientUpdate(j.client_id, {k: j.state[k] + self.updates[j.client_id][k] for k in j.state},
                             SIZES[j.client_id], {"train_loss": 1.0 + j.client_id}) for j in jobs]

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


def test_simulation_computes_exactly_what_flower_secaggplus_computes():
    cfg = config(dp_clip=1.0, dp_noise_multiplier=0.0)               # DP: equal weights, c = 1
    upd = on_grid(deltas())
    flower, _ = run_flower(cfg, upd)
    sim = SimulatedSecureAggregation(Inner(upd), cfg, [SIZES[c] for c in sorted(SIZES)]).train(jobs())
    assert sim[0].weighting == "equal" and flower[0].weighting == "equal"
    for k in GLOBAL:
        assert torch.equal(sim[0].state[k], flower[0].state[k])
        assert torch.allclose(sim[0].state[k] - GLOBAL[k], sum(upd[c][k] for c in SIZES) / 3, atol=1e-7)


def test_simulation_counts_the_bytes_flower_sends():
    cfg = config()
    upd = deltas()
    flower, _ = run_flower(cfg, upd)
    sim = SimulatedSecureAggregation(Inner(upd), cfg, [SIZES[c] for c in sorted(SIZES)]).train(jobs())
    costs = {k: v for k, v in sim[0].round_metrics.items() if k.startswith("secagg_") and k != "secagg_clipped_values"}
    assert costs == {k: flower[0].round_metrics[k] for k in costs}
    assert costs["secagg_messages"] == 24 and costs["secagg_round_trips"] == 4
    adapter = sum(v.numel() for v in GLOBAL.values())
    assert costs["secagg_bytes_up"] > 3 * 8 * adapter                # int64 masked coordinates at least


def test_simulation_is_deterministic_and_its_rounding_unbiased():
    cfg = config()
    upd = deltas(step=0.3)
    transport = SimulatedSecureAggregation(Inner(upd), cfg, [SIZES[c] for c in sorted(SIZES)])
    a, b = transport.train(jobs())[0], transport.train(jobs())[0]
    assert all(torch.equal(a.state[k], b.state[k]) for k in GLOBAL)
    params = secagg.round_params(cfg, 3, list(SIZES.values()))
    exact = weighted_mean(upd, list(SIZES.values()))
    for k in GLOBAL:
        assert (a.state[k].double() - GLOBAL[k] - exact[k]).abs().max().item() <= secagg.error_bound(
            list(SIZES.values()), params) + 1e-7


def test_the_mod_arithmetic_is_flowers_quantize(monkeypatch):
    """masked_input == what secaggplus_mod computes before masking, given the same random draws."""
    from flwr.common.secure_aggregation import quantization

    cfg = config()
    params = secagg.round_params(cfg, 3, [10, 20, 30])
    arrays = [np.random.default_rng(1).normal(0, 0.1, (4, 5)).astype(np.float32)]
    draws = np.random.default_rng(2).random((4, 5))
    monkeypatch.setattr(quantization.np.random, "rand", lambda *shape: draws)

    class Fixed:
        def random(self, shape):
            return draws

    ours = secagg.masked_input(arrays, 20, params, Fixed())
    q_ratio = round(20 / 30 * params.quantization_range)
    theirs = quantization.quantize([arrays[0] * (q_ratio / params.quantization_range)], params.clipping_range,
                                   params.quantization_range)
    assert ours[0].tolist() == [q_ratio] and np.array_equal(ours[1], theirs[0])


def test_cost_model_matches_a_hand_count_of_one_small_round():
    params = secagg.SecAggParams(2, 2, 2, 1.0, 1 << 22, 1.0)
    cost = round_cost(params, [(1,)], [{"a": 1}], [{"b": 1.0}])
    assert cost["secagg_messages"] == 16 and cost["secagg_round_trips"] == 4
    assert cost["secagg_bytes_down"] > 2 * (2 * 2 * 215)               # each node gets both nodes' two P-384 keys


def test_refusals_name_both_flags():
    class Robust(StrategyWrapper):
        needs_each_update = "--robust median"

    with pytest.raises(ConfigError, match=r"^--secure-aggregation cannot be combined with --robust median: "):
        check_sums_suffice(Robust(make_strategy("fedavg", num_clients=3, clients_per_round=3, seed=0)))
    assert build_strategy(config(strategy="fedavgm"), 3)                 # FedAvgM only needs the mean
    with pytest.raises(ConfigError, match=r"^--secure-aggregation needs at least 2 clients per round, got 1"):
        secagg.round_params(config(clients_per_round=1), 1, [1])
    with pytest.raises(ConfigError, match=r"^--secagg-quantization-range 1073741824 with 4 clients per round "
                                          r"overflows"):
        secagg.round_params(config(secagg_quantization_range=1 << 30), 4, [1] * 4)
    with pytest.raises(ConfigError, match=r"^--secagg-threshold 5 is more than 4, the most a round of 9 clients "
                                          r"with 5 shares allows"):
        secagg.round_params(config(secagg_num_shares=5, secagg_threshold=5), 9, [1] * 9)


class Pooling:
    """A transport that answers like SecAgg+: one pooled reply for clients 0 and 2, client 1 dropped."""

    def train(self, jobs):
        state = {k: v + 1.0 for k, v in jobs[0].state.items()}
        pooled = PooledUpdate(0, state, 25, {"train_loss": 2.0}, client_ids=[0, 2],
                              member_metrics={0: {"train_loss": 1.0}, 2: {"train_loss": 3.0}},
                              member_examples={0: 10, 2: 15}, round_metrics={"secagg_messages": 16})
        return [pooled, ClientFailure(1, "client 1: dropped out of secure aggregation (no reply)")]

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


def test_the_round_loop_takes_a_pooled_reply_as_its_members(tmp_path):
    import json

    from fedit.runners.federation import Federation
    from fedit.runners.rundir import RunDir

    cfg = Config().override({"num_clients": 3, "clients_per_round": 3, "rounds": 1})
    run_dir = RunDir(tmp_path / "run")
    fed = Federation(cfg, build_strategy(cfg, 3), Pooling(), run_dir, min_updates=2)   # 2 members: enough
    fed.start({"a": torch.zeros(2)}, run_dir.prepare(cfg, resume=False))
    record = fed.run_round(1)
    assert torch.equal(fed.state["a"], torch.ones(2))
    assert record["clients"] == [0, 2] and record["num_examples"] == 25 and record["secagg_messages"] == 16
    assert record["dropped"] == ["client 1: dropped out of secure aggregation (no reply)"]
    assert "lora_gap_mean" not in record
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["client"], r["num_examples"], r["metrics"]["train_loss"]) for r in lines if r["type"] == "client"] == \
        [(0, 10, 1.0), (2, 15, 3.0)]
