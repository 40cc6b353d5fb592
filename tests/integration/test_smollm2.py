"""One federated round with the real SmolLM2-135M-Instruct (the default model), 2 clients."""

import json

import pytest
from safetensors.torch import load_file

from fedit.cli import main


@pytest.mark.slow
def test_smollm2_two_clients_one_round(tmp_path, fixtures_dir, capsys):
    out = tmp_path / "run"
    code = main(["run", "--model", "smollm2-135m-instruct", "--data", str(fixtures_dir / "tiny"),
                 "--test-data", str(fixtures_dir / "tiny_test.jsonl"), "--partition", "files",
                 "--rounds", "1", "--clients-per-round", "2", "--local-steps", "2", "--batch-size", "2",
                 "--micro-batch-size", "2", "--max-len", "96", "--lr", "1e-3", "--out", str(out)])
    assert code == 0
    rounds = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    rounds = [r for r in rounds if r["type"] == "round"]
    before, after = rounds[0]["eval"]["overall"]["loss"], rounds[1]["eval"]["overall"]["loss"]
    assert 0 < before < 10 and after < before      # a pretrained model, and training helped
    state = load_file(str(out / "final" / "adapter_model.safetensors"))
    assert len(state) == 30 * 7 * 2                  # 30 layers x 7 linear modules x (A, B)
    assert json.loads(capsys.readouterr().out)["final_adapter"].endswith("final")
    assert main(["-q", "generate", "What is the capital of France? Answer in one word.",
                 "--adapter", str(out / "final"), "--max-new-tokens", "8"]) == 0
    assert "Paris" in capsys.readouterr().out
