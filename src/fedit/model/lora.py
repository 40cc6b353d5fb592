"""LoRA wrapping and the wire format: adapter state dicts in, adapter state dicts out.

An :data:`AdapterState` is what crosses the wire between server and clients: peft's adapter
state dict (``get_peft_model_state_dict`` keys, e.g.
``base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight``) as fp32 CPU tensors. A
resident model swaps adapters many times per round, so get/set go through a name -> parameter
map built once per model (a few milliseconds for SmolLM2 r=8 all-linear, against ~30 ms for
peft's ``set_peft_model_state_dict``). Saved adapters are standard PEFT folders that
``peft.AutoPeftModelForCausalLM.from_pretrained`` loads with nothing from fedit.
"""

from __future__ import annotations

import copy
import logging
import shutil
import warnings
import weakref
from collections.abc import Mapping
from pathlib import Path

import peft
import torch
from safetensors.torch import load_file, save_file

from fedit.errors import ConfigError, ModelError, UpdateError
from fedit.fileio import apply_umask, make_temp_dir, remove_stale_temporaries, replace_dir

log = logging.getLogger(__name__)

AdapterState = dict[str, torch.Tensor]
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"

# model -> {adapter name: {wire key: parameter}}; weak so dropping a model frees its entry. A
# resident model may hold several adapters (one per client layout, fedit.model.client_adapters).
_PARAM_MAPS: weakref.WeakKeyDictionary[torch.nn.Module, dict[str, dict[str, torch.nn.Parameter]]]
_PARAM_MAPS = weakref.WeakKeyDictionary()


def add_lora(
    model: torch.nn.Module, *, r: int, alpha: int, dropout: float, targets: str | list[str], seed: int
) -> peft.PeftModel:
    """Wrap ``model`` with a fresh LoRA adapter whose initial weights depend only on ``seed``.

    ``targets`` is ``"all-linear"`` (every linear layer but the output head) or module names as
    a list or comma-separated string. The global RNG is left untouched. LoRA layers are injected
    into ``model`` in place: wrap a freshly loaded base model, once.
    """
    if r < 1:
        raise ConfigError(f"--lora-r {r}: must be a positive integer")
    if alpha <= 0:
        raise ConfigError(f"--lora-alpha {alpha}: must be positive")
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"--lora-dropout {dropout}: must be in [0, 1)")
    target_modules = _parse_targets(model, targets)
    config = peft.LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules, task_type="CAUSAL_LM"
    )
    with torch.random.fork_rng(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        torch.manual_seed(seed)
        try:
            peft_model = peft.get_peft_model(model, config)
        except ValueError as exc:  # peft's NoMatchingPeftModuleError and friends
            raise ConfigError(f"--lora-targets {targets!r}: {exc}".splitlines()[0]) from exc
    n_lora = sum(p.numel() for p in _param_map(peft_model).values())
    resolved = peft_model.peft_config[peft_model.active_adapter].target_modules
    kinds = sorted({name.rsplit(".", 1)[-1] for name in resolved})
    log.info("LoRA r=%d alpha=%g on %d modules (%s): %d trainable params", r, alpha, len(resolved),
             ",".join(kinds), n_lora)
    return peft_model


def _parse_targets(model: torch.nn.Module, targets: str | list[str]) -> str | list[str]:
    """Normalise ``--lora-targets`` and check every named module exists in ``model``."""
    if isinstance(targets, str) and targets.strip() == "all-linear":
        return "all-linear"
    names = [t.strip() for t in targets.split(",")] if isinstance(targets, str) else list(targets)
    names = [n for n in names if n]
    if not names:
        raise ConfigError("--lora-targets: empty; use all-linear or module names like q_proj,v_proj")
    modules = [name for name, _ in model.named_modules()]
    for target in names:
        if not any(m == target or m.endswith("." + target) for m in modules):
            raise ConfigError(f"--lora-targets: no module named {target!r} in the base model")
    return names


def _param_map(model: peft.PeftModel, adapter: str | None = None) -> dict[str, torch.nn.Parameter]:
    """Wire key -> LoRA parameter of ``adapter`` (default: the active one), built once per model
    and adapter."""
    adapter = adapter or model.active_adapter
    maps = _PARAM_MAPS.get(model)
    if maps is None:
        maps = _PARAM_MAPS[model] = {}
    if adapter in maps:
        return maps[adapter]
    by_storage = {p.data_ptr(): p for p in model.parameters()}
    mapping = {}
    for key, tensor in peft.get_peft_model_state_dict(model, adapter_name=adapter).items():
        param = by_storage.get(tensor.data_ptr())
        if param is None or param.shape != tensor.shape:
            raise ModelError(f"adapter entry {key} is not a parameter of the model (unsupported peft setup)")
        mapping[key] = param
    maps[adapter] = mapping
    return mapping


def adapter_parameters(model: peft.PeftModel, adapter: str | None = None) -> dict[str, torch.nn.Parameter]:
    """The LoRA parameters of ``adapter`` (default: the active one), by wire key (cached per model)."""
    return _param_map(model, adapter)


def get_adapter_state(model: peft.PeftModel, adapter: str | None = None) -> AdapterState:
    """A copy of the adapter's weights (default: the active adapter): detached, contiguous fp32 CPU tensors."""
    return {
        key: p.detach().to(device="cpu", dtype=torch.float32, copy=True).contiguous()
        for key, p in _param_map(model, adapter).items()
    }


def check_adapter_state(reference: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor]) -> None:
    """Raise :class:`UpdateError` unless ``state`` has the keys and shapes of ``reference``,
    floating dtypes and only finite values."""
    missing = [k for k in reference if k not in state]
    if missing:
        raise UpdateError(f"adapter update is missing {len(missing)} key(s), first: {missing[0]}")
    unexpected = [k for k in state if k not in reference]
    if unexpected:
        raise UpdateError(f"adapter update has {len(unexpected)} unexpected key(s), first: {unexpected[0]}")
    for key, ref in reference.items():
        value = state[key]
        if not isinstance(value, torch.Tensor) or not value.is_floating_point():
            kind = value.dtype if isinstance(value, torch.Tensor) else type(value).__name__
            raise UpdateError(f"adapter update {key}: expected a floating-point tensor, got {kind}")
        if value.shape != ref.shape:
            raise UpdateError(f"adapter update {key}: shape {tuple(value.shape)}, expected {tuple(ref.shape)}")
    # Values are checked as the server uses them, in float32: a float64 1e300 is finite, its cast is
    # not. One fused check first (a float32 sum is non-finite if any cast element is, or if it
    # overflows); per tensor only to name the key.
    if state and not torch.isfinite(torch.stack([v.sum(dtype=torch.float32) for v in state.values()])).all():
        for key, value in state.items():
            if not torch.isfinite(value.to(torch.float32)).all():
                raise UpdateError(f"adapter update {key}: contains NaN or infinite values (as float32)")


