"""The measurements of `make gpu-check` (benchmarks/gpu_check.py runs each in its own time-boxed process).

Nothing is downloaded: models are built from a config directly on the device with random weights and
the data are synthetic token sequences with Dolly-like lengths (prompt + response, loss on the
response), so speed and memory are those of the real thing.

  throughput   ~1B (Llama-3.2-1B shape): fedit's LocalTrainer.fit with the fused LoRA kernel (packed
               sequences), with --lora-kernel peft, and a plain PEFT loop on the same batches; tokens/s,
               MFU = 4 x linear params x tokens/s over the data-sheet bf16 peak and over a bf16 matmul
               peak measured in this process; peak memory
  concurrency  the round's clients trained together vs one after another (fedit's Simulation, 1B)
  nf4          an 8B-shaped Llama (Llama-3.1-8B) with its linear layers in 4-bit NF4 (bitsandbytes,
               fedit.model.quantize) and LoRA r=8 on all of them, batch 1 x 512 tokens: peak memory, step time
  paper        tokens/s of fedit's client update on a 7B (Llama-2-7B shape), and from it the wall time of
               the paper's setting (100 clients, 20 rounds x 5 clients, one local epoch, length 512)
"""

from __future__ import annotations

import time
import zlib
from types import SimpleNamespace

import numpy as np
import torch
from baselines import plain_peft_loop
from speed import linear_params, matmul_peak, sync

from fedit.client.batching import plan_steps
from fedit.client.train import LocalTrainer
from fedit.config import TrainConfig
from fedit.data.prompts import IGNORE_INDEX, TokenizedExample
from fedit.model import BaseModel, add_lora, get_adapter_state

SHAPES = {  # Llama-family shapes (random weights)
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=1024),
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
               num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True),
    "7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=32, vocab_size=32000),
    "8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=8, vocab_size=128256),
}
MICRO = {"tiny": 2, "1b": 8, "7b": 8, "8b": 1}
BATCH = {"tiny": 4, "1b": 32, "7b": 32, "8b": 1}     # the paper's batch 32; tiny: the CPU plumbing run
MAX_LEN = {"tiny": 64, "1b": 512, "7b": 512, "8b": 512}
# dense bf16 peaks (no sparsity) from the vendors' data sheets
BF16_PEAK = {"H100 SXM": 989e12, "H100 NVL": 835e12, "H100 PCIe": 756e12, "H100": 989e12, "H200": 989e12,
             "A100": 312e12, "L40S": 362e12, "L4": 121e12, "RTX 4090": 165e12}
# The paper's setting (Zhang et al. 2023, Shepherd): Dolly-15k's 15,011 records minus the 80 held out,
# over 100 clients; 20 rounds x 5 sampled clients x 1 local epoch; batch 32; max length 512.
PAPER = dict(clients=100, rounds=20, clients_per_round=5, train_records=14931, max_len=512)
# Mean tokens of a Dolly training record (chat template, cut at 512) with SmolLM2's tokenizer, measured
# on the shepherd_10clients copy with dolly_mean_tokens() below (186.3); other tokenizers differ by some %.
DOLLY_MEAN_TOKENS = 186.3


def gpu_bf16_peak(device: torch.device) -> tuple[str, float | None]:
    """The device's name and its data-sheet dense bf16 FLOP/s (None when unknown or on CPU)."""
    if device.type != "cuda":
        return "cpu", None
    name = torch.cuda.get_device_name(device)
    for key in sorted(BF16_PEAK, key=len, reverse=True):
        if key.replace(" ", "").lower() in name.replace(" ", "").lower():
            return name, BF16_PEAK[key]
    return name, None


