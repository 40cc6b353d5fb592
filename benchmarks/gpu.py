"""GPU benchmark (issue 11): fedit's client update on random-initialised Llama-family models.

Nothing is downloaded: models are built from a config directly on the GPU in bf16 with random
weights, and the data are synthetic token sequences with Dolly-like lengths (prompt + response,
loss on the response), so speed and memory are those of the real thing.

  throughput  ~1B (Llama-3.2-1B shape) and ~8B (Llama-3.1-8B shape): fedit's LocalTrainer.fit
              (fused LoRA kernel, and --lora-kernel peft) vs a plain PEFT loop on the same batches;
              tokens/s, MFU = 4 x linear params x tokens/s over (a) the GPU's dense bf16 peak
              and (b) a bf16 matmul peak measured in this run; peak memory
  concurrency the round's clients trained together vs one by one (1B)
  paper       the paper's full setting end to end on a random 7B (Llama-2-7B shape): 100 clients,
              20 rounds x 5 clients, 1 local epoch, r=8, batch 32, length 512 (Dolly: ~150
              records per client), through fedit's Simulation; wall time
  qlora       optional: the 7B base in 4-bit (bitsandbytes NF4) with LoRA: tokens/s, peak memory

    python benchmarks/gpu.py --out bench-results [--only throughput,concurrency,paper,qlora]
    smoke test on CPU: python benchmarks/gpu.py --device cpu --sizes tiny --only throughput,paper --tiny
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from baselines import plain_peft_loop  # noqa: E402
from speed import linear_params, matmul_peak, sync  # noqa: E402

from fedit.client.batching import plan_steps  # noqa: E402
from fedit.client.train import LocalTrainer  # noqa: E402
from fedit.config import Config, TrainConfig  # noqa: E402
from fedit.data.prompts import IGNORE_INDEX, TokenizedExample  # noqa: E402
from fedit.model import BaseModel, add_lora, get_adapter_state  # noqa: E402

log = logging.getLogger("gpu-bench")

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
MICRO = {"tiny": 8, "1b": 8, "7b": 4, "8b": 4}
# dense bf16 peaks (no sparsity) from the vendors' data sheets
BF16_PEAK = {"H100 SXM": 989e12, "H100 NVL": 835e12, "H100 PCIe": 756e12, "H100": 989e12, "H200": 989e12,
             "A100": 312e12, "L40S": 362e12, "L4": 121e12, "RTX 4090": 165e12}


def gpu_bf16_peak(device: torch.device) -> tuple[str, float | None]:
    if device.type != "cuda":
        return "cpu", None
    name = torch.cuda.get_device_name(device)
    for key in sorted(BF16_PEAK, key=len, reverse=True):
        if key.replace(" ", "").lower() in name.replace(" ", "").lower():
            return name, BF16_PEAK[key]
    return name, None


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


def workbench(size: str, device: torch.device, kernel: str, base=None):
    from fedit.runners.common import Workbench

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = base if base is not None else random_llama(size, device, dtype)
    peft_model = add_lora(model, r=8, alpha=16, dropout=0.05, targets="all-linear", seed=42)
    autocast = torch.bfloat16 if device.type == "cuda" else None
    tok = SimpleNamespace(pad_token_id=0)
    trainer = LocalTrainer(peft_model, device=device, autocast_dtype=autocast, pad_id=0, lora_kernel=kernel)
    base_model = BaseModel(model, tok, f"random-{size}", device, autocast)
    return Workbench(base_model, peft_model, trainer, get_adapter_state(peft_model))


def timed(device, fn) -> float:
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def bench_throughput(size: str, device: torch.device, steps: int, peaks: dict) -> dict:
    bench = workbench(size, device, "auto")
    micro = MICRO[size]
    train = TrainConfig(lr=1.5e-4, batch_size=32, micro_batch_size=micro, local_steps=steps)
    data = synthetic_examples(32 * steps, bench.model.config.vocab_size, 512, seed=1)
    plan = plan_steps([len(e.input_ids) for e in data], batch_size=32, micro_batch_size=micro, epochs=1,
                      steps=steps, rng=np.random.default_rng(0))
    tokens = sum(len(data[i].input_ids) for step in plan for mb in step for i in mb)
    flops_per_token = 4 * linear_params(bench.model)
    kernel = bench.trainer.lora_kernel
    result = {"size": size, "params": sum(p.numel() for p in bench.model.parameters()), "micro_batch": micro,
              "steps": steps, "tokens": tokens, "flops_per_token": flops_per_token, "kernel": kernel}

    def fit(kernel_name):
        def go():
            bench.trainer.lora_kernel = kernel_name
            bench.trainer.fit(bench.initial_state, data, train, seed=0, round_idx=0, client_id=0)
        return go

    for name, fn in (("fedit", fit(kernel)), ("fedit_peft_kernel", fit("peft")),
                     ("plain_peft", lambda: plain_peft_loop(bench, bench.initial_state, data, plan, train))):
        fn()  # warm-up
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        seconds = timed(device, fn)
        tps = tokens / seconds
        result[name] = {"seconds": seconds, "tokens_per_s": tps, "model_flops_per_s": tps * flops_per_token,
                        "mfu_vs_datasheet": tps * flops_per_token / peaks["datasheet"] if peaks["datasheet"] else None,
                        "mfu_vs_measured": tps * flops_per_token / peaks["measured"],
                        "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30
                        if device.type == "cuda" else None}
        log.info("%s %s: %.0f tok/s", size, name, tps)
    bench.trainer.lora_kernel = kernel
    return result


class SyntheticWorkbench:
    """A Workbench whose tokenizer is replaced by synthetic token ids (one per record, seeded by
    the record's text), so fedit's Simulation runs end to end on a random model without a tokenizer."""

    def __init__(self, bench, max_len: int) -> None:
        self.__dict__.update(bench.__dict__)
        self._bench, self.max_len = bench, max_len

    def tokenize(self, examples, data, train_on_prompt=None):
        vocab = self.model.config.vocab_size
        return [synthetic_examples(1, vocab, self.max_len, seed=zlib.crc32(e.instruction.encode()))[0]
                for e in examples]

    def evaluator(self, test, batch_size):
        return None


def write_clients(folder: Path, clients: int, records: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for c in range(clients):
        rows = [{"instruction": f"client {c} record {i}", "context": "", "response": "r", "category": "open_qa"}
                for i in range(records)]
        (folder / f"client_{c:03d}.json").write_text(json.dumps(rows))
    return folder


def bench_paper(size: str, device: torch.device, out: Path, tiny: bool) -> dict:
    """The paper's setting end to end through fedit's Simulation (synthetic tokens, random model)."""
    from fedit.runners.simulation import Simulation

    clients, rounds, per_round, records = (4, 2, 2, 16) if tiny else (100, 20, 5, 150)
    folder = write_clients(out / "paper-data", clients, records)
    cfg = Config().override({"model": f"random-{size}", "data": str(folder), "partition": "files",
                             "test_data": None, "rounds": rounds, "clients_per_round": per_round,
                             "local_epochs": 1.0, "lora_r": 8, "lora_alpha": 16, "batch_size": 32,
                             "micro_batch_size": MICRO[size], "max_len": 512})
    t0 = time.perf_counter()
    bench = SyntheticWorkbench(workbench(size, device, "auto"), 512)
    build = time.perf_counter() - t0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sim = Simulation(cfg, out / "paper-run", bench=bench)
    sim.setup()
    t1 = time.perf_counter()
    sim.federation.run()
    sync(device)
    wall = time.perf_counter() - t1
    tokens = sum(r.get("tokens", 0) for r in sim.run_dir.metrics.read() if r.get("type") == "client")
    return {"size": size, "clients": clients, "rounds": rounds, "clients_per_round": per_round,
            "records_per_client": records, "model_build_s": build, "rounds_wall_s": wall,
            "end_to_end_s": build + wall, "loss_tokens": tokens,
            "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None}


def bench_qlora(device: torch.device, steps: int) -> dict:
    """7B base in 4-bit NF4 (bitsandbytes), LoRA on top: tokens/s and peak memory."""
    try:
        import bitsandbytes as bnb
    except ImportError:
        return {"skipped": "bitsandbytes is not installed"}
    model = random_llama("7b", device, torch.bfloat16)
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, torch.nn.Linear) and child_name != "lm_head":
                q = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=False,
                                      compute_dtype=torch.bfloat16, quant_type="nf4")
                q.weight = bnb.nn.Params4bit(child.weight.data.cpu(), requires_grad=False, quant_type="nf4")
                setattr(module, child_name, q.to(device))
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    bench = workbench("7b", device, "auto", base=model)
    train = TrainConfig(lr=1.5e-4, batch_size=32, micro_batch_size=MICRO["7b"], local_steps=steps)
    data = synthetic_examples(32 * steps, model.config.vocab_size, 512, seed=1)
    fit = lambda: bench.trainer.fit(bench.initial_state, data, train, seed=0, round_idx=0, client_id=0)  # noqa: E731
    seconds = timed(device, fit)
    tokens = sum(len(e.input_ids) for e in data)
    return {"kernel": bench.trainer.lora_kernel, "tokens_per_s": tokens / seconds,
            "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="bench-results")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--sizes", default="1b,8b")
    parser.add_argument("--steps", type=int, default=3, help="optimizer steps (batch 32) per measurement")
    parser.add_argument("--only", default="throughput,concurrency,paper,qlora")
    parser.add_argument("--tiny", action="store_true", help="paper setting shrunk (smoke test)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("fedit").setLevel(logging.WARNING)
    device = torch.device(args.device)
    only = set(args.only.split(","))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name, datasheet = gpu_bf16_peak(device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    measured = max(matmul_peak(device, dtype, n) for n in ((2048, 8192) if device.type == "cuda" else (2048,)))
    peaks = {"datasheet": datasheet, "measured": measured}
    results: dict = {"device": name, "torch": torch.__version__, "peaks_flops": peaks, "sections": {}}
    path = out / "bench-gpu.json"

    def save():
        path.write_text(json.dumps(results, indent=2))

    sizes = args.sizes.split(",")
    if "throughput" in only:
        results["sections"]["throughput"] = []
        for size in sizes:
            results["sections"]["throughput"].append(bench_throughput(size, device, args.steps, peaks))
            if device.type == "cuda":
                torch.cuda.empty_cache()
            save()
    if "concurrency" in only:
        results["sections"]["concurrency"] = bench_gpu_concurrency(sizes[0], device, out)
        save()
    if "paper" in only:
        results["sections"]["paper"] = bench_paper("tiny" if args.tiny else "7b", device, out, args.tiny)
        save()
    if "qlora" in only and device.type == "cuda":
        results["sections"]["qlora"] = bench_qlora(device, args.steps)
        save()
    save()
    print(json.dumps(results, indent=2))


def bench_gpu_concurrency(size: str, device: torch.device, out: Path) -> dict:
    """5 clients of 64 records, 2 steps each: together vs one by one (fedit's Simulation)."""
    from speed import bench_concurrency

    folder = write_clients(out / "concurrency-data", 5, 64)
    cfg = Config().override({"model": f"random-{size}", "batch_size": 32, "micro_batch_size": MICRO[size],
                             "local_steps": 2, "max_len": 512})
    bench = SyntheticWorkbench(workbench(size, device, "auto"), 512)
    return bench_concurrency(cfg, folder, out, repeats=1, bench=bench)


if __name__ == "__main__":
    main()
