"""Which model a command after training uses: ``--run RUN`` or ``--adapter DIR`` -> base model +
adapter + the settings it was trained with. One place for ``fedit generate``, ``chat`` and ``export``.

- ``--run RUN``: the run's ``config.yaml`` (base model, template, precision...) and ``RUN/final``.
- ``--adapter DIR``: the base model is the adapter's ``base_model_name_or_path`` (from
  ``adapter_config.json``) unless ``--model`` is given; when DIR is a run's ``final/``, that run's
  settings (template...) are used as with ``--run``.
- neither: the base model alone (``--model``, default SmolLM2).

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
    from fedit.runners.rundir import RunDir

    saved = RunDir(run).saved_config()
    if saved is None:
        raise ConfigError(f"{flag}: {run} is not a fedit run directory (no config.yaml)")
    return saved


def resolve_source(given: dict[str, Any], *, run: str | None = None, adapter: str | None = None) -> ModelSource:
    """The model a command uses; ``given`` holds the config flags the user passed (flat)."""
    if run is not None and adapter is not None:
        raise ConfigError("--run: give either --run or --adapter, not both")
    if run is not None:
        run_dir = Path(run).expanduser()
        base = _run_config(run_dir, "--run")
        final = run_dir / "final"
        if not (final / ADAPTER_CONFIG).is_file():
            raise ConfigError(f"--run: {run_dir} has no final adapter yet ({final}); finish the run with "
                              f"`fedit run --out {run_dir} --resume`")
        return ModelSource(base.override(given), final, run_dir)
    if adapter is None:
        return ModelSource(Config().override(given), None, None)
    path = Path(adapter).expanduser()
    meta = adapter_meta(path)
    run_dir = path.parent if path.name == "final" and (path.parent / "config.yaml").is_file() else None
    cfg = _run_config(run_dir, "--adapter") if run_dir is not None else Config()
    settings = dict(lora_settings(meta))
    if "model" not in given and run_dir is None:
        settings["model"] = _adapter_base(meta, path)
    return ModelSource(cfg.override({**settings, **given}), path, run_dir)


def _adapter_base(meta: dict[str, Any], path: Path) -> str:
    base = meta.get("base_model_name_or_path")
    if not isinstance(base, str) or not base:
        raise ModelError(f"--adapter: {path / ADAPTER_CONFIG} names no base model; pass --model")
    if base.startswith("/") and not Path(base).exists():
        raise ModelError(f"--adapter: its base model {base} is not there any more (moved cache?); pass --model")
    return base


def load_source_model(source: ModelSource):
    """A Workbench: the base model wrapped with LoRA shaped like the adapter, carrying its weights."""
    from fedit.model import load_adapter_state, set_adapter_state
    from fedit.runners.common import build_workbench

    bench = build_workbench(source.cfg)
    if source.adapter is not None:
        set_adapter_state(bench.model, load_adapter_state(source.adapter))
        logger.info("adapter %s on %s", source.adapter, bench.base.path)
    bench.model.eval()
    return bench
