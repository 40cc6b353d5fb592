"""Which precision `fedit generate` / `fedit chat` compute in (issue 19.6): one log line names it, and
`fedit generate --precision fp32` gives the same greedy tokens as the exported model served by
`transformers serve` (the default on a bf16-capable CPU, bf16 autocast as in training, drifts from
the float32 export after about 20 tokens)."""

from __future__ import annotations

import json
import urllib.request

import pytest
import torch

from fedit.cli import main
from fedit.cli.use import precision_line
from fedit.config import Config, dump_config
from fedit.model import save_adapter
from fedit.model.load import cpu_has_native_bf16

QUESTION = "Give three tips for staying healthy."


def make_run(folder, model: str, scale: float):
    """A finished run in all that generate/export read: config.yaml, metrics.jsonl and final/ with a
    random adapter of the given scale (B too, so it changes the answers)."""
    from fedit.runners.common import build_workbench

    folder.mkdir()
    cfg = Config().override({"model": model, "precision": "auto", "device": "cpu", "lora_r": 4})
    bench = build_workbench(cfg)
    gen = torch.Generator().manual_seed(0)
    state = {k: torch.randn(v.shape, generator=gen) * scale for k, v in bench.initial_state.items()}
    save_adapter(bench.model, state, folder / "final", bench.base.path)
    (folder / "config.yaml").write_text(dump_config(cfg))
    (folder / "metrics.jsonl").write_text("")
    return folder


def test_generate_logs_the_precision_it_uses(tmp_path, capsys):
    run = make_run(tmp_path / "run", "tiny-random", 0.5)
    assert main(["generate", "Hi", "--run", str(run), "--precision", "fp32", "--max-new-tokens", "2"]) == 0
    err = capsys.readouterr().err
    assert ("generation precision: fp32 (--precision fp32); greedy answers match the exported float32 model "
            "token for token") in err
    assert main(["generate", "Hi", "--run", str(run), "--max-new-tokens", "2"]) == 0   # the run's: auto
    expected = precision_line("auto", torch.bfloat16 if cpu_has_native_bf16() else None)
    assert expected in capsys.readouterr().err
    assert expected.startswith("generation precision: bf16 autocast, base weights bf16 (--precision auto"
                               if cpu_has_native_bf16() else "generation precision: fp32 (--precision auto)")


@pytest.mark.slow
def test_generate_fp32_matches_the_exported_model_served_by_transformers_serve(tmp_path, capsys):
    """SmolLM2 with a small random adapter: `fedit generate --precision fp32` and the merged export,
    served by `transformers serve` (offline, the `serve` extra), answer with the same 40 greedy tokens."""
    pytest.importorskip("fastapi", reason="needs transformers[serving]")
    from served import start_server, stop_server   # tests/served.py
    from transformers import AutoTokenizer

    run = make_run(tmp_path / "run", "smollm2-135m-instruct", 0.02)
    tokens = 40
    assert main(["generate", QUESTION, "--run", str(run), "--precision", "fp32",
                 "--max-new-tokens", str(tokens)]) == 0
    ours = capsys.readouterr().out.strip()
    exported = tmp_path / "exported"
    assert main(["export", "--run", str(run), "--out", str(exported)]) == 0
    proc, url = start_server(exported, tmp_path / "serve.log")
    try:
        body = {"model": str(exported), "messages": [{"role": "user", "content": QUESTION}],
                "max_tokens": tokens, "temperature": 0}
        request = urllib.request.Request(url + "/chat/completions", json.dumps(body).encode(),
                                         {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=300) as response:
            served = json.loads(response.read())["choices"][0]["message"]["content"].strip()
    finally:
        stop_server(proc)
    tok = AutoTokenizer.from_pretrained(exported)
    assert len(tok(ours, add_special_tokens=False)["input_ids"]) >= tokens - 2   # no early end: all 40 compared
    assert served == ours
