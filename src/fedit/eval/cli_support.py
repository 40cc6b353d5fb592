"""What ``fedit eval`` does: the held-out loss of a base model, an adapter or a run (the model
comes from fedit.eval.source, as for generate, chat and export)."""

from __future__ import annotations

from typing import Any

from fedit.errors import ConfigError
from fedit.eval.source import ModelSource, load_source_model


def evaluate_model(source: ModelSource) -> dict[str, Any]:
    """Held-out response loss/perplexity per category of a model with or without an adapter."""
    from fedit.model import get_adapter_state
    from fedit.runners.common import load_test

    cfg = source.cfg
    if cfg.data.test_data is None:
        raise ConfigError("--test-data: nothing to evaluate on")
    bench = load_source_model(source)
    test = bench.tokenize(load_test(cfg), cfg.data, train_on_prompt=False)
    state = get_adapter_state(bench.model)   # the adapter load_source_model put in (or the initial one)
    result = bench.evaluate(state, test, cfg.federation.eval_batch_size)
    adapter = None if source.adapter is None else str(source.adapter)
    return {"model": cfg.model.model, "adapter": adapter, "test_data": cfg.data.test_data, **result}
