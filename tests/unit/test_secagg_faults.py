"""Secure aggregation on Flower under faults (issue 15 §2) and with lying nodes (issue 16, defect 1),
through Flower's own SecAgg+ mod and workflow over the in-process stand-in Grid of
test_privacy_secagg: a node's infinite or huge clear-text metric, a node lost during key sharing,
a node the SuperLink no longer lists, a node claiming 10^12 examples at the roll call."""

from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("flwr")

from flwr.app import Error, Message  # noqa: E402

from fedit.client.job import ClientUpdate, PooledUpdate  # noqa: E402
from fedit.privacy import secagg  # noqa: E402
from fedit.runners.federation import ClientFailure  # noqa: E402
from fedit.runners.flower import wire  # noqa: E402
from fedit.runners.flower.secagg import SecureFlowerClients, secure_aggregation_mod  # noqa: E402
from fedit.server.trust import secure_weights, trusted_counts  # noqa: E402
from tests.unit.test_privacy_secagg import (GLOBAL, NODES, SIZES, InProcessGrid, config, deltas,  # noqa: E402
                                            jobs, task_identity, weighted_mean)

__all__ = ["task_identity"]   # the autouse fixture, imported for its effect


def app_reporting(updates, loss: dict[int, float]):
    """A node ClientApp (fedit's SecAgg+ mod) whose train handler reports ``loss[client]`` as its train loss."""
    from flwr.clientapp import ClientApp

    app = ClientApp(mods=[secure_aggregation_mod])

    @app.train()
    def train(msg, context):
        job = wire.job_from_message(msg)
        state = {k: job.state[k] + updates[job.client_id][k] for k in job.state}
        update = ClientUpdate(job.client_id, state, SIZES[job.client_id], {"train_loss": loss.get(job.client_id, 1.0)})
        return Message(wire.update_content(update), reply_to=msg)

    return app


class FaultyGrid(InProcessGrid):
    """Node ``lose`` answers its ``at``-th protocol message (0 setup, 1 key sharing, 2 training and
    masking, 3 unmasking) with an error, as the SuperLink does for a node that died, and every later one
    too; nodes in ``unlisted`` are not in get_node_ids() (the SuperLink dropped them)."""

    def __init__(self, app, lose: int | None = None, at: int = 0, unlisted=()) -> None:
        super().__init__(app)
        self.lose, self.at, self.unlisted, self.count = lose, at, set(unlisted), 0

    def push_messages(self, messages):
        out = []
        for msg in messages:
            if msg.metadata.dst_node_id == self.lose:
                self.count += 1
                if self.count > self.at:
                    mid = f"dead-{self.count}"
                    msg.metadata.__dict__["_message_id"] = mid
                    self.pending[mid] = Message(Error(code=0, reason="node lost (heartbeats stopped)"), reply_to=msg)
                    out.append(mid)
                    continue
            out += super().push_messages([msg])
        return out

    def get_node_ids(self):
        return [n for n in NODES.values() if n not in self.unlisted]


def _run(grid, cfg=None, sizes=SIZES):
    return SecureFlowerClients(grid, NODES, sizes, cfg or config(), 0.0).train(jobs())


@pytest.mark.parametrize("bad", [math.inf, 1e308])
def test_one_nodes_bad_metric_costs_only_its_metrics(bad, caplog) -> None:
    replies = _run(InProcessGrid(app_reporting(deltas(), {2: bad})))
    assert len(replies) == 1 and isinstance(replies[0], PooledUpdate)       # the round is kept
    pooled = replies[0]
    assert pooled.client_ids == [0, 1, 2] and pooled.member_metrics[2] == {}
    assert pooled.metrics["train_loss"] == pytest.approx(1.0)                  # from clients 0 and 1 only
    assert math.isfinite(pooled.metrics["train_loss"]) and pooled.round_metrics["secagg_metrics_dropped"] == 1
    lines = [r.getMessage() for r in caplog.records if "metrics are dropped" in r.getMessage()]
    assert len(lines) == 1 and lines[0].startswith("secure aggregation: client 2: metric 'train_loss'")
    assert f"(node {NODES[2]})" in lines[0]                                 # the culprit, not client 0


