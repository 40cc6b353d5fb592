"""Which model a command after training uses: ``--run RUN`` or ``--adapter DIR`` -> base model +
adapter + the settings it was trained with. One place for ``fedit eval``, ``generate``, ``chat``
and ``export``.

- ``--run RUN``: the run's ``config.yaml`` (base model, template, max length, test data and records,
  seed...) and ``RUN/final``, or the adapter ``--adapter`` names (e.g. ``RUN/checkpoints/round_0002``);
  ``fedit eval --run RUN`` therefore gives exactly the loss the run logged.
- ``--adapter DIR``: the base model is the adapter's ``base_model_name_or_path`` (from
  ``adapter_config.json``) unless ``--model`` is given; when DIR is a run's ``final/`` or one of its
  checkpoints, that run's settings (template...) are used as with ``--run``.
- neither: the base model alone, with the default preset's settings (cpu-demo, as ``fedit run``).

Flags given on the command line (``--model``, ``--template``, ``--device``...) override all of these.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedit.config import Config
from fedit.errors import ConfigError, ModelError
from fedit.runners.common import build_workbench, load_test
from fedit.runners.rundir import RunDir

logger = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"


@dataclass
class ModelSource:
    cfg: Config                 # what to load the base model with (and the prompt template)
    adapter: Path | None        # the PEFT adapter folder, if any
    run: Path | None            # the fedit run it came from, when known (model cards, provenance)


def adapter_meta(path: Path) -> dict[str, Any]:
    """``adapter_config.json`` of a PEFT adapter folder (one-line error when it is not one)."""
    file = path / ADAPTER_CONFIG
    if not file.is_file():
        raise ConfigError(f"--adapter: {path} is not a PEFT adapter folder (no {ADAPTER_CONFIG})")
    try:
        return json.loads(file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"--adapter: cannot read {file} ({exc})".splitlines()[0]) from None


def lora_settings(meta: dict[str, Any]) -> dict[str, Any]:
    """The --lora-* settings that give the adapter's shape."""
    targets = meta.get("target_modules")
    if isinstance(targets, list):
        targets = ",".join(sorted(targets))
    return {"lora_r": int(meta["r"]), "lora_alpha": int(meta["lora_alpha"]),
            "lora_targets": targets or "all-linear"}


def _run_config(run: Path, flag: str) -> Config:

    saved = RunDir(run).saved_config()
    if saved is None:
        raise ConfigError(f"{flag}: {run} holds no fedit run (no config.yaml)")
    return saved


def personal_adapter(run_dir: Path, saved: Config, client: int) -> Path:
    """``RUN/personal/client_NNN`` of a simulation run with personalization (one-line errors otherwise)."""
    from fedit.runners.personal import INDEX, PERSONAL_DIR, client_folder

    if saved.personalization.personalization == "none":
        raise ConfigError(f"--client {client}: {run_dir} was trained without --personalization, so it has no "
                          "personal adapters; use the global adapter (omit --client)")
    index = run_dir / PERSONAL_DIR / INDEX
    if not index.is_file():
        raise ConfigError(f"--client {client}: {run_dir} has no personal/ folder: a simulation that has not "
                          f"finished (finish it with `fedit run --out {run_dir} --resume`), or a Flower run, whose "
                          "nodes keep their personal adapters (their personal-dir)")
    clients = json.loads(index.read_text())["clients"]
    if client not in clients:
        raise ConfigError(f"--client {client}: {run_dir} has no client {client} (its clients are "
                          f"{min(clients)}..{max(clients)})")
    return client_folder(run_dir, client)


def resolve_source(given: dict[str, Any], *, run: str | None = None, adapter: str | None = None,
                   preset: str = "cpu-demo", client: int | None = None) -> ModelSource:
    """The model a command uses; ``given`` holds the config flags the user passed (flat); ``client``:
    that client's personal adapter of the run (``--client K``)."""
    from fedit.config import load_config

    if client is not None:
        if run is None or adapter is not None:
            raise ConfigError(f"--client {client}: needs --run (a run trained with --personalization) and no "
                              "--adapter")
        adapter = str(personal_adapter(Path(run).expanduser(), _run_config(Path(run).expanduser(), "--run"),
                                       client))
    if run is not None:
        run_dir = Path(run).expanduser()
        base = _run_config(run_dir, "--run")
        path = run_dir / "final" if adapter is None else Path(adapter).expanduser()
        if adapter is None and not (path / ADAPTER_CONFIG).is_file():
            raise ConfigError(f"--run: {run_dir} has no final adapter yet (the run has not finished); pass "
                              f"--adapter {run_dir / 'checkpoints'}/round_NNNN to use a checkpoint, or finish "
                              f"it with `fedit run --out {run_dir} --resume`")
        settings = lora_settings(adapter_meta(path))
        return ModelSource(base.override({**settings, **given}), path, run_dir)
    if adapter is None:
        return ModelSource(load_config(preset).override(given), None, None)
    path = Path(adapter).expanduser()
    meta = adapter_meta(path)
    run_dir = owning_run(path)
    cfg = _run_config(run_dir, "--adapter") if run_dir is not None else load_config(preset)
    settings = dict(lora_settings(meta))
    if "model" not in given and run_dir is None:
        settings["model"] = _adapter_base(meta, path)
    return ModelSource(cfg.override({**settings, **given}), path, run_dir)


def owning_run(path: Path) -> Path | None:
    """The run an adapter folder belongs to: RUN for RUN/final and RUN/checkpoints/round_NNNN."""
    for run in (path.parent, path.parent.parent if path.parent.name == "checkpoints" else None):
        if run is not None and path.name.startswith(("final", "round_")) and (run / "config.yaml").is_file():
            return run
    return None


def _adapter_base(meta: dict[str, Any], path: Path) -> str:
    """The base model an adapter names (``base_model_name_or_path``), checked to exist when it is a path."""
    base = meta.get("base_model_name_or_path")
    file = path / ADAPTER_CONFIG
    if not isinstance(base, str) or not base:
        raise ModelError(f"--adapter: {file} names no base model (base_model_name_or_path); pass --model")
    looks_like_path = base.startswith(("/", "~", ".")) or base.count("/") > 1  # else a hub id: org/name
    if looks_like_path and not Path(base).expanduser().is_dir():
        raise ModelError(f"--adapter: its base model {base} (base_model_name_or_path in {file}) is missing "
                         "(moved cache?); pass --model with the base model it was trained on")
    return base


def load_source_model(source: ModelSource):
    """A Workbench: the base model wrapped with LoRA shaped like the adapter, carrying its weights."""
    from fedit.model import load_adapter_state, set_adapter_state

    bench = build_workbench(source.cfg)
    if source.adapter is not None:
        set_adapter_state(bench.model, load_adapter_state(source.adapter))
        logger.info("adapter %s on %s", source.adapter, bench.base.path)
    bench.model.eval()
    return bench


def evaluate_model(source: ModelSource) -> dict[str, Any]:
    """Held-out response loss/perplexity per category of a model with or without an adapter."""
    from fedit.model import get_adapter_state

    cfg = source.cfg
    if cfg.data.test_data is None:
        raise ConfigError("--test-data: nothing to evaluate on")
    bench = load_source_model(source)
    test = bench.tokenize(load_test(cfg), cfg.data, train_on_prompt=False)
    state = get_adapter_state(bench.model)   # the adapter load_source_model put in (or the initial one)
    result = bench.evaluate(state, test, cfg.federation.eval_batch_size)
    adapter = None if source.adapter is None else str(source.adapter)
    return {"model": cfg.model.model, "adapter": adapter, "test_data": cfg.data.test_data, **result}
