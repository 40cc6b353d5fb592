"""Secure aggregation on a Flower federation (``--secure-aggregation``): Flower's own SecAgg+, the
``secaggplus_mod`` on every node and the ``SecAggPlusWorkflow`` on the server, driving fedit's jobs.

The route, and why: ``SecAggPlusWorkflow`` is written for Flower's legacy server (it takes a
``LegacyContext`` holding a legacy ``Strategy`` and ``ClientManager``), while fedit's ServerApp
uses the Message API (``@app.main()`` with a ``Grid``). Of those legacy objects the workflow only
calls ``strategy.configure_fit`` / ``strategy.aggregate_fit``, ``proxy.node_id``,
``client_manager.num_available()`` and ``grid.send_and_receive``, so fedit runs the workflow
unchanged, one round at a time, through three small stand-ins (:class:`_RoundStrategy`,
:class:`_Proxy`, :class:`_Nodes`). No cryptography is written here: key agreement, Shamir sharing,
masking, quantisation and unmasking are Flower's.

On the node, :func:`secure_aggregation_mod` wraps ``secaggplus_mod`` around fedit's train handler
for the messages of the protocol, and translates in between: the legacy FitIns the workflow sends
becomes a fedit job (:func:`fedit.privacy.secagg.job_from_fitins`); the update becomes a FitRes
whose arrays are the update (trained - global), whose example count is the weight the server set,
and whose metrics are what the node reports in the clear. ``secaggplus_mod`` masks the arrays and
clears them from the reply, so the server gets masked integers, and after unmasking only the sum.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Sequence

from fedit.config import Config
from fedit.errors import ConfigError
from fedit.privacy import secagg
from fedit.privacy.secagg_cost import message_bytes

if TYPE_CHECKING:  # torch-free at import: the ClientApp answers the roll call without torch
    from fedit.client.job import ClientJob

logger = logging.getLogger(__name__)


def secure_aggregation_mod(msg, ctxt, call_next):
    """ClientApp mod: SecAgg+ messages go through Flower's ``secaggplus_mod`` around fedit's train
    handler; every other message (roll call, a run without the flag) goes straight through."""
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS

    if msg.metadata.message_type != "train" or RECORD_KEY_CONFIGS not in msg.content.config_records:
        return call_next(msg, ctxt)
    from flwr.client.mod import secaggplus_mod

    return secaggplus_mod(msg, ctxt, _fedit_train(call_next))


def _fedit_train(call_next):
    """fedit's train handler as the legacy fit ``secaggplus_mod`` expects: FitIns in, FitRes out."""

    def fit(msg, ctxt):
        from flwr.app import Message
        from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
        from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_STATE
        from flwr.compat.common import recorddict_compat as compat

        from fedit.runners.flower import wire

        fitins = compat.recorddict_to_fitins(msg.content, keep_input=True)
        job = secagg.job_from_fitins(parameters_to_ndarrays(fitins.parameters), fitins.config)
        weight = int(fitins.config["fedit.weight"])
        msg.content = wire.train_content(job)
        reply = call_next(msg, ctxt)
        if reply.has_error():  # the workflow counts this node as dropped out
            raise RuntimeError(reply.error.reason)
        update = wire.update_from_reply(reply, job.client_id)
        delta = secagg.update_delta(update, job)
        st = ctxt.state.config_records[RECORD_KEY_STATE]
        params = secagg.SecAggParams(0, 0, 0, float(st["clipping_range"]), int(st["target_range"]),
                                     float(st["max_weight"]))
        res = FitRes(Status(Code.OK, "ok"), ndarrays_to_parameters(delta), weight,
                     secagg.fitres_metrics(update, secagg.clipped_values(delta, weight, params)))
        return Message(compat.fitres_to_recorddict(res, keep_input=True), reply_to=msg)

    return fit


class _Proxy:
    """What SecAggPlusWorkflow uses of a legacy ClientProxy: its node id."""

    def __init__(self, node_id: int) -> None:
        self.node_id = node_id


class _Nodes:
    """What SecAggPlusWorkflow uses of a legacy ClientManager: a count for its log line."""

    def __init__(self, count: int) -> None:
        self.count = count

    def num_available(self) -> int:
        return self.count


