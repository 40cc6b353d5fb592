"""--client-test-fraction: each client's held-out records, seeded and stratified by category."""

import pytest

from fedit.config import Config
from fedit.data.client_test import held_out_indices, split_clients
from fedit.data.records import Example
from fedit.errors import ConfigError

import numpy as np


def records(cats: str) -> list[Example]:
    return [Example(f"q{i}", "", f"a{i}", c) for i, c in enumerate(cats)]


def test_split_is_stratified_by_category_and_seeded():
    client = records("a" * 10 + "b" * 5 + "c" * 5)
    train, test, idx = split_clients([client], 0.2, seed=7)
    assert sorted(e.category for e in test[0]) == ["a", "a", "b", "c"]   # 20 % of each category
    assert len(train[0]) == 16 and not set(e.instruction for e in test[0]) & set(e.instruction for e in train[0])
    assert split_clients([client], 0.2, seed=7)[2] == idx              # same seed, same split
    assert split_clients([client], 0.2, seed=8)[2] != idx


def test_largest_remainders_keep_the_total():
    client = records("a" * 3 + "b" * 3 + "c" * 4)   # 0.25 * 10 = 2.5 -> 2 held out (round half to even)
    held = held_out_indices(client, 0.25, np.random.default_rng(0), 0)
    assert len(held) == 2
    assert [client[i].category for i in held].count("c") == 1          # c has the largest remainder (1.0)


def test_without_a_fraction_nothing_is_held_out():
    train, test, idx = split_clients([records("ab")], None, seed=0)
    assert train == [records("ab")] and test == [[]] and idx == [[]]


def test_a_client_too_small_to_hold_any_out_is_one_line():
    with pytest.raises(ConfigError, match=r"^--client-test-fraction 0.1: client 2 has 4 record\(s\), too few to "
                                          r"hold 0.1 of them out and keep some to train on \(it needs at least 6\)$"):
        held_out_indices(records("abab"), 0.1, np.random.default_rng(0), 2)


@pytest.mark.parametrize("fraction, needs", [(1e-07, 5000001), (0.9999999, 5000001), (0.99, 51)])
def test_an_extreme_fraction_is_one_line_too(fraction, needs):
    """The smallest client was searched up to 10**6 records: 1e-07 ended in a StopIteration traceback."""
    with pytest.raises(ConfigError, match=rf"too few to hold {fraction:g} of them out and keep some to train on "
                                          rf"\(it needs at least {needs}\)$"):
        held_out_indices(records("abab"), fraction, np.random.default_rng(0), 0)


@pytest.mark.parametrize("value", [0, 1, 1.5, -0.2])
def test_fraction_outside_0_1_is_refused(value):
    with pytest.raises(ConfigError, match=rf"^--client-test-fraction: must be in \(0, 1\), got {value}"):
        Config().override({"client_test_fraction": value})


def test_a_node_holds_out_what_the_simulation_holds_out_of_its_client():
    from fedit.data.client_test import split_one

    clients = [records("aab" * 4), records("abc" * 5), records("c" * 9)]
    train, test, idx = split_clients(clients, 0.3, seed=4)
    for cid, part in enumerate(clients):
        assert split_one(part, 0.3, 4, cid) == (train[cid], test[cid], idx[cid])
