"""The one set-up of a run: set-up -> the rounds -> ``final/``, the same for every runner.

``fedit run`` (and ``fedit experiment``, which runs the simulation) and the Flower ServerApp (also
under Flower's Simulation Engine) each subclass :class:`Session` and supply only what differs
between them: where the clients come from (a partition of ``--data``, known before anything is
written; or a roll call of the nodes, once the run directory exists), the transport of the round
loop, the data fields the run's fingerprint covers, the minimum number of updates per round and the
example counts the server knows. The sequence itself is written once, in :meth:`Session.setup`:

    checks (paths, method combinations, the runner's own) -> the clients when known early
    (how many to sample, their adapter layouts, the strategy) -> test data -> the run directory's
    checks -> the model -> the run directory (config, fingerprint, provenance, adapter config) ->
    the clients that join late -> the transport and the evaluator -> the round loop's start
"""

from __future__ import annotations

import dataclasses
import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from fedit.client_lora import ClientLora
from fedit.config import Config
from fedit.data import Example
from fedit.data.fingerprint import DATA_FIELDS, data_fingerprint, with_absolute_paths
from fedit.errors import CheckpointError
from fedit.model import AdapterState, adapter_config, check_client_targets, model_origin, save_adapter
from fedit.progress import Progress
from fedit.provenance import provenance
from fedit.runners.common import Workbench, build_workbench, load_test
from fedit.runners.federation import EvaluateFn, Federation, Transport
from fedit.runners.loggers import resolve_logger
from fedit.runners.rundir import RunDir
from fedit.runners.summary import run_card
from fedit.server import Strategy, build_strategy, check_methods
from fedit.server.build import client_layouts

logger = logging.getLogger(__name__)


@dataclass
class Roster:
    """The run's clients as the server knows them."""

    count: int
    source: str                                   # where the count comes from (for messages)
    layouts: list[ClientLora] | None = None       # every client's adapter; None: from --client-ranks/-targets
    known_examples: dict[int, int] = field(default_factory=dict)  # {client: its size}: caps claimed counts


