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


class SecureFlowerClients:
    """The round loop's transport under --secure-aggregation: one SecAgg+ round per fedit round;
    the loop gets one pooled reply (the unmasked mean) and a failure per client that dropped out.

    Faults (fedit.runners.flower.secagg_faults): a node the SuperLink no longer lists is not sent
    the round; a node lost during set-up or key sharing leaves the protocol; a round that halts
    before anyone trained is started over once without the nodes lost so far (nothing was masked
    yet, so the second try reveals nothing the first did not). Every failure names the stage."""

    def __init__(self, grid, nodes: dict[int, int], sizes: dict[int, int], cfg: Config, round_timeout: float) -> None:
        self.grid, self.nodes, self.sizes, self.cfg, self.round_timeout = grid, nodes, sizes, cfg, round_timeout
        self.gone: dict[int, str] = {}   # node -> where it was lost (for the next rounds' lines)

    def name(self, node: int) -> str:
        cid = next((c for c, n in self.nodes.items() if n == node), None)
        return f"client {cid} (node {node})"

    def train(self, jobs: Sequence[ClientJob]) -> list:
        from flwr.common import parameters_to_ndarrays

        from fedit.runners.flower.exchange import unlisted_failures

        if any(job.arrays for job in jobs):
            raise ConfigError("--secure-aggregation sums adapters only: this strategy sends clients extra tensors")
        jobs, failures = unlisted_failures(self.grid, self.nodes, jobs, self.gone)
        got, grid, halt = self._round(jobs)
        early = grid.lost_early() if grid is not None else []
        if halt and grid.calls <= 2 and early and len(jobs) - len(early) >= 2:
            logger.warning("round %d: secure aggregation halted during %s; starting it over once without %s",
                           jobs[0].round, grid.stage, ", ".join(self.name(n) for n in early))
            failures += [self._failure(j, grid) for j in jobs if self.nodes[j.client_id] in early]
            jobs = [j for j in jobs if self.nodes[j.client_id] not in early]
            got, grid, halt = self._round(jobs)
        failures += [self._failure(j, grid, halt) for j in jobs if j.client_id not in got]
        if not got:
            return failures
        mean = parameters_to_ndarrays(next(iter(got.values())).parameters)
        members = [(j.client_id, dict(got[j.client_id].metrics)) for j in jobs if j.client_id in got]
        cost = {"secagg_bytes_down": grid.down, "secagg_bytes_up": grid.up, "secagg_messages": grid.messages,
                "secagg_round_trips": secagg.STAGES}
        first = next(j for j in jobs if j.client_id in got)
        counts = secagg.round_counts([j.client_id for j in jobs], self.sizes, self.cfg)
        names = {cid: self.name(node) for cid, node in self.nodes.items()}
        return [secagg.pooled_update(first, mean, members, self.cfg, cost, counts, names), *failures]

    def _round(self, jobs: Sequence[ClientJob]) -> tuple[dict, Any, str | None]:
        """One run of the protocol: ({client: its FitRes}, the StageGrid, why it halted or None)."""
        from flwr.app import ArrayRecord, ConfigRecord, Context, RecordDict
        from flwr.common import FitIns, ndarrays_to_parameters
        from flwr.server.compat.legacy_context import LegacyContext
        from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD, Key

        from fedit.runners.flower.secagg_faults import StageGrid, TolerantSecAggPlus

        if len(jobs) < 2:
            return {}, None, f"secure aggregation needs 2 live nodes, {len(jobs)} left"
        counts = secagg.round_counts([j.client_id for j in jobs], self.sizes, self.cfg)
        weights = {cid: secagg.client_weight(n, self.cfg) for cid, n in counts.items()}
        try:
            params = secagg.round_params(self.cfg, len(jobs), list(weights.values()))
        except ConfigError as exc:   # e.g. a --secagg-threshold the nodes left cannot reach
            return {}, None, f"secure aggregation cannot run with the {len(jobs)} nodes left: {exc}"
        fitins = [(_Proxy(self.nodes[j.client_id]),
                   FitIns(ndarrays_to_parameters([v.numpy() for v in j.state.values()]),
                          secagg.fitins_config(j, weights[j.client_id]))) for j in jobs]
        strategy = _RoundStrategy(fitins)
        state = RecordDict({MAIN_CONFIGS_RECORD: ConfigRecord({Key.CURRENT_ROUND: jobs[0].round}),
                            MAIN_PARAMS_RECORD: ArrayRecord()})
        context = LegacyContext(Context(0, 0, {}, state, {}), strategy=strategy, client_manager=_Nodes(len(jobs)))
        grid = StageGrid(self.grid, self.name, jobs[0].round)
        TolerantSecAggPlus(params.flwr_num_shares, params.threshold, max_weight=params.max_weight,
                           clipping_range=params.clipping_range, quantization_range=params.quantization_range,
                           modulus_range=secagg.MODULUS, timeout=self.round_timeout or None)(grid, context)
        for node, (stage, _) in grid.lost.items():
            self.gone[node] = f"lost during {stage} in round {jobs[0].round}"
        by_node = {self.nodes[j.client_id]: j for j in jobs}
        got = {by_node[proxy.node_id].client_id: res for proxy, res in (strategy.results or [])}
        if strategy.results is not None:
            return got, grid, None
        alive = len(jobs) - len(grid.lost)
        return got, grid, (f"secure aggregation halted during {grid.stage}: {alive} of the {len(jobs)} nodes "
                           f"of the round still answer, fewer than --secagg-threshold {params.threshold}")

    def _failure(self, job: ClientJob, grid: Any, halt: str | None = None):
        from fedit.runners.federation import ClientFailure

        node = self.nodes[job.client_id]
        stage, why = grid.lost.get(node, (None, None)) if grid is not None else (None, None)
        text = f"client {job.client_id} (node {node}): "
        if stage is not None:
            text += f"lost during {stage} of secure aggregation ({why})"
            return ClientFailure(job.client_id, text + (f"; {halt}" if halt else ""))
        return ClientFailure(job.client_id, text + (halt or "dropped out of secure aggregation (no reply)"))

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
