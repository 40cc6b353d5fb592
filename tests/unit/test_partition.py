"""Partitioners (counts, determinism, coverage, errors) and partition statistics / files."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from fedit.data import (
    PARTITIONERS,
    DirichletPartitioner,
    Example,
    FilePartitioner,
    IidPartitioner,
    Partitioner,
    ShardPartitioner,
    load_examples,
    make_partitioner,
    partition_stats,
    write_partition,
)
from fedit.errors import ConfigError


def make_examples(counts: dict[str, int], interleave: bool = True) -> list[Example]:
    """``counts[cat]`` records per category; interleaved so sorting by category is actually exercised."""
    per_cat = {cat: [Example(f"{cat} q{i}", "", f"{cat} a{i}", cat) for i in range(n)] for cat, n in counts.items()}
    if not interleave:
        return [e for group in per_cat.values() for e in group]
    out: list[Example] = []
    for i in range(max(counts.values())):
        out.extend(group[i] for group in per_cat.values() if i < len(group))
    return out


def check_cover(parts: list[list[int]], n: int) -> None:
    assert all(part == sorted(part) for part in parts)
    assert sorted(i for part in parts for i in part) == list(range(n))  # disjoint and complete


def categories_of(examples: list[Example], part: list[int]) -> Counter[str]:
    return Counter(examples[i].category for i in part)


# ---- iid ---------------------------------------------------------------------------------------------

def test_iid_sizes_differ_by_at_most_one() -> None:
    examples = make_examples({"a": 10})
    parts = IidPartitioner(3, seed=0).partition(examples)
    check_cover(parts, 10)
    assert sorted(len(p) for p in parts) == [3, 3, 4]


def test_seed_determinism_and_global_rng_untouched() -> None:
    examples = make_examples({"a": 30, "b": 30, "c": 30})
    np_state, py_state = np.random.get_state()[1].copy(), random.getstate()
    for name in ("iid", "dirichlet", "shards"):
        first = make_partitioner(name, num_partitions=4, seed=1).partition(examples)
        again = make_partitioner(name, num_partitions=4, seed=1).partition(examples)
        other = make_partitioner(name, num_partitions=4, seed=2).partition(examples)
        assert first == again and first != other, name
        check_cover(first, len(examples))
    assert (np.random.get_state()[1] == np_state).all() and random.getstate() == py_state


# ---- dirichlet ---------------------------------------------------------------------------------------

def test_dirichlet_min_size_honoured_with_skewed_alpha() -> None:
    examples = make_examples({c: 50 for c in "abcd"})
    parts = DirichletPartitioner(5, alpha=0.1, seed=3, min_partition_size=15).partition(examples)
    check_cover(parts, 200)
    assert min(len(p) for p in parts) >= 15


def test_dirichlet_large_alpha_is_nearly_even_per_category() -> None:
    examples = make_examples({"a": 20, "b": 20})
    parts = DirichletPartitioner(4, alpha=1e6, seed=0).partition(examples)
    for part in parts:  # Dir(1e6) ~ (1/4, ...): 5 per category, +-1 from flooring the cut points
        assert all(4 <= n <= 6 for n in categories_of(examples, part).values())


def test_dirichlet_impossible_min_size() -> None:
    examples = make_examples({"a": 20, "b": 20})
    with pytest.raises(ConfigError, match="--min-client-size.*--alpha"):
        DirichletPartitioner(4, alpha=0.01, seed=0, min_partition_size=10).partition(examples)
    with pytest.raises(ConfigError, match="--num-clients 4: the data has 40 records"):
        DirichletPartitioner(4, alpha=1.0, min_partition_size=11).partition(examples)


@pytest.mark.parametrize("alpha", [0, -1.0, float("nan"), "x"])
def test_dirichlet_bad_alpha(alpha: object) -> None:
    with pytest.raises(ConfigError, match="--alpha"):
        DirichletPartitioner(2, alpha=alpha)  # type: ignore[arg-type]


# ---- shards ------------------------------------------------------------------------------------------

def test_shards_give_each_client_whole_categories() -> None:
    examples = make_examples({c: 5 for c in "abcd"})  # 4 shards of 5, each exactly one category
    parts = ShardPartitioner(2, shards_per_client=2, seed=0).partition(examples)
    check_cover(parts, 20)
    for part in parts:
        counts = categories_of(examples, part)
        assert len(counts) == 2 and set(counts.values()) == {5}


def test_shards_at_most_shards_per_client_categories() -> None:
    examples = make_examples({"a": 4, "b": 4, "c": 4})  # 6 shards of 2 records, none spans categories
    for seed in range(5):
        parts = ShardPartitioner(3, shards_per_client=2, seed=seed).partition(examples)
        assert [len(p) for p in parts] == [4, 4, 4]
        assert all(len(categories_of(examples, p)) <= 2 for p in parts)


def test_shards_too_few_records() -> None:
    with pytest.raises(ConfigError, match="--num-clients 3 x --shards-per-client 2 = 6 shards"):
        ShardPartitioner(3, shards_per_client=2).partition(make_examples({"a": 5}))
    with pytest.raises(ConfigError, match="--shards-per-client"):
        ShardPartitioner(3, shards_per_client=0)


# ---- files -------------------------------------------------------------------------------------------

def test_files_one_client_per_source_in_natural_order() -> None:
    sources = ["c_10.json", "c_2.json", "c_1.json", "c_2.json", "c_10.json", "c_2.json"]
    examples = [Example(f"q{i}", "", "a", "k", source=s) for i, s in enumerate(sources)]
    partitioner = make_partitioner("files", num_partitions=99, seed=0)
    assert isinstance(partitioner, FilePartitioner) and partitioner.num_partitions == 0
    assert partitioner.partition(examples) == [[2], [1, 3, 5], [0, 4]]
    assert partitioner.num_partitions == 3
    assert partitioner.sources == ["c_1.json", "c_2.json", "c_10.json"]


# ---- registry and shared validation ------------------------------------------------------------------

def test_make_partitioner_passes_options() -> None:
    assert set(PARTITIONERS) == {"iid", "dirichlet", "shards", "files"}
    dirichlet = make_partitioner("dirichlet", num_partitions=3, seed=5, alpha=0.3, min_partition_size=7)
    assert isinstance(dirichlet, DirichletPartitioner)
    assert (dirichlet.num_partitions, dirichlet.seed, dirichlet.alpha, dirichlet.min_partition_size) == (3, 5, 0.3, 7)
    shards = make_partitioner("shards", num_partitions=4, shards_per_client=3)
    assert isinstance(shards, ShardPartitioner) and shards.shards_per_client == 3
    assert type(make_partitioner("iid", num_partitions=2)) is IidPartitioner


def test_unknown_partitioner_lists_choices() -> None:
    with pytest.raises(ConfigError, match="--partition 'label'.*iid, dirichlet, shards, files"):
        make_partitioner("label", num_partitions=2)


@pytest.mark.parametrize("name", ["iid", "dirichlet", "shards"])
def test_more_clients_than_records(name: str) -> None:
    with pytest.raises(ConfigError, match="--num-clients 5"):
        make_partitioner(name, num_partitions=5, shards_per_client=1).partition(make_examples({"a": 3}))


@pytest.mark.parametrize("bad", [0, -2, 1.5, True])
def test_bad_num_clients(bad: object) -> None:
    with pytest.raises(ConfigError, match="--num-clients must be a positive integer"):
        IidPartitioner(bad)  # type: ignore[arg-type]


def test_split_returns_examples() -> None:
    examples = make_examples({"a": 4})
    partitioner: Partitioner = IidPartitioner(2, seed=0)
    assert Counter(e for part in partitioner.split(examples) for e in part) == Counter(examples)


# ---- stats and partition files -----------------------------------------------------------------------

def test_partition_stats_counts() -> None:
    parts = [[Example("q", "", "a", "b"), Example("q2", "", "a", "a"), Example("q3", "", "a", "b")],
             [Example("q4", "", "a", "c")]]
    assert partition_stats(parts) == {
        "num_clients": 2,
        "categories": ["a", "b", "c"],
        "clients": [{"client": 0, "records": 3, "categories": {"a": 1, "b": 2}},
                    {"client": 1, "records": 1, "categories": {"c": 1}}],
    }


def test_write_partition_files_roundtrip(tmp_path: Path) -> None:
    examples = make_examples({"x": 3, "y": 2})
    parts = ShardPartitioner(2, shards_per_client=1, seed=0).split(examples)
    out = tmp_path / "run" / "partition"
    stats = write_partition(parts, out)
    assert sorted(p.name for p in out.iterdir()) == ["categories.png", "clients", "stats.json"]
    assert sorted(p.name for p in (out / "clients").iterdir()) == ["client_000.json", "client_001.json"]
    assert json.loads((out / "stats.json").read_text()) == stats == partition_stats(parts)
    assert (out / "categories.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    reloaded, _ = load_examples(out / "clients" / "client_001.json")
    assert reloaded == parts[1]
    folder, _ = load_examples(out / "clients")  # the folder is a valid --data for --partition files
    assert sorted({e.source for e in folder}) == ["client_000.json", "client_001.json"]
    assert set(json.loads((out / "clients" / "client_000.json").read_text())[0]) == {"instruction", "context", "response", "category"}
