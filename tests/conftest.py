"""Shared pytest setup for fedit.

Markers (declared in pyproject.toml):
  slow  loads the real SmolLM2 model (seconds to a minute on 2 CPU cores); deselect with -m "not slow"
  gpu   needs a CUDA device; skipped automatically when none is available

Model cache: tests never touch the user's ~/.cache/fedit. Each session gets a fresh cache in a
pytest tmp dir, unless FEDIT_TEST_CACHE names a folder to reuse across runs, which saves the
one-time SmolLM2 GGUF conversion (~15 s; tiny-random needs the SmolLM2 tokenizer, so it pays it too):

    FEDIT_TEST_CACHE=~/.cache/fedit-test .venv/bin/pytest
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def fedit_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Point FEDIT_CACHE at a test-only cache for the whole session (also seen by subprocesses)."""
    persistent = os.environ.get("FEDIT_TEST_CACHE")
    path = Path(persistent).expanduser() if persistent else tmp_path_factory.mktemp("fedit-cache")
    path.mkdir(parents=True, exist_ok=True)
    previous = os.environ.get("FEDIT_CACHE")
    os.environ["FEDIT_CACHE"] = str(path)
    yield path
    if previous is None:
        os.environ.pop("FEDIT_CACHE", None)
    else:
        os.environ["FEDIT_CACHE"] = previous


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip tests marked ``gpu`` when no CUDA device is present."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


FIXTURES = Path(__file__).parent / "fixtures"
# ../shared beside the repo (CI clones main with shared/ beside it)
SHARED_DOLLY = Path(__file__).resolve().parents[2] / "shared" / "data" / "dolly" / "shepherd_10clients"


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """tests/fixtures: tiny/client_{0,1,2}.json (3 clients, 15 records each) and tiny_test.jsonl."""
    return FIXTURES


@pytest.fixture(scope="session")
def tiny_tokenizer(fedit_cache: Path):
    """The SmolLM2 tokenizer (what tiny-random uses), loaded once per session."""
    from transformers import AutoTokenizer

    from fedit.model import resolve_model

    return AutoTokenizer.from_pretrained(resolve_model("tiny-random"))


@pytest.fixture(scope="session")
def tiny_bench(fedit_cache: Path):
    """A resident tiny-random model with LoRA (all-linear, r=8), shared by tests that only train."""
    from fedit.config import Config
    from fedit.runners.common import build_workbench

    cfg = Config().override({"model": "tiny-random", "precision": "fp32", "device": "cpu"})
    return build_workbench(cfg)


@pytest.fixture
def crash_after_round(monkeypatch: pytest.MonkeyPatch):
    """``with crash_after_round(n): ...``: in the simulation, round n's clients train (their
    in-memory state changes: SCAFFOLD variates, error feedback...), then the run dies with
    KeyboardInterrupt before the round is aggregated and checkpointed; both ways of training a
    round (clients together or one by one) go through it. Leaving the block restores training."""
    from contextlib import contextmanager

    from fedit.runners import simulation

    original = simulation.InProcessClients.train

    @contextmanager
    def crashing(round_idx: int):
        def train(self, jobs):
            replies = original(self, jobs)
            if jobs and jobs[0].round == round_idx:
                raise KeyboardInterrupt
            return replies

        monkeypatch.setattr(simulation.InProcessClients, "train", train)
        try:
            yield
        finally:
            monkeypatch.setattr(simulation.InProcessClients, "train", original)

    return crashing