def set_adapter_state(model: peft.PeftModel, state: Mapping[str, torch.Tensor]) -> None:
    """Validate ``state`` and copy it in place into the model's LoRA parameters."""
    params = _param_map(model)
    check_adapter_state(params, state)
    with torch.no_grad():
        for key, param in params.items():
            param.copy_(state[key])


def adapter_config(model: peft.PeftModel, base_model_path: str) -> peft.LoraConfig:
    """The PEFT config an adapter folder of ``model`` carries: ``base_model_path`` (what
    ``resolve_model`` returned) as ``base_model_name_or_path``, made absolute for local folders,
    so the folder loads with plain peft anywhere on this machine."""
    base = str(Path(base_model_path).resolve()) if Path(base_model_path).is_dir() else base_model_path
    config = copy.deepcopy(model.peft_config[model.active_adapter])
    config.base_model_name_or_path = base
    config.inference_mode = True
    if isinstance(config.target_modules, set):  # sorted, so the JSON is the same in every process
        config.target_modules = sorted(config.target_modules)
    return config


def write_adapter_files(folder: Path, config: peft.LoraConfig, state: Mapping[str, torch.Tensor]) -> None:
    """``adapter_config.json`` and ``adapter_model.safetensors`` of ``state`` into ``folder``."""
    tensors = {k: v.detach().to(device="cpu", dtype=torch.float32).contiguous() for k, v in state.items()}
    config.save_pretrained(str(folder))
    save_file(tensors, str(folder / ADAPTER_WEIGHTS), metadata={"format": "pt"})


def save_adapter(model: peft.PeftModel, state: Mapping[str, torch.Tensor], out_dir: str | Path,
                 base_model_path: str, *, tokenizer=None, card: str | None = None) -> Path:
    """Write ``state`` as a standard PEFT adapter folder, replacing ``out_dir`` atomically.

    ``tokenizer`` (with its chat template) is saved beside the adapter, so
    ``AutoTokenizer.from_pretrained(out_dir)`` works as for TRL's or litgpt's outputs; ``card``
    becomes the folder's ``README.md`` (model card). See :func:`adapter_config` for the base path.
    """
    check_adapter_state(_param_map(model), state)
    out = Path(out_dir).expanduser().absolute()
    config = adapter_config(model, base_model_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out.parent)
    tmp = make_temp_dir(out)
    try:
        write_adapter_files(tmp, config, state)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        if card is not None:
            (tmp / "README.md").write_text(card)
        apply_umask(tmp)
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def load_adapter_state(path: str | Path) -> AdapterState:
    """Read the adapter weights of a PEFT adapter folder (or its ``.safetensors`` file).

    Keys come back sorted (safetensors order), not in model order; match them by name.
    """
    path = Path(path).expanduser()
    file = path / ADAPTER_WEIGHTS if path.is_dir() else path
    if not file.is_file():
        raise ModelError(f"--adapter {path}: no {ADAPTER_WEIGHTS} found (expected a PEFT adapter folder)")
    try:
        state = load_file(str(file))
    except Exception as exc:  # safetensors raises its own error types for damaged files
        raise ModelError(f"--adapter {file}: cannot read safetensors ({exc})".splitlines()[0]) from exc
    return {k: v.to(torch.float32).contiguous() for k, v in state.items()}
