"""The model card (README.md) of an exported folder: hub metadata (huggingface_hub's
ModelCardData), how it was trained (from the run's config.yaml and metrics.jsonl when known) and
how to use it."""

from __future__ import annotations

from pathlib import Path

from fedit.runners.source import ModelSource
from fedit.fileio import atomic_write_text
from fedit.model.origin import weights_note

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
LOCAL_BASE = "BASE_MODEL_FOLDER"   # the card names no folder of the machine that trained


def _training_lines(run: Path | None) -> list[str]:
    """The run's facts, as its final/ adapter's model card states them (fedit.runners.summary)."""
    if run is None:
        return ["- Trained with fedit (the run directory was not given, so no details are recorded here)."]
    from fedit.runners.rundir import RunDir
    from fedit.runners.summary import run_facts

    run_dir = RunDir(run)
    cfg = run_dir.saved_config()
    if cfg is None:
        return [f"- Trained with fedit in a run named {run.name} (its config.yaml is missing)."]
    history = [r for r in run_dir.metrics.read() if r.get("type") == "round"]
    return [f"- {fact}" for fact in run_facts(cfg, history)]


def card_text(source: ModelSource, origin: dict, hub_id: str | None, *, merged: bool, where: str = ".") -> str:
    """The card: ``base_model`` is the hub id where fedit knows one (else left out, and the text says
    where the weights came from); no line names a path of the machine that trained."""
    from huggingface_hub import ModelCardData

    meta = ModelCardData(base_model=hub_id, library_name="transformers" if merged else "peft",
                         pipeline_tag="text-generation", base_model_relation="finetune" if merged else "adapter",
                         tags=["fedit", "federated-learning", "lora", *([] if merged else ["peft"])])
    if hub_id is None:
        base_line = f"Base model: {weights_note(origin)} (a local model: not on the Hugging Face hub)"
    else:
        base_line = f"Base model: `{hub_id}`" + (f" ({weights_note(origin)})" if origin.get("quantization") else "")
    kind = "the LoRA adapter merged into its base model" if merged else "a LoRA adapter"
    use = (USE_MERGED if merged else USE_ADAPTER).format(where=where, base=hub_id or LOCAL_BASE)
    name = source.run.name if source.run else Path(str(source.adapter)).name
    body = [f"# {name}", "", f"Federated instruction tuning (FedIT) with fedit: {kind}.", "", base_line, "",
            "## Training", "", *_training_lines(source.run), "", "## Use", "", use, ""]
    return f"---\n{meta.to_yaml()}\n---\n\n" + "\n".join(body)


def write_card(folder: Path, source: ModelSource, origin: dict, hub_id: str | None, *, merged: bool) -> None:
    atomic_write_text(folder / "README.md", card_text(source, origin, hub_id, merged=merged))