class _RoundStrategy:
    """The legacy Strategy the workflow drives for one round: configure_fit hands it the round's
    jobs (as FitIns), aggregate_fit receives the unmasked mean (and leaves the workflow's state)."""

    def __init__(self, fitins: list) -> None:
        self.fitins, self.results = fitins, None

    def configure_fit(self, server_round, parameters, client_manager):
        return self.fitins

    def aggregate_fit(self, server_round, results, failures):
        self.results = results
        return None, {}


STAGE_NAMES = ("setup", "key sharing", "training and masking", "unmasking")   # SecAgg+'s 4 round trips


class CountingGrid:
    """The Grid as the workflow sees it: its messages go through fedit's exchange (replies matched to
    messages, so a dead node's error reply is charged to that node), counting bytes and messages, and
    recording at which stage of the protocol each node failed."""

    def __init__(self, grid, exchange) -> None:
        self.grid, self.exchange = grid, exchange
        self.down = self.up = self.messages = self.stage = 0
        self.errors: dict[int, str] = {}
        self.lost_at: dict[int, str] = {}    # node -> the stage it was lost in

    def send_and_receive(self, messages, *, timeout: float | None = None):
        messages = list(messages)
        stage = STAGE_NAMES[min(self.stage, len(STAGE_NAMES) - 1)]
        self.stage += 1
        self.down += sum(message_bytes(m.content) for m in messages)
        nodes = [m.metadata.dst_node_id for m in messages]
        replies = self.exchange(self.grid, messages, nodes, timeout)
        self.messages += len(messages) + len(replies)
        for node, reply in replies.items():
            if reply.has_error():
                self.errors[node] = reply.error.reason
            else:
                self.up += message_bytes(reply.content)
        for node in set(nodes) - set(replies):
            self.errors[node] = "no reply"
        for node in set(nodes) & set(self.errors):
            self.lost_at.setdefault(node, stage)
        return list(replies.values())


def _workflow_class():
    from flwr.server.workflow import SecAggPlusWorkflow

    class Workflow(SecAggPlusWorkflow):
        """Flower's SecAgg+ with one change: it halts as soon as a node is lost before the masked
        vectors are collected (setup or key sharing). Flower's own workflow goes on, and its unmask
        stage then asks the survivors for key shares of that node, which they never received: they
        fail with a KeyError inside ``secaggplus_mod`` and the round is lost (docs/flower.md,
        "SecAgg+ and a node lost during key sharing"). fedit reruns such a round without the lost
        nodes (:class:`SecureFlowerClients`)."""

        def setup_stage(self, grid, context, state) -> bool:
            return super().setup_stage(grid, context, state) and _none_lost(state)

        def share_keys_stage(self, grid, context, state) -> bool:
            return super().share_keys_stage(grid, context, state) and _none_lost(state)

    return Workflow


def _none_lost(state) -> bool:
    return state.active_node_ids == state.sampled_node_ids


