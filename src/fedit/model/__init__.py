"""Base models and LoRA adapters: resolve and load a base model, wrap it with LoRA, and move
adapter weights in and out of it (the wire format between server and clients)."""

import logging as _logging

# bitsandbytes (the quant extra), imported by peft, tries on AVX512-BF16 CPUs to fetch an optional kernel
# from the Hugging Face hub and warns on every start when it cannot (offline); its own kernels run then.
_logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(_logging.ERROR)

from fedit.model.client_adapters import check_client_targets, client_adapter, ensure_adapter
from fedit.model.load import BaseModel, autocast, load_base_model, resolve_device, resolve_precision
from fedit.model.lora import (
    AdapterState,
    adapter_config,
    adapter_parameters,
    add_lora,
    check_adapter_state,
    get_adapter_state,
    load_adapter_state,
    save_adapter,
    set_adapter_state,
    write_adapter_files,
)
from fedit.model.quantize import QUANTIZE, check_platform, dequantize, quantize_linear_layers
from fedit.model.resolve import DEFAULT_MODEL, TINY_RANDOM, cache_dir, model_origin, resolve_model

__all__ = [
    "DEFAULT_MODEL",
    "TINY_RANDOM",
    "QUANTIZE",
    "AdapterState",
    "BaseModel",
    "adapter_config",
    "adapter_parameters",
    "add_lora",
    "autocast",
    "cache_dir",
    "check_adapter_state",
    "check_client_targets",
    "check_platform",
    "client_adapter",
    "dequantize",
    "ensure_adapter",
    "get_adapter_state",
    "load_adapter_state",
    "load_base_model",
    "model_origin",
    "quantize_linear_layers",
    "resolve_device",
    "resolve_model",
    "resolve_precision",
    "save_adapter",
    "set_adapter_state",
    "write_adapter_files",
]
