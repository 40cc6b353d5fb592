"""The CUDA path (skipped without a GPU; CI has none): a round on the GPU, bf16 autocast."""

import json

import pytest

from fedit.cli import main


@pytest.mark.gpu
def test_run_on_cuda_bf16(tmp_path, fixtures_dir):
    out = tmp_path / "gpu"
    assert main(["run", "--model", "tiny-random", "--device", "cuda", "--precision", "bf16",
                 "--data", str(fixtures_dir / "tiny"), "--test-data", str(fixtures_dir / "tiny_test.jsonl"),
                 "--partition", "files", "--rounds", "2", "--clients-per-round", "2", "--local-steps", "2",
                 "--batch-size", "4", "--micro-batch-size", "2", "--out", str(out)]) == 0
    rounds = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["eval"]["overall"]["loss"] for r in rounds if r["type"] == "round"]
    assert losses[-1] < losses[0]
    assert (out / "final" / "adapter_model.safetensors").is_file()
