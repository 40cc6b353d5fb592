"""Split examples across federated clients, in the style of flwr-datasets' partitioners.

A partitioner maps a sequence of :class:`~fedit.data.loading.Example` to one sorted list of
indices per client; the lists are disjoint and cover every example. Each partitioner owns its
RNG (``np.random.default_rng(seed)`` made in ``__init__``) and never touches global random
state, so a fresh partitioner with the same seed gives the same split.
"""

from __future__ import annotations

import inspect
import logging
import math
from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np

from fedit.config import BY_FIELD
from fedit.data.loading import Example, natural_sort_key
from fedit.errors import ConfigError

logger = logging.getLogger(__name__)


def _indices_by_category(examples: Sequence[Example]) -> dict[str, list[int]]:
    """Indices of each category, categories in sorted order (so draws do not depend on file order)."""
    groups: dict[str, list[int]] = {}
    for index, example in enumerate(examples):
        groups.setdefault(example.category, []).append(index)
    return {category: groups[category] for category in sorted(groups)}


class Partitioner(ABC):
    """Splits a dataset into ``num_partitions`` client datasets (lists of indices)."""

    def __init__(self, num_partitions: int, seed: int = 42) -> None:
        if isinstance(num_partitions, bool) or not isinstance(num_partitions, (int, np.integer)) or num_partitions < 1:
            raise ConfigError(f"--num-clients must be a positive integer, got {num_partitions!r}")
        self._num_partitions = int(num_partitions)
        self.seed = seed
        self._rng = np.random.default_rng(seed)

    @property
    def num_partitions(self) -> int:
        """Number of clients the partition has."""
        return self._num_partitions

    @abstractmethod
    def partition(self, examples: Sequence[Example]) -> list[list[int]]:
        """Indices into ``examples`` for each client, each list sorted ascending."""

    def split(self, examples: Sequence[Example]) -> list[list[Example]]:
        """The client datasets themselves (``partition`` applied to ``examples``)."""
        return [[examples[i] for i in part] for part in self.partition(examples)]

    def _require_records(self, n_records: int, per_client: int = 1) -> None:
        if n_records < self._num_partitions * per_client:
            raise ConfigError(
                f"--num-clients {self._num_partitions}: the data has {n_records} records, too few to give "
                f"every client at least {per_client}; use fewer clients or more data")

    def _finish(self, parts: Sequence[Sequence[int] | np.ndarray]) -> list[list[int]]:
        result = [sorted(int(i) for i in part) for part in parts]
        if any(not part for part in result):
            raise ConfigError(f"--num-clients {len(result)}: a client would get no records; use fewer clients")
        sizes = [len(part) for part in result]
        logger.debug("%s: %d clients, %d to %d records each", type(self).__name__, len(result), min(sizes), max(sizes))
        return result


class IidPartitioner(Partitioner):
    """Uniformly random split; client sizes differ by at most one."""

    def partition(self, examples: Sequence[Example]) -> list[list[int]]:
        self._require_records(len(examples))
        order = self._rng.permutation(len(examples))
        return self._finish(np.array_split(order, self._num_partitions))


class DirichletPartitioner(Partitioner):
    """Label-skewed split: each category's records are divided among clients in proportions
    drawn from Dir(alpha); small alpha gives each client few categories.

    Draws are repeated (at most ``max_tries`` times) until every client has at least
    ``min_partition_size`` records (at least 1).
    """

    max_tries = 100

    def __init__(self, num_partitions: int, alpha: float, seed: int = 42, min_partition_size: int = 1) -> None:
        super().__init__(num_partitions, seed)
        if not isinstance(alpha, (int, float)) or not math.isfinite(alpha) or alpha <= 0:
            raise ConfigError(f"--alpha must be a positive number, got {alpha!r}")
        if min_partition_size < 0:
            raise ConfigError(f"--min-client-size must be >= 0, got {min_partition_size}")
        self.alpha = float(alpha)
        self.min_partition_size = int(min_partition_size)

    def partition(self, examples: Sequence[Example]) -> list[list[int]]:
        need = max(1, self.min_partition_size)
        self._require_records(len(examples), need)
        by_category = _indices_by_category(examples)
        for _ in range(self.max_tries):
            parts = self._draw(by_category)
            if min(len(part) for part in parts) >= need:
                return self._finish(parts)
        raise ConfigError(
            f"dirichlet partition: no draw in {self.max_tries} tries gave every one of {self._num_partitions} "
            f"clients >= {need} records ({len(examples)} records, alpha {self.alpha}); "
            "lower --min-client-size, raise --alpha, or use fewer --num-clients")

    def _draw(self, by_category: dict[str, list[int]]) -> list[list[int]]:
        parts: list[list[int]] = [[] for _ in range(self._num_partitions)]
        for indices in by_category.values():
            shuffled = self._rng.permutation(indices)
            proportions = self._rng.dirichlet(np.full(self._num_partitions, self.alpha))
            cuts = (np.cumsum(proportions)[:-1] * len(shuffled)).astype(int)
            for client, chunk in enumerate(np.split(shuffled, cuts)):
                parts[client].extend(chunk.tolist())
        return parts


