"""The model card (README.md) of an exported folder: hub metadata (huggingface_hub's
ModelCardData), how it was trained (from the run's config.yaml and metrics.jsonl when known) and
how to use it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fedit.eval.source import ModelSource
from fedit.fileio import atomic_write_text

USE_MERGED = """\
```python
from transformers import pipeline
chat = pipeline("text-generation", model="{where}")
print(chat([{{"role": "user", "content": "Give three tips for staying healthy."}}])[0]["generated_text"])
```

Serve it with an OpenAI-compatible API: `transformers serve` (then ask for model `{where}`), or
`vllm serve {where}`; convert it for llama.cpp with `python convert_hf_to_gguf.py {where}`."""

USE_ADAPTER = """\
```python
from peft import AutoPeftModelForCausalLM
model = AutoPeftModelForCausalLM.from_pretrained("{where}")
```

Serve it on its base model with vLLM: `vllm serve {base} --enable-lora --lora-modules fedit={where}`;
convert it for llama.cpp with `python convert_lora_to_gguf.py {where} --base {base}`."""


def _training_lines(run: Path | None) -> list[str]:
    if run is None:
        return ["- Trained with fedit (the run directory was not given, so no details are recorded here)."]
    cfg = _yaml(run / "config.yaml")
    fed, data, lora, train = (cfg.get(k, {}) for k in ("federation", "data", "lora", "train"))
    lines = [f"- Federation: {fed.get('rounds')} rounds, strategy `{fed.get('strategy')}`, "
             f"{fed.get('clients_per_round') or fed.get('fraction')} clients per round, seed {fed.get('seed')}",
             f"- Data: `{data.get('data')}`, partition `{data.get('partition')}` "
             f"({data.get('num_clients')} clients unless the partition fixes it), template `{data.get('template')}`",
             f"- LoRA: r={lora.get('lora_r')}, alpha={lora.get('lora_alpha')}, targets `{lora.get('lora_targets')}`",
             f"- Local training: lr {train.get('lr')} ({train.get('lr_schedule', 'constant')} schedule), "
             f"batch {train.get('batch_size')}, {train.get('local_steps') or train.get('local_epochs')} "
             f"{'steps' if train.get('local_steps') else 'epochs'} per round"]
    last = _last_round(run / "metrics.jsonl")
    overall = ((last or {}).get("eval") or {}).get("overall")
    if overall:
        lines.append(f"- Held-out loss after round {last['round']}: {overall['loss']:.4f} "
                     f"(perplexity {overall['perplexity']:.2f}) on `{data.get('test_data')}`")
    return lines


def _yaml(path: Path) -> dict[str, Any]:
    import yaml

    return yaml.safe_load(path.read_text()) if path.is_file() else {}


def _last_round(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    rounds = [r for r in map(json.loads, path.read_text().splitlines()) if r.get("type") == "round"]
    return rounds[-1] if rounds else None


def card_text(source: ModelSource, base_path: str, hub_id: str | None, *, merged: bool, where: str = ".") -> str:
    from huggingface_hub import ModelCardData

    meta = ModelCardData(base_model=hub_id, library_name="transformers" if merged else "peft",
                         pipeline_tag="text-generation", base_model_relation="finetune" if merged else "adapter",
                         tags=["fedit", "federated-learning", "lora", *([] if merged else ["peft"])])
    base = hub_id or base_path
    kind = "the LoRA adapter merged into its base model" if merged else "a LoRA adapter"
    use = (USE_MERGED if merged else USE_ADAPTER).format(where=where, base=base)
    body = [f"# {source.run.name if source.run else Path(str(source.adapter)).name}", "",
            f"Federated instruction tuning (FedIT) with fedit: {kind}.", "",
            f"Base model: `{base}`{'' if hub_id else ' (a local model: not on the Hugging Face hub)'}", "",
            "## Training", "", *_training_lines(source.run), "", "## Use", "", use, ""]
    return f"---\n{meta.to_yaml()}\n---\n\n" + "\n".join(body)


def write_card(folder: Path, source: ModelSource, base_path: str, hub_id: str | None, *, merged: bool) -> None:
    atomic_write_text(folder / "README.md", card_text(source, base_path, hub_id, merged=merged))
