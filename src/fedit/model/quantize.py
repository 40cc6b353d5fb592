"""A 4-bit (NF4) or 8-bit (LLM.int8) frozen base model through bitsandbytes (``--quantize``, QLoRA).

Only the base model's linear layers are quantized (not the output head or the embeddings); LoRA
factors stay in full precision on top of them, so adapters, their wire format, checkpoints and
resume are exactly as without quantization. The adapter's ``base_model_name_or_path`` still names
the full-precision folder; ``fedit export`` merges into the de-quantized weights the run trained
against (:func:`dequantize`). bitsandbytes is optional (``pip install 'fedit[quant]'``); where it is
missing or cannot run on the chosen device, a one-line error says so before anything is loaded.
"""

from __future__ import annotations

import functools
import logging
import warnings
from typing import Any

import torch

from fedit.errors import ConfigError

log = logging.getLogger(__name__)

QUANTIZE = ("none", "nf4", "int8")
INSTALL = "pip install 'fedit[quant]'"
SKIP_MODULES = ["lm_head"]  # the output head stays in full precision (QLoRA's choice; tied to the embeddings)


def _bitsandbytes(kind: str) -> Any:
    try:
        import bitsandbytes
    except ImportError as exc:  # also a bitsandbytes that fails to import on this platform
        detail = "" if isinstance(exc, ModuleNotFoundError) else f" ({str(exc).splitlines()[0]})"
        raise ConfigError(f"--quantize {kind}: needs bitsandbytes, which is not installed{detail}: "
                          f"{INSTALL}, or --quantize none") from exc
    _quiet()
    return bitsandbytes


def _quiet() -> None:
    """bitsandbytes warns on every 8-bit matmul that its inputs are cast to fp16: not once per layer."""
    warnings.filterwarnings("ignore", message=r"MatMul8bitLt: inputs will be cast")
    # its batch-1 CPU kernel has no autograd registration; the backward is its own (checked exact in
    # tests/unit/test_quantize.py)
    warnings.filterwarnings("ignore", message=r"bitsandbytes::gemv_4bit: an autograd kernel")


@functools.lru_cache(maxsize=8)
def check_platform(kind: str, device_type: str) -> None:
    """Refuse, in one line, a ``--quantize`` that bitsandbytes cannot run on ``device_type``:
    quantize a small layer there and run it forward and backward."""
    if kind not in QUANTIZE:
        raise ConfigError(f"--quantize {kind!r}: expected one of {', '.join(QUANTIZE)}")
    if kind == "none":
        return
    bnb = _bitsandbytes(kind)
    try:
        layer = torch.nn.Linear(64, 64, bias=False)
        quantized = _quantized_linear(bnb, layer, kind, torch.float32).to(device_type)
        x = torch.randn(2, 64, device=device_type, requires_grad=True)
        quantized(x).sum().backward()
    except Exception as exc:  # an unsupported device, a missing native library, ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"--quantize {kind}: bitsandbytes {getattr(bnb, '__version__', '?')} cannot run on "
                          f"{device_type} here ({first}); use --quantize none") from exc


def quantization_config(kind: str, compute_dtype: torch.dtype) -> Any:
    """transformers' BitsAndBytesConfig for ``--quantize`` (None for none)."""
    if kind == "none":
        return None
    from transformers import BitsAndBytesConfig

    if kind == "nf4":  # QLoRA's settings: NF4 with nested (double) quantization of the scales
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=compute_dtype, llm_int8_skip_modules=SKIP_MODULES)
    return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=SKIP_MODULES)


def load_quantized(path: str, kind: str, device: torch.device, compute_dtype: torch.dtype) -> Any:
    """``from_pretrained`` with the linear layers quantized on ``device`` (checked first)."""
    from transformers import AutoModelForCausalLM

    check_platform(kind, device.type)
    # Non-quantized weights (embeddings, norms, head) in the compute dtype, as without --quantize.
    model = AutoModelForCausalLM.from_pretrained(path, quantization_config=quantization_config(kind, compute_dtype),
                                                 dtype=compute_dtype, device_map={"": str(device)})
    return _one_cpu_format(model)


def _one_cpu_format(model: torch.nn.Module) -> torch.nn.Module:
    """Keep 4-bit weights in one format for the life of the process. On CPUs with AVX512-BF16,
    bitsandbytes repacks a 4-bit weight for its inference kernel at the first no-grad forward in eval
    mode, and training after that computes differently: a run that evaluated before training (round 0)
    and its resume (which does not) then drifted apart (1e-3 after 2 rounds on tiny-random). Off here,
    so results do not depend on what ran first (tests/unit/test_quantize.py: resume is bit-identical)."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
    return model


def _quantized_linear(bnb: Any, layer: torch.nn.Linear, kind: str, compute_dtype: torch.dtype) -> torch.nn.Module:
    bias = layer.bias is not None
    if kind == "nf4":
        q = bnb.nn.Linear4bit(layer.in_features, layer.out_features, bias=bias, compute_dtype=compute_dtype,
                              quant_type="nf4", compress_statistics=True, device="meta")
        q.weight = bnb.nn.Params4bit(layer.weight.data, requires_grad=False, quant_type="nf4",
                                     compress_statistics=True)
    else:
        q = bnb.nn.Linear8bitLt(layer.in_features, layer.out_features, bias=bias, has_fp16_weights=False,
                                threshold=0.0, device="meta")
        q.weight = bnb.nn.Int8Params(layer.weight.data, requires_grad=False, has_fp16_weights=False)
    if bias:
        q.bias = torch.nn.Parameter(layer.bias.data, requires_grad=False)
    return q


def quantize_linear_layers(model: torch.nn.Module, kind: str, compute_dtype: torch.dtype) -> torch.nn.Module:
    """Replace every linear layer but the head by its bitsandbytes counterpart, in place, on the
    layer's own device (for models built in memory, e.g. the random Llamas of benchmarks/gpu.py)."""
    bnb = _bitsandbytes(kind)
    for _, module in list(model.named_modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, torch.nn.Linear) and name not in SKIP_MODULES:
                device = child.weight.device
                setattr(module, name, _quantized_linear(bnb, child, kind, compute_dtype).to(device))
                del child
    # what from_pretrained's quantizer sets: peft then wraps these layers with its bitsandbytes LoRA layers
    setattr(model, "is_loaded_in_4bit" if kind == "nf4" else "is_loaded_in_8bit", True)
    return _one_cpu_format(model)


def dequantize(model: Any) -> Any:
    """The model with its quantized layers turned back into plain linear layers of the weights it
    computes with (what ``fedit export`` merges the adapter into)."""
    if getattr(model, "hf_quantizer", None) is not None:
        return model.dequantize()
    return model
