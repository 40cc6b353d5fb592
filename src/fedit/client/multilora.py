"""Which clients of a round train together in shared passes (multi-LoRA on the fused engine).

The fused engine (fedit.client.engines.fused) trains several clients' adapters in one pass over the
frozen base; the step loop (fedit.client.trainer) gives each of them exactly what it has when
trained alone. This module decides how many clients share a pass (:func:`concurrency`) and whether
a set of jobs can (:func:`can_train_together`); :func:`fedit.client.job.run_jobs` trains them.
"""

from __future__ import annotations

import os
from typing import Sequence

import torch

from fedit.client.engines.fused import bytes_per_token, why_unsupported
from fedit.client.job import ClientJob, job_lora
from fedit.data.prompts import TokenizedExample
from fedit.model import adapter_parameters


def device_memory(device: torch.device) -> int:
    """Total bytes of ``device`` (GPU memory, or the machine's RAM). Total, not free: the number of
    clients trained at once must not change between a run and its resume (results would differ
    by float rounding, and ``--resume`` is bit-identical)."""
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def concurrency(trainer, cfg, datas: Sequence[Sequence[TokenizedExample]]) -> int:
    """How many of these clients to train at once: ``--concurrent-clients``, or by default as many
    as fit (one micro-batch of each client's longest example) in a quarter of the device's memory
    beside the model."""
    if cfg.federation.concurrent_clients is not None:
        return cfg.federation.concurrent_clients
    if getattr(trainer, "lora_kernel", "peft") != "fused" or len(datas) < 2:
        return 1
    dtype_bytes = 2 if trainer.autocast_dtype is not None else 4
    per_token = bytes_per_token(trainer.model, dtype_bytes)
    weights = sum(p.numel() * p.element_size() for p in trainer.model.parameters())
    budget = device_memory(trainer.device) // 4 - weights
    width, used = 0, 0
    for data in datas:
        need = cfg.train.micro_batch_size * max((len(e.input_ids) for e in data), default=0) * per_token
        if width and used + need > budget:
            break
        width, used = width + 1, used + need
    return max(1, width)


def can_train_together(trainer, jobs: Sequence[ClientJob]) -> bool:
    """True when these jobs can share passes: the fused kernel is on and usable for the resident
    model, and every job trains the global adapter (no client rank or targets of its own) with all
    its keys and shapes."""
    if getattr(trainer, "lora_kernel", "peft") != "fused" or why_unsupported(trainer.model) is not None:
        return False
    if any(job_lora(job.config) is not None for job in jobs):
        return False
    params = adapter_parameters(trainer.model)
    return all(set(job.state) == set(params) and all(job.state[k].shape == p.shape for k, p in params.items())
               for job in jobs)