def test_a_node_lost_during_key_sharing_reruns_the_round_without_it(caplog) -> None:
    upd = deltas()
    replies = _run(FaultyGrid(app_reporting(upd, {}), lose=NODES[1], at=1))
    pooled = next(r for r in replies if isinstance(r, PooledUpdate))
    failure = next(r for r in replies if isinstance(r, ClientFailure))
    assert pooled.client_ids == [0, 2] and failure.client_id == 1
    assert "dropped out of secure aggregation during key sharing (node lost" in failure.reason
    assert any("secure aggregation halted: client 1" in r.getMessage() and "running the round again" in
               r.getMessage() for r in caplog.records)
    # the rerun's two clients weigh what a plain round of the two would give them: 30 of 40 records
    # is over --max-client-share 0.5, so both weigh 10
    assert pooled.member_examples == {0: 10, 2: 10}
    exact = {k: (upd[0][k].double() + upd[2][k].double()) / 2 for k in GLOBAL}
    params = secagg.round_params(config(), 2, [10, 10])
    for k in GLOBAL:
        assert (pooled.state[k].double() - GLOBAL[k] - exact[k]).abs().max().item() <= \
            secagg.error_bound([10, 10], params) + 1e-7


def test_a_node_the_superlink_no_longer_lists_is_not_asked() -> None:
    grid = FaultyGrid(app_reporting(deltas(), {}), unlisted=[NODES[0]])
    replies = _run(grid)
    pooled = next(r for r in replies if isinstance(r, PooledUpdate))
    failure = next(r for r in replies if isinstance(r, ClientFailure))
    assert pooled.client_ids == [1, 2] and failure.client_id == 0 and "not connected" in failure.reason
    assert all(r.metadata.dst_node_id != NODES[0] for r in grid.seen if not r.has_error())


def test_secure_weights_are_the_counts_a_plain_round_trusts() -> None:
    """Issue 16, defect 1: a node claiming 10^12 records at the roll call weighed 10^12 in a secure
    round (its update was the whole mean); now it weighs what a round without SecAgg gives it."""
    claims = {0: 1000, 1: 1000, 2: 10**12}
    assert secure_weights([0, 1, 2], claims, None, 0.5) == trusted_counts(claims, claims, None, 0.5) == \
        {0: 1000, 1: 1000, 2: 2000}
    upd = deltas()
    replies = _run(InProcessGrid(app_reporting(upd, {})), sizes=claims)
    pooled = replies[0]
    assert pooled.member_examples == {0: 1000, 1: 1000, 2: 2000}
    exact = weighted_mean(upd, [1000, 1000, 2000])
    liar = {k: upd[2][k].double() for k in GLOBAL}
    for k in GLOBAL:
        mean = pooled.state[k].double() - GLOBAL[k]
        assert (mean - exact[k]).abs().max().item() < 1e-6
        assert (mean - liar[k]).abs().max().item() > 1e-4                 # not the liar's update


def test_simulated_secure_aggregation_uses_the_same_weights() -> None:
    from fedit.privacy.secagg_transport import SimulatedSecureAggregation

    upd = deltas()

    class Clients:
        def train(self, js):
            return [ClientUpdate(j.client_id, {k: j.state[k] + upd[j.client_id][k] for k in j.state}, 10**12,
                                 {"train_loss": 1.0}) for j in js]

    cfg = config(max_client_share=0.5)
    pooled = SimulatedSecureAggregation(Clients(), cfg, [1000, 1000, 10**12]).train(jobs())[0]
    assert pooled.member_examples == {0: 1000, 1: 1000, 2: 2000}
    assert pooled.member_metrics[2] == {"train_loss": 1.0, "claimed_examples": 10**12}
    exact = weighted_mean(upd, [1000, 1000, 2000])
    for k in GLOBAL:
        assert ((pooled.state[k].double() - GLOBAL[k]) - exact[k]).abs().max().item() < 1e-6
