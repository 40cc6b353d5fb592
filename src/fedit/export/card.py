"""The model card (README.md) of an exported folder: hub metadata (huggingface_hub's
ModelCardData), how it was trained (from the run's config.yaml and metrics.jsonl when known) and
how to use it."""

from __future__ import annotations

from pathlib import Path

from fedit.runners.source import ModelSource
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
    """The run's facts, as its final/ adapter's model card states them (fedit.runners.summary)."""
    if run is None:
        return ["- Trained with fedit (the run directory was not given, so no details are recorded here)."]
    from fedit.runners.rundir import RunDir
    from fedit.runners.summary import run_facts

    run_dir = RunDir(run)
    cfg = run_dir.saved_config()
    if cfg is None:
        return [f"- Trained with fedit in {run} (its config.yaml is missing)."]
    history = [r for r in run_dir.metrics.read() if r.get("type") == "round"]
    return [f"- {fact}" for fact in run_facts(cfg, history)]


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
