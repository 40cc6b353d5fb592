"""After training, on tiny-random: `fedit export` (the merged model answers as the adapter does,
read back with plain transformers), `fedit chat` driven through stdin in a real process,
`fedit generate` on a file of prompts from stdin with sampling flags, and `--push-to-hub` offline."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fedit.cli import main
from fedit.config import Config, SamplingConfig, dump_config
from fedit.model import save_adapter

QUESTIONS = ["Hello there.", "Name a colour.", "What is two plus two?"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A finished fedit run in all that matters here: config.yaml, metrics.jsonl and final/ holding
    an adapter with large random weights (so the adapter changes the answers)."""
    from fedit.runners.common import build_workbench

    run = tmp_path_factory.mktemp("after") / "run"
    run.mkdir()
    cfg = Config().override({"model": "tiny-random", "precision": "fp32", "device": "cpu", "lora_r": 4})
    bench = build_workbench(cfg)
    gen = torch.Generator().manual_seed(0)
    state = {k: torch.randn(v.shape, generator=gen) * 0.5 for k, v in bench.initial_state.items()}
    save_adapter(bench.model, state, run / "final", bench.base.path)
    (run / "config.yaml").write_text(dump_config(cfg))
    (run / "metrics.jsonl").write_text(json.dumps({"type": "round", "round": 1, "eval": {
        "overall": {"loss": 3.5, "perplexity": 33.1}}}) + "\n")
    return run


