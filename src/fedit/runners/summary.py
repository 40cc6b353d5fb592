"""What a finished run tells people: the model card saved beside an adapter (``README.md``) and
the few lines ``fedit run`` / ``fedit deploy local`` end with."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from fedit.config import Config
from fedit.model.origin import known_hub_id, portable, weights_note

LOAD_HINT = """\
```python
from peft import AutoPeftModelForCausalLM
from transformers import AutoTokenizer

model = AutoPeftModelForCausalLM.from_pretrained("{path}")
tokenizer = AutoTokenizer.from_pretrained("{path}")   # with the chat template used in training
```
"""


def _fmt(value: Any, spec: str = ".4f") -> str:
    return format(value, spec) if isinstance(value, (int, float)) else "n/a"


def held_out(history: Sequence[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """(first, last) round records that carry a held-out evaluation, if there are two."""
    evaluated = [r for r in history if (r.get("eval") or {}).get("overall")]
    return (evaluated[0], evaluated[-1]) if len(evaluated) >= 2 else None


def model_card(facts: Sequence[str], origin: dict[str, Any], path: str | Path = ".") -> str:
    """A short model card: front matter for the hub's tools, the facts, how to load it. ``base_model``
    is the hub id where fedit knows one (else left out); no line names a path of this machine."""
    hub = known_hub_id(str(origin.get("name", "")), origin.get("path"))
    if hub is None:
        base = f"{weights_note(origin)} (a local model: not on the Hugging Face hub)"
    else:
        base = hub + (f" ({weights_note(origin)})" if origin.get("quantization") else "")
    lines = ["---", *([f"base_model: {hub}"] if hub else []), "library_name: peft",
             "tags: [fedit, lora, federated-learning, instruction-tuning]", "---", "",
             "# LoRA adapter made with fedit", "", f"- Base model: {base}"]
    lines += [f"- {fact}" for fact in facts]
    from fedit.provenance import provenance

    prov = provenance()
    lines += [f"- Made with fedit {prov.get('fedit')}" + (f" (git {prov['git']})" if prov.get("git") else ""),
              "", "Load it with plain peft and transformers:", "", LOAD_HINT.format(path=portable(path))]
    return "\n".join(lines)


def run_facts(cfg: Config, history: Sequence[dict[str, Any]]) -> list[str]:
    """The facts of a federated run for its model card."""
    d, t, f, lora = cfg.data, cfg.train, cfg.federation, cfg.lora
    done = max((r.get("round", 0) for r in history), default=0)
    per_round = f"{f.clients_per_round} clients" if f.fraction is None else f"a fraction {f.fraction} of the clients"
    local = f"{t.local_steps} local steps" if t.local_steps else f"{t.local_epochs:g} local epoch(s)"
    clients = "one client per file" if d.partition == "files" else f"{d.num_clients} clients"
    facts = [f"Method: federated instruction tuning, {f.strategy}, {done} rounds of {per_round} x {local} "
             f"(batch {t.batch_size}, lr {t.lr:g}, seed {f.seed})",
             f"LoRA: r={lora.lora_r}, alpha={lora.lora_alpha}, dropout {lora.lora_dropout:g}, on {lora.lora_targets}",
             f"Training data: {portable(d.data)} ({d.partition} partition, {clients}), prompts: {d.template} template, "
             f"max length {d.max_len}"]
    facts += privacy_facts(history)
    pair = held_out(history)
    if pair is not None:
        first, last = (r["eval"]["overall"] for r in pair)
        facts.append(f"Held-out loss on {portable(d.test_data)}: {_fmt(first.get('loss'))} before training (round "
                     f"{pair[0]['round']}) -> {_fmt(last.get('loss'))} after round {pair[1]['round']} "
                     f"(perplexity {_fmt(last.get('perplexity'), '.2f')}, {last.get('examples')} examples)")
    else:
        evaluated = [r for r in history if (r.get("eval") or {}).get("overall")]
        if evaluated:
            last = evaluated[-1]["eval"]["overall"]
            facts.append(f"Held-out loss after round {evaluated[-1]['round']}: {_fmt(last.get('loss'))} "
                         f"(perplexity {_fmt(last.get('perplexity'), '.2f')}) on {portable(d.test_data)}")
    return facts


def privacy_facts(history: Sequence[dict[str, Any]]) -> list[str]:
    """Client-level DP as the last round recorded it: epsilon, delta, noise, clip and the accounting."""
    dp = [r for r in history if "dp_epsilon" in r]
    if not dp:
        return []
    r = dp[-1]
    how = r.get("dp_accounting", "RDP accountant (dp-accounting), fixed-size sampling without replacement, "
                                 "replace-one neighbours")
    return [f"Client-level DP (DP-FedAvg, {r.get('dp_mode')} mode): epsilon {_fmt(r['dp_epsilon'], '.3g')} at delta "
            f"{r['dp_delta']:g} after {r.get('dp_releases')} releases, noise multiplier "
            f"{_fmt(r.get('dp_noise_multiplier'), '.4g')}, clip {_fmt(r.get('dp_clip'), '.4g')}; {how}"]


def run_card(cfg: Config, history: Sequence[dict[str, Any]], origin: dict[str, Any], final_dir: Path) -> str:
    """The card of a run's ``final/``; it loads as ``RUN/final`` (the run folder's name, no machine path)."""
    return model_card(run_facts(cfg, history), origin, Path(final_dir.parent.name) / final_dir.name)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {secs:02d} s" if minutes else f"{seconds:.1f} s"


def run_summary(history: Sequence[dict[str, Any]], run_dir: Path, seconds: float) -> list[str]:
    """The human-readable lines a finished run ends with."""
    rounds = [r for r in history if r.get("type", "round") == "round"]
    done = max((r.get("round", 0) for r in rounds), default=0)
    lines = [f"run finished: {done} rounds in {_duration(seconds)}"]
    pair = held_out(rounds)
    if pair is not None:
        first, last = (r["eval"]["overall"] for r in pair)
        lines.append(f"held-out loss {_fmt(first.get('loss'))} (round {pair[0]['round']}) -> "
                     f"{_fmt(last.get('loss'))} (round {pair[1]['round']}), perplexity "
                     f"{_fmt(first.get('perplexity'), '.2f')} -> {_fmt(last.get('perplexity'), '.2f')}")
    final = Path(run_dir) / "final"
    lines.append(f"adapter: {final} (PEFT folder with tokenizer and model card)")
    lines.append(f"next: fedit eval --run {run_dir}  |  fedit generate --run {run_dir} \"an instruction\"")
    return lines
