"""The baselines fedit is measured against (benchmarks only; never used by the library).

- ``plain_peft_loop``: the textbook PEFT + torch training loop (HF loss, AdamW, clipping) over
  exactly the micro-batches fedit uses, optionally padded to a fixed length.
- ``trainer_per_client_round``: one FedAvg round the way Shepherd (and FlowerTune's client)
  does it: per client, re-tokenize the local data with ``datasets``, deep-copy the adapter,
  build a fresh HF ``Trainer``, train, ``torch.save`` the adapter to disk; the server reads the
  files back and averages. ``reload=True`` also loads the base model per client, as a fresh
  FlowerTune ClientApp process does.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import torch

from fedit.client.batching import collate
from fedit.data.prompts import IGNORE_INDEX, tokenize_example
from fedit.model import autocast, set_adapter_state
from fedit.server import weighted_mean


def _pad(batch: dict, width: int, pad_id: int) -> dict:
    extra = width - batch["input_ids"].shape[1]
    if extra <= 0:
        return batch
    fill = {"input_ids": pad_id, "attention_mask": 0, "labels": IGNORE_INDEX}
    return {k: torch.nn.functional.pad(v, (0, extra), value=fill[k]) for k, v in batch.items()}


def plain_peft_loop(bench, initial_state, toks, plan, train, pad_to: int | None = None) -> tuple[float, int]:
    """Seconds for the plan's optimizer steps, and how many (padded) tokens went through."""
    model, device = bench.model, bench.base.device
    set_adapter_state(model, initial_state)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=train.lr, weight_decay=train.weight_decay)
    pad_id = bench.tokenizer.pad_token_id
    padded = 0
    model.train()
    t0 = time.perf_counter()
    for step in plan:
        for mb in step:
            batch = collate([toks[i] for i in mb], pad_id)
            if pad_to:
                batch = _pad(batch, pad_to, pad_id)
            batch = {k: v.to(device) for k, v in batch.items()}
            padded += batch["input_ids"].numel()
            with autocast(device, bench.base.autocast_dtype):
                loss = model(**batch).loss
            (loss / len(step)).backward()
        torch.nn.utils.clip_grad_norm_(params, train.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
    model.eval()
    return time.perf_counter() - t0, padded


def _client_dataset(sim, cid: int, seed: int):
    from datasets import Dataset

    data, tok = sim.cfg.data, sim.bench.tokenizer

    def tokenize(record):
        from fedit.data import Example
        t = tokenize_example(tok, Example(**record), template=data.template, max_len=data.max_len)
        if t is None:
            return {"input_ids": [], "labels": [], "attention_mask": []}
        return {"input_ids": t.input_ids, "labels": t.labels, "attention_mask": [1] * len(t.input_ids)}

    ds = Dataset.from_list([e.to_dict() for e in sim.clients[cid]]).shuffle(seed=seed)
    ds = ds.map(tokenize, remove_columns=["instruction", "context", "response", "category"])
    return ds.filter(lambda r: len(r["input_ids"]) > 0)


def _peft_model(sim, reload: bool):
    if not reload:
        return sim.bench.model
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    lora = sim.cfg.lora
    base = AutoModelForCausalLM.from_pretrained(sim.bench.base.path)
    return get_peft_model(base, LoraConfig(r=lora.lora_r, lora_alpha=lora.lora_alpha,
                                           lora_dropout=lora.lora_dropout, target_modules="all-linear",
                                           task_type="CAUSAL_LM"))


def trainer_per_client_round(sim, clients, workdir: Path, reload: bool) -> tuple[float, float]:
    """Seconds for one round of `clients`, Shepherd-style, same steps and batch as fedit, and the
    part of it spent inside ``Trainer.train`` (the rest is per-client set-up and disk I/O)."""
    from peft import get_peft_model_state_dict, set_peft_model_state_dict
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    train = sim.cfg.train
    t0 = time.perf_counter()
    sizes, in_train = [], 0.0
    for cid in clients:
        model = _peft_model(sim, reload)
        set_peft_model_state_dict(model, sim.state)
        old = copy.deepcopy(get_peft_model_state_dict(model))
        ds = _client_dataset(sim, cid, seed=cid)
        sizes.append(len(ds))
        args = TrainingArguments(
            output_dir=str(workdir / f"client_{cid}"), per_device_train_batch_size=train.micro_batch_size,
            gradient_accumulation_steps=train.batch_size // train.micro_batch_size, max_steps=train.local_steps,
            learning_rate=train.lr, lr_scheduler_type="constant", warmup_steps=0, max_grad_norm=train.grad_clip,
            bf16=sim.bench.base.autocast_dtype is not None, use_cpu=sim.bench.base.device.type == "cpu",
            logging_steps=10**6, save_strategy="no", report_to=[],
            dataloader_num_workers=0, disable_tqdm=True)
        collator = DataCollatorForSeq2Seq(sim.bench.tokenizer, pad_to_multiple_of=8, padding=True,
                                          return_tensors="pt")
        trainer = Trainer(model=model, args=args, train_dataset=ds, data_collator=collator)
        t_train = time.perf_counter()
        trainer.train()
        in_train += time.perf_counter() - t_train
        torch.save(get_peft_model_state_dict(model), workdir / f"client_{cid}" / "pytorch_model.bin")
        set_peft_model_state_dict(model, old)
        model.eval()
    states = [torch.load(workdir / f"client_{cid}" / "pytorch_model.bin") for cid in clients]
    new = weighted_mean(states, sizes)
    set_peft_model_state_dict(sim.bench.model, new)
    return time.perf_counter() - t0, in_train