class SecureFlowerClients:
    """The round loop's transport under --secure-aggregation: one SecAgg+ round per fedit round;
    the loop gets one pooled reply (the unmasked mean) and a failure per client that dropped out.

    Only nodes the SuperLink lists are asked; a round halted by a node lost during setup or key
    sharing is run once more without it. Weights are the example counts the server trusts
    (fedit.server.trust: the roll call's counts, capped and share-limited as without SecAgg)."""

    def __init__(self, grid, nodes: dict[int, int], sizes: dict[int, int], cfg: Config, round_timeout: float) -> None:
        self.grid, self.nodes, self.sizes, self.cfg, self.round_timeout = grid, nodes, sizes, cfg, round_timeout

    def train(self, jobs: Sequence[ClientJob]) -> list:
        from fedit.runners.federation import ClientFailure

        if any(job.arrays for job in jobs):
            raise ConfigError("--secure-aggregation sums adapters only: this strategy sends clients extra tensors")
        listed = set(self.grid.get_node_ids())
        failures = [ClientFailure(j.client_id, f"client {j.client_id} (node {self.nodes[j.client_id]}): not "
                                               "connected (the SuperLink no longer lists it), not asked")
                    for j in jobs if self.nodes[j.client_id] not in listed]
        jobs = [j for j in jobs if self.nodes[j.client_id] in listed]
        for attempt in (1, 2):
            if len(jobs) < 2:
                return failures + [ClientFailure(j.client_id, f"client {j.client_id} (node {self.nodes[j.client_id]}):"
                                                 " alone in its secure round (a secure sum needs 2 clients)")
                                   for j in jobs]
            replies, grid, halted = self._round(jobs)
            early = {n for n, stage in grid.lost_at.items() if stage in STAGE_NAMES[:2]}
            if not (halted and early and attempt == 1):
                return replies + failures
            lost = [j for j in jobs if self.nodes[j.client_id] in early]
            logger.warning("round %d: secure aggregation halted: %s lost during %s; running the round again "
                           "without them", jobs[0].round, ", ".join(f"client {j.client_id} (node "
                                                                   f"{self.nodes[j.client_id]})" for j in lost),
                           " / ".join(sorted({grid.lost_at[self.nodes[j.client_id]] for j in lost})))
            failures += [ClientFailure(j.client_id, self._why(j, grid, None)) for j in lost]
            jobs = [j for j in jobs if j not in lost]
        raise AssertionError("unreachable")

    def _round(self, jobs: Sequence[ClientJob]):
        """One SecAgg+ run over ``jobs``: (replies for the loop, the counting grid, halted?)."""
        from flwr.app import ArrayRecord, ConfigRecord, Context, RecordDict
        from flwr.common import FitIns, ndarrays_to_parameters, parameters_to_ndarrays
        from flwr.server.compat.legacy_context import LegacyContext
        from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD, Key

        from fedit.runners.federation import ClientFailure
        from fedit.runners.flower.server_app import exchange
        from fedit.server.trust import secure_weights

        rob = self.cfg.robustness
        trusted = secure_weights([j.client_id for j in jobs], self.sizes, rob.max_client_examples,
                                 rob.max_client_share)
        weights = {cid: secagg.client_weight(n, self.cfg) for cid, n in trusted.items()}
        params = secagg.round_params(self.cfg, len(jobs), list(weights.values()))
        fitins = [(_Proxy(self.nodes[j.client_id]),
                   FitIns(ndarrays_to_parameters([v.numpy() for v in j.state.values()]),
                          secagg.fitins_config(j, weights[j.client_id]))) for j in jobs]
        strategy = _RoundStrategy(fitins)
        state = RecordDict({MAIN_CONFIGS_RECORD: ConfigRecord({Key.CURRENT_ROUND: jobs[0].round}),
                            MAIN_PARAMS_RECORD: ArrayRecord()})
        context = LegacyContext(Context(0, 0, {}, state, {}), strategy=strategy, client_manager=_Nodes(len(jobs)))
        grid = CountingGrid(self.grid, exchange)
        _workflow_class()(params.flwr_num_shares, params.threshold, max_weight=params.max_weight,
                          clipping_range=params.clipping_range, quantization_range=params.quantization_range,
                          modulus_range=secagg.MODULUS, timeout=self.round_timeout or None)(grid, context)
        by_node = {self.nodes[j.client_id]: j for j in jobs}
        got = {by_node[proxy.node_id].client_id: res for proxy, res in (strategy.results or [])}
        halted = strategy.results is None
        failures = [ClientFailure(j.client_id, self._why(j, grid, (params, len(jobs)) if halted else None))
                    for j in jobs if j.client_id not in got]
        if not got:
            return failures, grid, halted
        mean = parameters_to_ndarrays(next(iter(got.values())).parameters)
        members = [(j.client_id, dict(got[j.client_id].metrics)) for j in jobs if j.client_id in got]
        cost = {"secagg_bytes_down": grid.down, "secagg_bytes_up": grid.up, "secagg_messages": grid.messages,
                "secagg_round_trips": secagg.STAGES}
        first = next(j for j in jobs if j.client_id in got)
        nodes = {cid: self.nodes[cid] for cid, _ in members}
        return [secagg.pooled_update(first, mean, members, self.cfg, cost, trusted, nodes), *failures], grid, halted

    def _why(self, job: ClientJob, grid: CountingGrid, halted: tuple[secagg.SecAggParams, int] | None) -> str:
        node = self.nodes[job.client_id]
        who = f"client {job.client_id} (node {node})"
        if node in grid.errors:
            return f"{who}: dropped out of secure aggregation during {grid.lost_at[node]} ({grid.errors[node]})"
        if halted is None:
            return f"{who}: dropped out of secure aggregation (no reply)"
        params, sent = halted
        lost = ", ".join(f"node {n} during {stage}" for n, stage in sorted(grid.lost_at.items()))
        return (f"{who}: secure aggregation halted: {sent - len(grid.errors)} of the round's {sent} nodes left, "
                f"--secagg-threshold {params.threshold} of {params.num_shares} shares needed (lost: {lost})")

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
