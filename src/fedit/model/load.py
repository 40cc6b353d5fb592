"""Load the frozen base model and its tokenizer on the chosen device and precision.

The base model is loaded once per process and never trained: only LoRA adapters change, so
every parameter here is frozen. On CUDA with bf16 the weights themselves are bf16 (half the
memory); on CPU they stay fp32 and bf16 is applied through autocast where the CPU supports it
natively (AVX512-BF16 or AMX), which keeps the optimizer's fp32 LoRA maths exact.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from fedit.errors import ConfigError, ModelError
from fedit.model.quantize import check_platform, load_quantized
from fedit.model.resolve import first_line, resolve_model

log = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16")


def resolve_device(spec: str) -> torch.device:
    """Map ``--device auto|cpu|cuda`` to a device; ``auto`` picks CUDA when available."""
    if spec not in DEVICES:
        raise ConfigError(f"--device {spec!r}: expected one of {', '.join(DEVICES)}")
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available (use --device cpu or auto)")
    return torch.device(spec)


def cpu_has_native_bf16() -> bool:
    """True when this CPU computes bf16 in hardware (AVX512-BF16 or AMX), so autocast pays off."""
    cpu = torch.cpu
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        check = getattr(cpu, probe, None)
        if check is not None and check():
            return True
    return False


def resolve_precision(spec: str, device: torch.device) -> torch.dtype | None:
    """Map ``--precision auto|fp32|bf16`` to the autocast dtype (``None`` means plain fp32)."""
    if spec not in PRECISIONS:
        raise ConfigError(f"--precision {spec!r}: expected one of {', '.join(PRECISIONS)}")
    if spec == "fp32":
        return None
    if device.type == "cuda":
        supported = torch.cuda.is_bf16_supported()
        where = "this CUDA device"
    else:
        supported = cpu_has_native_bf16()
        where = "this CPU (no AVX512-BF16/AMX)"
    if spec == "bf16" and not supported:
        raise ConfigError(f"--precision bf16: not supported on {where}; use --precision fp32 or auto")
    return torch.bfloat16 if supported else None


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager[Any]:
    """Autocast to ``dtype`` on ``device``, or do nothing when ``dtype`` is None (fp32)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


@dataclass
class BaseModel:
    """A frozen base model ready for LoRA, with what is needed to run and save it."""

    model: Any  # transformers PreTrainedModel (a causal LM)
    tokenizer: Any  # transformers tokenizer, pad_token set
    path: str  # what resolve_model returned: the folder (or hub id) adapters name as their base
    device: torch.device
    autocast_dtype: torch.dtype | None  # bf16 when autocasting, None for plain fp32


def load_base_model(name: str, device: str = "auto", precision: str = "auto", quantize: str = "none") -> BaseModel:
    """Resolve ``name``, load tokenizer and model frozen in eval mode on the chosen device
    (its linear layers in 4 or 8 bits with ``quantize``, fedit.model.quantize)."""
    dev = resolve_device(device)
    dtype = resolve_precision(precision, dev)
    check_platform(quantize, dev.type)   # before anything is loaded: one line where it cannot run
    path = resolve_model(name)
    # Frozen base weights are stored in bf16 whenever we autocast to bf16 (CPU too): autocast would
    # cast them to bf16 for every matmul anyway, and recasting frozen weights is never cached.
    # Measured on SmolLM2 here: ~10 % faster steps and half the memory. LoRA weights stay fp32.
    weights_dtype = torch.bfloat16 if dtype == torch.bfloat16 else torch.float32
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        if quantize == "none":
            model = AutoModelForCausalLM.from_pretrained(path, dtype=weights_dtype)
        else:
            model = load_quantized(path, quantize, dev, weights_dtype)
    except (OSError, ValueError, KeyError) as exc:
        if Path(path).is_dir():
            raise ModelError(f"cannot load model folder {path}: {first_line(exc)}") from exc
        raise ModelError(
            f"cannot load {name!r}: not a local folder/.gguf and the Hugging Face hub is unreachable; "
            "download it elsewhere and pass --model /path/to/folder (or a .gguf file)"
        ) from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.config.use_cache = False  # training never reuses the KV cache; generate() can ask for it
    if quantize == "none":   # a quantized model is placed by from_pretrained and cannot be moved
        model.to(dev)
    model.eval()
    model.requires_grad_(False)
    n_params = sum(p.numel() for p in model.parameters())
    log.info(
        "base model %s (%.1f M params) on %s, weights %s, autocast %s",
        path, n_params / 1e6, dev,
        str(weights_dtype).removeprefix("torch.") if quantize == "none" else f"{quantize} (linear layers)",
        str(dtype).removeprefix("torch.") if dtype else "off",
    )
    return BaseModel(model=model, tokenizer=tokenizer, path=path, device=dev, autocast_dtype=dtype)

