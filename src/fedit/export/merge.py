"""Write an exported model folder: merged (``merge_and_unload`` into the base, saved in the base's
dtype) or the adapter alone, plus tokenizer, chat template, generation config and model card.

The folder is built beside ``--out`` and renamed into place, so a failed export leaves nothing
half-written, and an existing non-empty ``--out`` is never touched.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

from fedit.config import ExportConfig
from fedit.errors import ConfigError
from fedit.runners.source import ADAPTER_CONFIG, ModelSource
from fedit.export.card import write_card
from fedit.fileio import apply_umask, make_temp_dir
from fedit.model import model_origin, resolve_model
from fedit.model.origin import known_hub_id, loadable_hub_id

logger = logging.getLogger(__name__)

ADAPTER_FILES = (ADAPTER_CONFIG, "adapter_model.safetensors")


def _check_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"--out: {out} exists and is not empty; choose another --out")


def export_model(source: ModelSource, out: str | os.PathLike[str], settings: ExportConfig) -> Path:
    """Export ``source`` (which must have an adapter) into ``out``; returns the folder."""
    if source.adapter is None:
        raise ConfigError("--adapter: fedit export needs --run RUN or --adapter DIR")
    out = Path(out).expanduser().absolute()
    _check_out(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    base_path = resolve_model(source.cfg.model.model)
    hub_id = loadable_hub_id(base_path)
    origin = model_origin(source.cfg.model.model, base_path)
    tmp = make_temp_dir(out)   # the umask's mode, not mkdtemp's 0700
    try:
        if settings.merge:
            _merged(source.adapter, base_path, tmp)
        else:
            _adapter_only(source.adapter, base_path, hub_id, tmp)
        write_card(tmp, source, origin, known_hub_id(source.cfg.model.model, base_path), merged=settings.merge)
        apply_umask(tmp)           # safetensors creates its files 0600 whatever the umask says
        if out.exists():
            out.rmdir()   # empty (checked above)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("exported %s to %s", "the merged model" if settings.merge else "the adapter", out)
    return out


def _merged(adapter: Path, base_path: str, out: Path) -> None:
    """Base (its own dtype) + adapter -> merge_and_unload -> a plain transformers folder."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_path, dtype="auto")
    with torch.no_grad():
        merged = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()
    merged.config.use_cache = True   # inference: fedit turns it off only while training
    _generation_config(merged, base_path)
    merged.save_pretrained(out)
    _tokenizer(base_path).save_pretrained(out)
    logger.info("merged %s into %s (%s)", adapter, base_path, str(merged.dtype).removeprefix("torch."))


def _adapter_only(adapter: Path, base_path: str, hub_id: str | None, out: Path) -> None:
    """The PEFT adapter with ``base_model_name_or_path`` portable (the hub id when there is one)."""
    for name in ADAPTER_FILES:
        shutil.copy2(adapter / name, out / name)
    meta = json.loads((out / ADAPTER_CONFIG).read_text())
    if hub_id is not None:
        meta["base_model_name_or_path"] = hub_id
    else:
        logger.warning("the base model %s is a local folder, not a hub model: the exported adapter names "
                       "that path; whoever loads it needs the same base model", base_path)
    (out / ADAPTER_CONFIG).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    _tokenizer(base_path).save_pretrained(out)


def _tokenizer(base_path: str):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _generation_config(model, base_path: str) -> None:
    """The base's generation config (or transformers' default) with eos and pad ids filled in."""
    from transformers import GenerationConfig

    try:
        gen = GenerationConfig.from_pretrained(base_path)
    except OSError:
        gen = GenerationConfig.from_model_config(model.config)
    if gen.eos_token_id is None:
        gen.eos_token_id = model.config.eos_token_id
    if gen.pad_token_id is None:
        gen.pad_token_id = model.config.pad_token_id if model.config.pad_token_id is not None else gen.eos_token_id
    model.generation_config = gen