class ShardPartitioner(Partitioner):
    """Shepherd's pathological non-IID split: records sorted by category (stable), cut into
    ``num_partitions * shards_per_client`` contiguous shards, each client gets
    ``shards_per_client`` random shards, hence few categories per client."""

    def __init__(self, num_partitions: int, shards_per_client: int = 2, seed: int = 42) -> None:
        super().__init__(num_partitions, seed)
        if shards_per_client < 1:
            raise ConfigError(f"--shards-per-client must be >= 1, got {shards_per_client}")
        self.shards_per_client = int(shards_per_client)

    def partition(self, examples: Sequence[Example]) -> list[list[int]]:
        per_client = self.shards_per_client
        n_shards = self._num_partitions * per_client
        if len(examples) < n_shards:
            raise ConfigError(
                f"--num-clients {self._num_partitions} x --shards-per-client {per_client} = {n_shards} shards, "
                f"but the data has only {len(examples)} records; use fewer clients or shards")
        order = np.array(sorted(range(len(examples)), key=lambda i: (examples[i].category, i)), dtype=np.int64)
        shards = np.array_split(order, n_shards)
        owners = self._rng.permutation(n_shards)
        return self._finish([
            np.concatenate([shards[s] for s in owners[c * per_client:(c + 1) * per_client]])
            for c in range(self._num_partitions)])


class FilePartitioner(Partitioner):
    """One client per distinct ``Example.source`` (the file a record came from), sources in
    natural sort order (``local_training_2`` before ``local_training_10``): reproduces a
    partition that was shipped as one file per client, e.g. Shepherd's Dolly clients.

    ``num_partitions`` is 0 until :meth:`partition` has run, then the number of sources;
    ``sources[i]`` is the file of client ``i``. No randomness is involved.
    """

    def __init__(self) -> None:  # no super().__init__: the client count comes from the data
        self._num_partitions = 0
        self.sources: list[str] = []

    def partition(self, examples: Sequence[Example]) -> list[list[int]]:
        if not examples:
            raise ConfigError("--partition files: there are no records to partition")
        groups: dict[str, list[int]] = {}
        for index, example in enumerate(examples):
            groups.setdefault(example.source, []).append(index)
        self.sources = sorted(groups, key=natural_sort_key)
        self._num_partitions = len(self.sources)
        return self._finish([groups[source] for source in self.sources])


class FieldPartitioner(Partitioner):
    """One client per distinct value of a record field (``--partition by-field:FIELD``): a natural
    split such as one client per user or per source. ``FIELD`` is ``category``, ``source`` (the
    file) or any extra scalar field the records carry; values in natural sort order. Every record
    must have the field. Like ``files``, the client count comes from the data; no randomness."""

    def __init__(self, field: str) -> None:  # no super().__init__: the client count comes from the data
        self.field = field
        self._num_partitions = 0
        self.values: list[str] = []

    def partition(self, examples: Sequence[Example]) -> list[list[int]]:
        where = f"--partition {BY_FIELD}{self.field}"
        if not examples:
            raise ConfigError(f"{where}: there are no records to partition")
        groups: dict[str, list[int]] = {}
        missing = []
        for index, example in enumerate(examples):
            value = example.field_value(self.field)
            if value is None or value == "":
                missing.append(example)
            else:
                groups.setdefault(str(value), []).append(index)
        if missing:
            first = missing[0]
            origin = f" in {first.source}" if first.source else ""
            raise ConfigError(f"{where}: {len(missing)} of {len(examples)} records have no {self.field!r} field "
                              f"(first{origin}: {first.instruction[:40]!r}); add it to every record or choose "
                              "another --partition")
        self.values = sorted(groups, key=natural_sort_key)
        self._num_partitions = len(self.values)
        return self._finish([groups[value] for value in self.values])


PARTITIONERS: dict[str, type[Partitioner]] = {
    "iid": IidPartitioner,
    "dirichlet": DirichletPartitioner,
    "shards": ShardPartitioner,
    "files": FilePartitioner,
}


def make_partitioner(name: str, *, num_partitions: int, seed: int = 42, alpha: float = 0.5,
                     min_partition_size: int = 1, shards_per_client: int = 2) -> Partitioner:
    """Build the partitioner registered as ``name`` (or ``by-field:FIELD``), passing it the options
    it takes (``files`` and ``by-field`` ignore all of them: their client count comes from the data)."""
    if name.startswith(BY_FIELD) and name[len(BY_FIELD):].strip():
        return FieldPartitioner(name[len(BY_FIELD):].strip())
    cls = PARTITIONERS.get(name)
    if cls is None:
        raise ConfigError(f"--partition {name!r} is unknown; choose one of: {', '.join(PARTITIONERS)}, "
                          f"{BY_FIELD}FIELD")
    options = {"num_partitions": num_partitions, "seed": seed, "alpha": alpha,
               "min_partition_size": min_partition_size, "shards_per_client": shards_per_client}
    accepted = inspect.signature(cls).parameters
    return cls(**{key: value for key, value in options.items() if key in accepted})
