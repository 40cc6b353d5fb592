"""Length-grouped dynamic batching: counts, coverage, determinism, padding."""

import numpy as np
import torch

from fedit.client.batching import collate, num_steps, plan_steps
from fedit.data.prompts import IGNORE_INDEX, TokenizedExample


def test_num_steps():
    assert num_steps(10, 4, 1.0, None) == 3
    assert num_steps(10, 4, 0.5, None) == 2
    assert num_steps(10, 4, 1.0, 7) == 7


def test_one_epoch_covers_every_example_once_in_micro_batches():
    lengths = [5, 50, 7, 30, 12, 9, 44, 3, 21, 18]
    plan = plan_steps(lengths, batch_size=4, micro_batch_size=2, epochs=1, steps=None,
                      rng=np.random.default_rng(0))
    assert len(plan) == 3
    flat = [i for step in plan for mb in step for i in mb]
    assert sorted(flat) == list(range(10))
    assert all(len(mb) <= 2 for step in plan for mb in step)
    for step in plan:  # micro-batches of a step are sorted by length: little padding
        ordered = [lengths[i] for mb in step for i in mb]
        assert ordered == sorted(ordered, reverse=True)


def test_plan_is_deterministic_per_rng_and_steps_wrap_epochs():
    lengths = list(range(1, 11))
    a = plan_steps(lengths, batch_size=4, micro_batch_size=4, epochs=1, steps=5, rng=np.random.default_rng(1))
    b = plan_steps(lengths, batch_size=4, micro_batch_size=4, epochs=1, steps=5, rng=np.random.default_rng(1))
    c = plan_steps(lengths, batch_size=4, micro_batch_size=4, epochs=1, steps=5, rng=np.random.default_rng(2))
    assert a == b and a != c and len(a) == 5


def test_length_grouping_reduces_padding():
    rng = np.random.default_rng(0)
    lengths = rng.integers(10, 400, size=512).tolist()
    plan = plan_steps(lengths, batch_size=8, micro_batch_size=8, epochs=1, steps=None, rng=rng)
    padded = sum(max(lengths[i] for i in mb) * len(mb) for step in plan for mb in step)
    assert padded < 0.8 * max(lengths) * len(lengths)
    assert padded < 1.3 * sum(lengths)


def test_collate_right_pads_to_longest():
    exs = [TokenizedExample([1, 2, 3], [IGNORE_INDEX, 2, 3], "a"), TokenizedExample([4], [4], "b")]
    batch = collate(exs, pad_id=0)
    assert batch["input_ids"].tolist() == [[1, 2, 3], [4, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE_INDEX, 2, 3], [4, IGNORE_INDEX, IGNORE_INDEX]]
    assert batch["input_ids"].dtype == torch.long
