"""What ``fedit eval`` and ``fedit generate`` do: a base model, optionally with an adapter."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable

from fedit.config import Config
from fedit.errors import ConfigError
from fedit.eval.generate import generate_answers
from fedit.model import load_adapter_state, set_adapter_state

logger = logging.getLogger(__name__)


def target(run: str | None, adapter: str | None, with_flags: Callable[[Config], Config], preset: str, *,
           model_given: bool) -> tuple[Config, str | None]:
    """(config, adapter) of ``fedit eval``/``generate``; ``with_flags`` applies the flags given.

    ``--run RUN``: RUN/config.yaml (model, template, max length, test data and records, seed)
    and RUN/final, so the loss is exactly the one the run logged for its last round. Otherwise
    the default preset; a lone ``--adapter`` brings its base model from adapter_config.json.
    """
    from fedit.config import load_config
    from fedit.runners.rundir import RunDir

    if run is not None:
        saved = RunDir(Path(run)).saved_config()
        if saved is None:
            raise ConfigError(f"--run: {run} holds no fedit run (no config.yaml)")
        if adapter is None:
            adapter = str(Path(run) / "final")
            if not (Path(adapter) / "adapter_config.json").is_file():
                raise ConfigError(f"--run: {run} has no final adapter yet (the run has not finished); pass "
                                  f"--adapter {Path(run) / 'checkpoints'}/round_NNNN to use a checkpoint")
        return with_flags(saved), adapter
    cfg = with_flags(load_config(preset))
    if adapter is not None and not model_given:
        cfg = cfg.override({"model": adapter_base_model(Path(adapter))})
    return cfg, adapter


def adapter_base_model(path: Path) -> str:
    """The base model an adapter folder names (``base_model_name_or_path``), checked to exist."""
    meta_file = path / "adapter_config.json"
    if not meta_file.is_file():
        raise ConfigError(f"--adapter: {path} is not a PEFT adapter folder (no adapter_config.json)")
    try:
        base = json.loads(meta_file.read_text()).get("base_model_name_or_path")
    except ValueError as exc:
        raise ConfigError(f"--adapter: {meta_file} is not valid JSON ({exc})") from None
    if not isinstance(base, str) or not base:
        raise ConfigError(f"--adapter: {meta_file} names no base model (base_model_name_or_path); pass --model")
    looks_like_path = base.startswith(("/", "~", ".")) or base.count("/") > 1  # else a hub id: org/name
    if looks_like_path and not Path(base).expanduser().is_dir():
        raise ConfigError(f"--adapter: its base model {base} (base_model_name_or_path in {meta_file}) is missing; "
                          "pass --model with the base model it was trained on")
    return base


def _adapted_workbench(cfg: Config, adapter: str | None):
    """The base model, wrapped with LoRA shaped like ``adapter`` and loaded with its weights."""
    from fedit.runners.common import build_workbench

    if adapter is not None:
        path = Path(adapter)
        if not (path / "adapter_config.json").is_file():
            raise ConfigError(f"--adapter: {adapter} is not a PEFT adapter folder (no adapter_config.json)")
        cfg = cfg.override(_lora_settings(path))
    bench = build_workbench(cfg)
    state = bench.initial_state if adapter is None else load_adapter_state(adapter)
    set_adapter_state(bench.model, state)
    return bench, state, cfg


def _lora_settings(path: Path) -> dict[str, Any]:
    meta = json.loads((path / "adapter_config.json").read_text())
    targets = meta.get("target_modules")
    if isinstance(targets, list):
        targets = ",".join(sorted(targets))
    return {"lora_r": int(meta["r"]), "lora_alpha": int(meta["lora_alpha"]),
            "lora_targets": targets or "all-linear"}


def evaluate_model(cfg: Config, adapter: str | None) -> dict[str, Any]:
    """Held-out response loss/perplexity per category of a model with or without an adapter."""
    from fedit.runners.common import load_test

    if cfg.data.test_data is None:
        raise ConfigError("--test-data: nothing to evaluate on")
    bench, state, cfg = _adapted_workbench(cfg, adapter)
    test = bench.tokenize(load_test(cfg), cfg.data, train_on_prompt=False)
    result = bench.evaluate(state, test, cfg.federation.eval_batch_size)
    return {"model": cfg.model.model, "adapter": adapter, "test_data": cfg.data.test_data, **result}


def answer(cfg: Config, adapter: str | None, instruction: str, context: str, max_new_tokens: int) -> str:
    """A greedy answer to one instruction."""
    if max_new_tokens < 1:
        raise ConfigError(f"--max-new-tokens: must be at least 1, got {max_new_tokens}")
    bench, _, cfg = _adapted_workbench(cfg, adapter)
    return generate_answers(bench.model, bench.tokenizer, [(instruction, context)],
                            template=cfg.data.template, device=bench.base.device,
                            autocast_dtype=bench.base.autocast_dtype, max_new_tokens=max_new_tokens)[0]