def train_dtype(device: torch.device) -> torch.dtype:
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def random_llama(size: str, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """A Llama model of the given shape, random weights, built directly on ``device``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**SHAPES[size], max_position_embeddings=4096, attn_implementation="sdpa")
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(dtype)
    model.config.use_cache = False
    model.eval().requires_grad_(False)
    return model


def synthetic_examples(n: int, vocab: int, max_len: int, seed: int) -> list[TokenizedExample]:
    """Dolly-like lengths: prompt ~ lognormal(mean ~90), response ~ lognormal(mean ~110), cut to max_len."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        prompt = int(min(max_len - 8, max(8, rng.lognormal(4.2, 0.7))))
        response = int(min(max_len - prompt, max(4, rng.lognormal(4.3, 0.9))))
        ids = rng.integers(3, vocab, prompt + response).tolist()
        out.append(TokenizedExample(ids, [IGNORE_INDEX] * prompt + ids[prompt:], "synthetic"))
    return out


def workbench(size: str, device: torch.device, kernel: str = "auto", base=None):
    """fedit's Workbench around a random model (or ``base``): LoRA r=8 on all linear layers."""
    from fedit.runners.common import Workbench

    model = base if base is not None else random_llama(size, device, train_dtype(device))
    peft_model = add_lora(model, r=8, alpha=16, dropout=0.05, targets="all-linear", seed=42)
    autocast = torch.bfloat16 if device.type == "cuda" else None
    tok = SimpleNamespace(pad_token_id=0)
    trainer = LocalTrainer(peft_model, device=device, autocast_dtype=autocast, pad_id=0, lora_kernel=kernel)
    return Workbench(BaseModel(model, tok, f"random-{size}", device, autocast), peft_model, trainer,
                     get_adapter_state(peft_model))


def timed(device: torch.device, fn) -> float:
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def peak_memory_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peaks(device: torch.device) -> dict:
    """Data-sheet and measured (best of 2048^2 and 8192^2 on a GPU) matmul peaks in the training dtype."""
    name, datasheet = gpu_bf16_peak(device)
    sizes = (2048, 8192) if device.type == "cuda" else (256,)
    measured = max(matmul_peak(device, train_dtype(device), n, budget_s=5.0) for n in sizes)
    return {"device": name, "datasheet": datasheet, "measured": measured}


def fit_fn(bench, data, train, kernel: str):
    def go():
        bench.trainer.lora_kernel = kernel
        bench.trainer.fit(bench.initial_state, data, train, seed=0, round_idx=0, client_id=0)
    return go


def bench_throughput(size: str, device: torch.device, steps: int) -> dict:
    """fedit (fused), fedit (--lora-kernel peft) and a plain PEFT loop on the same batches of 32."""
    bench = workbench(size, device)
    micro, batch = MICRO[size], BATCH[size]
    train = TrainConfig(lr=1.5e-4, batch_size=batch, micro_batch_size=micro, local_steps=steps)
    data = synthetic_examples(batch * steps, bench.model.config.vocab_size, MAX_LEN[size], seed=1)
    plan = plan_steps([len(e.input_ids) for e in data], batch_size=batch, micro_batch_size=micro, epochs=1,
                      steps=steps, rng=np.random.default_rng(0))
    tokens = sum(len(data[i].input_ids) for step in plan for mb in step for i in mb)
    flops_per_token = 4 * linear_params(bench.model)
    peak = peaks(device)
    kernel = bench.trainer.lora_kernel
    result = {"size": size, "params": sum(p.numel() for p in bench.model.parameters()), "micro_batch": micro,
              "steps": steps, "tokens": tokens, "flops_per_token": flops_per_token, "kernel": kernel,
              "peaks_flops": peak}
    runs = (("fedit", fit_fn(bench, data, train, kernel)), ("fedit_peft_kernel", fit_fn(bench, data, train, "peft")),
            ("plain_peft", lambda: plain_peft_loop(bench, bench.initial_state, data, plan, train)))
    for name, fn in runs:
        if device.type == "cuda":
            fn()  # warm-up: kernels' autotuning, the allocator's first growth
        reset_peak(device)
        seconds = timed(device, fn)
        tps = tokens / seconds
        flops = tps * flops_per_token
        result[name] = {"seconds": seconds, "tokens_per_s": tps, "model_flops_per_s": flops,
                        "mfu_vs_datasheet": flops / peak["datasheet"] if peak["datasheet"] else None,
                        "mfu_vs_measured": flops / peak["measured"], "peak_memory_gib": peak_memory_gib(device)}
    bench.trainer.lora_kernel = kernel
    return result


class SyntheticWorkbench:
    """A Workbench whose tokenizer is replaced by synthetic token ids (one sequence per record, seeded
    by the record's text), so fedit's Simulation runs end to end on a random model without a tokenizer."""

    def __init__(self, bench, max_len: int) -> None:
        self.__dict__.update(bench.__dict__)
        self._bench, self.max_len = bench, max_len

    def tokenize(self, examples, data, train_on_prompt=None):
        vocab = self.model.config.vocab_size
        return [synthetic_examples(1, vocab, self.max_len, seed=zlib.crc32(e.instruction.encode()))[0]
                for e in examples]

    def evaluator(self, test, batch_size):
        return None


def write_clients(folder, clients: int, records: int):
    import json

    folder.mkdir(parents=True, exist_ok=True)
    for c in range(clients):
        rows = [{"instruction": f"client {c} record {i}", "context": "", "response": "r", "category": "open_qa"}
                for i in range(records)]
        (folder / f"client_{c:03d}.json").write_text(json.dumps(rows))
    return folder


def bench_concurrency(size: str, device: torch.device, tmp, clients: int = 5, records: int = 64) -> dict:
    """The round's clients (2 steps of batch 32 each) together vs one after another (fedit's Simulation)."""
    from speed import bench_concurrency as rounds

    from fedit.config import Config

    folder = write_clients(tmp / "concurrency-data", clients, records)
    cfg = Config().override({"model": f"random-{size}", "batch_size": BATCH[size], "micro_batch_size": MICRO[size],
                             "local_steps": 2, "max_len": MAX_LEN[size], "device": device.type})
    bench = SyntheticWorkbench(workbench(size, device), MAX_LEN[size])
    result = rounds(cfg, folder, tmp, repeats=1, bench=bench)
    return {**result, "size": size, "together_vs_alone_time": result["concurrent_round_s"] / result["sequential_round_s"]}


def bench_nf4(size: str, device: torch.device, steps: int, kind: str = "nf4") -> dict:
    """Linear layers in 4-bit (or 8-bit), LoRA r=8 on all of them, batch 1 x 512 tokens: memory and step time."""
    from fedit.model.quantize import quantize_linear_layers

    model = random_llama(size, device, train_dtype(device))
    quantize_linear_layers(model, kind, compute_dtype=train_dtype(device))
    reset_peak(device)
    bench = workbench(size, device, base=model)
    weights_gib = peak_memory_gib(device)
    train = TrainConfig(lr=1.5e-4, batch_size=1, micro_batch_size=1, local_steps=steps)
    vocab = model.config.vocab_size
    rng = np.random.default_rng(0)
    n = MAX_LEN[size]
    data = [TokenizedExample(ids := rng.integers(3, vocab, n).tolist(), [IGNORE_INDEX] * (n // 4) + ids[n // 4:], "x")
            for _ in range(steps)]
    fit = fit_fn(bench, data, train, bench.trainer.lora_kernel)
    if device.type == "cuda":
        fit()  # warm-up (steps 1..n include the allocator's first growth otherwise)
    seconds = timed(device, fit)
    return {"size": size, "quantize": kind, "kernel": bench.trainer.lora_kernel, "steps": steps,
            "tokens_per_step": n, "step_s": seconds / steps, "tokens_per_s": n * steps / seconds,
            "weights_and_lora_gib": weights_gib, "peak_memory_gib": peak_memory_gib(device),
            "peak_memory_gb": None if device.type != "cuda" else torch.cuda.max_memory_allocated(device) / 1e9}


def bench_paper(size: str, device: torch.device, steps: int) -> dict:
    """fedit's client update on ``size`` (batch 32), and the paper's setting's wall time from it."""
    bench = workbench(size, device)
    train = TrainConfig(lr=1.5e-4, batch_size=BATCH[size], micro_batch_size=MICRO[size], local_steps=steps)
    data = synthetic_examples(BATCH[size] * steps, bench.model.config.vocab_size, MAX_LEN[size], seed=2)
    fit = fit_fn(bench, data, train, bench.trainer.lora_kernel)
    if device.type == "cuda":
        fit()
    reset_peak(device)
    seconds = timed(device, fit)
    tps = sum(len(e.input_ids) for e in data) / seconds
    tokens = PAPER["rounds"] * PAPER["clients_per_round"] * PAPER["train_records"] / PAPER["clients"] * DOLLY_MEAN_TOKENS
    return {"size": size, "kernel": bench.trainer.lora_kernel, "tokens_per_s": tps,
            "peak_memory_gib": peak_memory_gib(device), "paper": PAPER, "dolly_mean_tokens": DOLLY_MEAN_TOKENS,
            "paper_train_tokens": tokens, "paper_estimate_s": tokens / tps,
            "paper_estimate_note": "training tokens / measured tokens/s; clients one after another; "
                                   "evaluation and model loading not counted"}


def dolly_mean_tokens(dolly_dir: str, max_len: int = 512) -> float:
    """Mean tokens per Dolly record with SmolLM2's chat template (how DOLLY_MEAN_TOKENS was measured)."""
    from pathlib import Path

    from fedit.data import load_examples
    from fedit.data.prompts import tokenize_examples
    from fedit.model import load_base_model

    tok = load_base_model("tiny-random", "cpu", "fp32").tokenizer
    lengths = []
    for path in sorted(Path(dolly_dir).glob("local_training_*.json")):
        toks, _ = tokenize_examples(tok, load_examples(path)[0], template="chat", max_len=max_len,
                                    train_on_prompt=False)
        lengths += [len(t.input_ids) for t in toks]
    return sum(lengths) / len(lengths)
