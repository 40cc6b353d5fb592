"""What ``fedit eval`` and ``fedit generate`` do: a base model, optionally with an adapter."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from fedit.config import Config
from fedit.errors import ConfigError
from fedit.eval.generate import generate_answers
from fedit.model import load_adapter_state, set_adapter_state

logger = logging.getLogger(__name__)


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
    import json

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