def plain_answers(folder: Path, conversations: list[list[dict]], max_new_tokens: int = 12) -> list[str]:
    """Greedy answers of a plain transformers folder (no fedit, no peft), decoded raw."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    out = []
    for messages in conversations:
        ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        new = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False)[0, ids["input_ids"].shape[1]:]
        out.append(tok.decode(new, skip_special_tokens=True))
    return out


@pytest.fixture(scope="module")
def exported(run_dir):
    out = run_dir.parent / "merged"
    assert main(["export", "--run", str(run_dir), "--out", str(out)]) == 0
    return out


def test_export_writes_a_plain_transformers_folder(exported, run_dir):
    names = {p.name for p in exported.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json", "chat_template.jinja",
            "README.md"} <= names and "adapter_config.json" not in names
    assert json.loads((exported / "config.json").read_text())["dtype"] == "float32"   # the base's dtype
    card = (exported / "README.md").read_text()
    assert "base_model_relation: finetune" in card and "library_name: transformers" in card
    assert "Held-out loss after round 1: 3.5000" in card and "not on the Hugging Face hub" in card


def test_merged_model_answers_as_the_adapter_does(exported, run_dir, capsys):
    from fedit.eval.sampling import generate_texts, instruction_prompt
    from fedit.runners.source import load_source_model, resolve_source

    bench = load_source_model(resolve_source({}, run=str(run_dir)))
    sampling = SamplingConfig(max_new_tokens=12)
    adapted = generate_texts(bench, [instruction_prompt(bench.tokenizer, q, "", "chat", None) for q in QUESTIONS],
                             sampling)
    merged = plain_answers(exported, [[{"role": "user", "content": q}] for q in QUESTIONS])
    assert adapted == [m.strip() for m in merged]
    bench.model.disable_adapter_layers()
    base = generate_texts(bench, [instruction_prompt(bench.tokenizer, q, "", "chat", None) for q in QUESTIONS],
                          sampling)
    bench.model.enable_adapter_layers()
    assert base != adapted                                  # the adapter does change the answers
    assert main(["generate", QUESTIONS[1], "--run", str(run_dir), "--max-new-tokens", "12"]) == 0
    assert capsys.readouterr().out == adapted[1] + "\n"


def test_export_refuses_to_overwrite_and_needs_an_adapter(exported, capsys):
    before = sorted(p.name for p in exported.iterdir())
    assert main(["export", "--adapter", str(exported.parent / "run" / "final"), "--out", str(exported)]) == 2
    assert f"--out: {exported} exists and is not empty" in capsys.readouterr().err
    assert sorted(p.name for p in exported.iterdir()) == before
    assert main(["export", "--model", "tiny-random", "--out", str(exported.parent / "x")]) == 2
    assert "fedit export needs --run RUN or --adapter DIR" in capsys.readouterr().err


def test_adapter_export_names_the_hub_base_it_came_from(run_dir, tmp_path, capsys):
    import shutil

    from fedit.model import resolve_model

    snapshot = tmp_path / "hub" / "models--org--tiny" / "snapshots" / "abc123"
    shutil.copytree(resolve_model("tiny-random"), snapshot)
    adapter = tmp_path / "adapter"
    shutil.copytree(run_dir / "final", adapter)
    meta = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**meta, "base_model_name_or_path": str(snapshot)}))
    out = tmp_path / "export"
    assert main(["export", "--adapter", str(adapter), "--no-merge", "--out", str(out)]) == 0
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == "org/tiny"
    card = (out / "README.md").read_text()
    assert "base_model: org/tiny" in card and "vllm serve org/tiny --enable-lora" in card


def test_export_follows_the_umask_and_its_card_names_no_machine_path(run_dir, tmp_path):
    """Issue 19.5: mkdtemp made the folder 0700 and safetensors the weights 0600 under umask 022."""
    from fedit.model import cache_dir

    out = tmp_path / "shared" / "merged"
    old = os.umask(0o022)
    try:
        assert main(["export", "--run", str(run_dir), "--out", str(out)]) == 0
    finally:
        os.umask(old)
    assert oct(out.stat().st_mode & 0o777) == "0o755"
    modes = {p.name: oct(p.stat().st_mode & 0o777) for p in out.iterdir()}
    assert modes["model.safetensors"] == "0o644" and set(modes.values()) == {"0o644"}
    card = (out / "README.md").read_text()
    for path in (str(run_dir.parent), str(cache_dir()), str(Path.home())):
        assert path not in card
    assert "\nbase_model:" not in card    # tiny-random has no hub id: the field is left out
    assert ("Base model: tiny-random: a random 2-layer Llama with the SmolLM2 tokenizer, for tests "
            "(a local model: not on the Hugging Face hub)") in card


def fedit_process(*args: str, stdin: str = "", env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fedit.cli", *args], input=stdin, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=600)


def test_chat_repl_driven_through_stdin(run_dir, exported):
    res = fedit_process("chat", "--run", str(run_dir), "--max-new-tokens", "12",
                        stdin="Hello there.\nName a colour.\n/reset\nHello there.\n/bogus\n\n/exit\nnever read\n")
    assert res.returncode == 0, res.stderr
    assert "unknown command /bogus" in res.stderr and "(conversation cleared)" in res.stderr
    first, = plain_answers(exported, [[{"role": "user", "content": "Hello there."}]])
    second, = plain_answers(exported, [[{"role": "user", "content": "Hello there."},
                                         {"role": "assistant", "content": first.strip()},
                                         {"role": "user", "content": "Name a colour."}]])
    assert res.stdout == f"{first}\n{second}\n{first}\n"       # multi-turn history, then /reset


def test_generate_batch_from_stdin_with_sampling(run_dir, monkeypatch, capsys):
    lines = ["Name a colour.", json.dumps({"instruction": "Sum these.", "context": "2 and 3"}),
             json.dumps({"messages": [{"role": "user", "content": "Hi"}]}),
             json.dumps({"prompt": "Name a colour.", "response": "Blue."})]

    def generate(*flags):
        monkeypatch.setattr(sys, "stdin", io.StringIO("\n".join(lines) + "\n"))
        assert main(["generate", "--run", str(run_dir), "--prompts", "-", "--max-new-tokens", "8", *flags]) == 0
        return [json.loads(line) for line in capsys.readouterr().out.splitlines()]

    greedy = generate()
    assert [sorted(r) for r in greedy] == [["instruction", "response"], ["context", "instruction", "response"],
                                           ["messages", "response"], ["prompt", "reference", "response"]]
    assert greedy[0]["response"] == greedy[3]["response"] and greedy[3]["reference"] == "Blue."
    sampled = generate("--temperature", "1.5", "--top-p", "0.95", "--seed", "3")
    assert sampled == generate("--temperature", "1.5", "--top-p", "0.95", "--seed", "3")   # seeded: repeatable
    assert [r["response"] for r in sampled] != [r["response"] for r in greedy]
    monkeypatch.setattr(sys, "stdin", io.StringIO('{"messages": [{"role": "assistant", "content": "x"}]}\n'))
    assert main(["generate", "--run", str(run_dir), "--prompts", "-"]) == 2
    assert capsys.readouterr().err.strip() == ("fedit generate: error: <stdin>: line 1: the last turn of 'messages' "
                                               "must be from the user (its answer is generated)")


def test_push_to_hub_offline_is_one_line_and_keeps_the_export(run_dir, tmp_path):
    out = tmp_path / "pushed"
    res = fedit_process("export", "--run", str(run_dir), "--out", str(out), "--push-to-hub", "org/name",
                        env={"HF_HUB_OFFLINE": "1"})
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert lines[-1].startswith("fedit export: error: --push-to-hub org/name: cannot upload to the Hugging Face hub (")
    assert lines[-1].endswith(f"the export in {out} is complete: upload it later with `hf upload org/name {out}`")
    assert "Traceback" not in res.stderr and (out / "model.safetensors").is_file()