class Session(ABC):
    """setup() -> the rounds (``self.federation``) -> finish(); ``run()`` does all three."""

    fingerprint_fields: tuple[str, ...] = DATA_FIELDS   # the data this runner reads (config.yaml's check)
    min_updates: int = 0                                 # fewer valid updates in a round stop the run

    def __init__(self, cfg: Config, out: str | Path, *, resume: bool = False, progress: Progress | None = None,
                 bench: Workbench | None = None) -> None:
        self.cfg = cfg
        self.run_dir = RunDir(Path(out))
        self.resume = resume
        self.progress = progress or Progress()
        self._bench = bench  # a resident model to reuse (experiments); built in setup() when None

    # -- what a runner supplies ------------------------------------------------------------------
    def check(self, cfg: Config) -> None:
        """The runner's own checks of the settings, before anything is loaded."""

    def early_clients(self, cfg: Config) -> Roster | None:
        """The clients when they are known before anything is written (a partition), else None."""
        return None

    def late_clients(self, cfg: Config) -> Roster:
        """The clients when only the run can tell them, once its directory exists (a roll call)."""
        raise NotImplementedError(f"{type(self).__name__} knows its clients neither early nor late")

    def prepared(self, cfg: Config) -> None:
        """The run directory exists: what the runner writes there besides the run's own files."""

    @abstractmethod
    def make_transport(self, cfg: Config, roster: Roster) -> Transport:
        """How the round loop's jobs reach the clients and their replies come back."""

    def make_evaluator(self, evaluate: EvaluateFn | None, test: Sequence[Example]) -> EvaluateFn | None:
        """The central evaluation of every round (default: the loss on the held-out data)."""
        return evaluate

    # -- the sequence ----------------------------------------------------------------------------
    def setup(self) -> None:
        """Checks, data, the strategy and the model first: a mistake in any of them stops the run
        before anything is written (except what only the clients that join late can tell)."""
        self.cfg = cfg = with_absolute_paths(self.cfg)   # config.yaml names the data wherever it runs
        check_methods(cfg)  # a combination of methods that makes no sense
        resolve_logger(cfg.federation.logger)   # a --logger that is not installed: before data and model
        self.check(cfg)
        roster = self.early_clients(cfg)
        strategy = None if roster is None else self._admit(cfg, roster)
        test = load_test(cfg)
        fingerprint = data_fingerprint(cfg, self.fingerprint_fields)
        self.run_dir.check(cfg, self.resume, fingerprint)
        self.bench: Workbench = self._bench if self._bench is not None else build_workbench(cfg)
        if roster is not None:
            check_client_targets(self.bench.model, [lay.targets for lay in self.roster.layouts])
        self.origin = model_origin(cfg.model.model, self.bench.base.path)
        ckpt = self.run_dir.prepare(cfg, self.resume, fingerprint=fingerprint,
                                    provenance={**provenance(), "model": self.origin})
        self.run_dir.adapter_config = adapter_config(self.bench.model, self.bench.base.path)
        self.prepared(cfg)
        if roster is None:
            strategy = self._admit(cfg, self.late_clients(cfg))
            check_client_targets(self.bench.model, [lay.targets for lay in self.roster.layouts])
        test_tok = self.bench.tokenize(test, cfg.data, train_on_prompt=False)
        transport = self.make_transport(cfg, self.roster)
        evaluate = self.make_evaluator(self.bench.evaluator(test_tok, cfg.federation.eval_batch_size), test)
        self.federation = Federation(cfg, strategy, transport, self.run_dir, evaluate=evaluate,
                                     min_updates=self.min_updates, progress=self.progress,
                                     known_examples=self.roster.known_examples)
        self.federation.start(self.bench.initial_state, ckpt)

    def _admit(self, cfg: Config, roster: Roster) -> Strategy:
        """How many clients a round samples, their adapter layouts and the strategy for them."""
        cfg.federation.clients_to_sample(roster.count, roster.source)
        layouts = client_layouts(cfg, roster.count) if roster.layouts is None else roster.layouts
        self.roster = dataclasses.replace(roster, layouts=list(layouts))
        return build_strategy(cfg, roster.count, self.roster.layouts)  # refuses impossible method settings

    @property
    def state(self) -> AdapterState:
        """The current global adapter."""
        return self.federation.state

    def run_round(self, round_idx: int) -> dict[str, Any]:
        """One round of the loop (benchmarks step through rounds one by one)."""
        return self.federation.run_round(round_idx)

    def finish(self) -> Any:
        """``final/``: the adapter, the tokenizer and a model card."""
        save_final(self.bench, self.federation.state, self.run_dir, self.cfg, self.federation.history, self.origin)

    def run(self) -> Any:
        """setup() -> every round -> finish(); returns what finish() returns."""
        try:
            self.setup()
            self.federation.run()
            return self.finish()
        finally:  # loss.png and the tracker's files, also when the run stops early
            self.run_dir.close()


def save_final(bench: Workbench, state: AdapterState, run_dir: RunDir, cfg: Config,
               history: Sequence[dict[str, Any]], origin: dict[str, Any]) -> None:
    """``final/``: the adapter, the tokenizer and a model card."""
    card = run_card(cfg, history, origin, run_dir.final_dir)
    try:
        save_adapter(bench.model, state, run_dir.final_dir, bench.base.path, tokenizer=bench.tokenizer, card=card)
    except Exception as exc:  # a full disk: the checkpoints still hold every round
        raise CheckpointError(f"cannot write the final adapter to {run_dir.final_dir} ({exc}); no data was lost: "
                              f"every round is checkpointed, write it with --resume once there is space"
                              .replace("\n", " ")) from None
    logger.info("final adapter written to %s", run_dir.final_dir)
