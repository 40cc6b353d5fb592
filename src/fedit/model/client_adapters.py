"""One resident model, several LoRA layouts: a client that trains a lower rank or fewer modules
trains a real peft adapter of its own on the resident PeftModel.

The global adapter is peft's ``default`` adapter (rank r = ``--lora-r``, the modules of
``--lora-targets``). A client of rank r_k on some of those modules gets one more adapter on the same
model, ``add_adapter``-ed on first use and switched in (``set_adapter``) for its job only; a
module outside its layout then runs the bare base layer, exactly as in a model that has only that
adapter. So the client trains exactly ``peft.LoraConfig(r=r_k, lora_alpha=alpha * r_k / r,
target_modules=its modules)`` on its own (tests/integration/test_heterogeneous.py checks it).

Scale: every client adapter keeps the global scale s = alpha / r (its alpha is alpha * r_k / r), so
its update s * B_k A_k is the truncation of the global adapter's update to its first r_k
components, and padding it back with zeros gives the same product: truncation and padding are
exact at any rank (the server's rules in fedit.server.lora_aggregate rely on it).

Values: before every job the adapter gets the job's tensors; an entry the job does not carry
(A under ``--lora-aggregation ffa``) gets the global adapter's seeded initialisation, truncated, and is
not trained: a client trains exactly the keys its job carries.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import peft
import torch

from fedit.errors import ConfigError, UpdateError
from fedit.model.lora import AdapterState, adapter_parameters, check_adapter_state

DEFAULT = "default"


def global_modules(model: peft.PeftModel) -> list[str]:
    """Names (as peft matches them) of the modules the global adapter adapts, in model order."""
    return [name for name, module in model.base_model.model.named_modules()
            if isinstance(module, peft.tuners.lora.LoraLayer) and DEFAULT in module.lora_A]


def client_modules(model: peft.PeftModel, targets: str) -> list[str]:
    """The global adapter's modules that ``targets`` (all-linear or a comma list) selects, by
    peft's rule for lists (the name equals a target or ends with ``.target``)."""
    modules = global_modules(model)
    if targets.strip() == "all-linear":
        return modules
    names = [t.strip() for t in targets.split(",") if t.strip()]
    for target in names:
        if not any(m == target or m.endswith("." + target) for m in modules):
            wanted = model.peft_config[DEFAULT].target_modules
            shown = ",".join(sorted(wanted)) if isinstance(wanted, (set, list)) else wanted
            raise ConfigError(f"--client-targets: {target!r} is not a module of the global adapter "
                              f"(--lora-targets: {shown})")
    return [m for m in modules if any(m == t or m.endswith("." + t) for t in names)]


def check_client_targets(model: peft.PeftModel, targets: list[str]) -> None:
    """Raise ConfigError (naming --client-targets) unless every list selects global modules."""
    for t in sorted(set(targets)):
        client_modules(model, t)


def ensure_adapter(model: peft.PeftModel, rank: int | None, targets: str) -> str:
    """The name of the resident adapter of this layout (``default`` for the global one), added on first use."""
    glob = model.peft_config[DEFAULT]
    rank = glob.r if rank is None else rank
    if not 1 <= rank <= glob.r:
        raise ConfigError(f"lora_rank {rank}: must be between 1 and the global rank --lora-r {glob.r}")
    modules = client_modules(model, targets)
    if rank == glob.r and modules == global_modules(model):
        return DEFAULT
    name = f"fedit_r{rank}_" + hashlib.sha1(",".join(modules).encode()).hexdigest()[:10]
    if name not in model.peft_config:
        config = peft.LoraConfig(r=rank, lora_alpha=glob.lora_alpha * rank / glob.r, lora_dropout=glob.lora_dropout,
                                 target_modules=modules, task_type=glob.task_type)
        with torch.random.fork_rng(), warnings.catch_warnings():  # its drawn init is overwritten before use
            warnings.simplefilter("ignore")
            model.add_adapter(name, config)
    return name


def load_job_state(params: Mapping[str, torch.nn.Parameter], job_state: Mapping[str, torch.Tensor],
                   initial: Mapping[str, torch.Tensor]) -> None:
    """Copy the job's tensors into the adapter; entries it does not carry get the global seeded
    init truncated to their shape. UpdateError if the job does not fit this adapter."""
    extra = [k for k in job_state if k not in params]
    if extra:
        raise UpdateError(f"job entry {extra[0]} is not part of this client's adapter")
    check_adapter_state({k: params[k] for k in job_state}, job_state)
    with torch.no_grad():
        for key, param in params.items():
            if key in job_state:
                param.copy_(job_state[key])
            else:
                param.copy_(initial[key][tuple(slice(0, n) for n in param.shape)])


@contextmanager
def client_adapter(model: peft.PeftModel, layout: tuple[int | None, str] | None, job_state: AdapterState,
                   initial: AdapterState) -> Iterator[dict[str, torch.nn.Parameter]]:
    """For one job: the adapter of ``layout`` (rank, targets; None: the global one) active, loaded
    with ``job_state``, only the job's keys trainable; yields those parameters by wire key (model
    order). Afterwards the global adapter is active again."""
    name = DEFAULT if layout is None else ensure_adapter(model, *layout)
    switched = name != model.active_adapter
    if switched:
        model.set_adapter(name)
    params = adapter_parameters(model, name)
    try:
        load_job_state(params, job_state, initial)
        for key, param in params.items():
            param.requires_grad_(key in job_state)
        yield {k: p for k, p in params.items() if k in job_state}
    finally:
        if switched or any(not p.requires_grad for p in params.values()):
            model.set_adapter(DEFAULT)  # also makes the global adapter's parameters trainable again
