"""Data: loading and validation of instruction records, client partitioners, partition statistics."""

from fedit.data.loading import (
    DOLLY_ENV,
    HUB,
    Example,
    LoadReport,
    load_examples,
    load_source,
    parse_record,
    resolve_data_path,
)
from fedit.data.partition import (
    PARTITIONERS,
    DirichletPartitioner,
    FieldPartitioner,
    FilePartitioner,
    IidPartitioner,
    Partitioner,
    ShardPartitioner,
    make_partitioner,
)
from fedit.data.stats import partition_stats, plot_partition, write_partition, write_partition_stats

__all__ = [
    "DOLLY_ENV",
    "HUB",
    "PARTITIONERS",
    "DirichletPartitioner",
    "Example",
    "FieldPartitioner",
    "FilePartitioner",
    "IidPartitioner",
    "LoadReport",
    "Partitioner",
    "ShardPartitioner",
    "load_examples",
    "load_source",
    "make_partitioner",
    "parse_record",
    "partition_stats",
    "plot_partition",
    "resolve_data_path",
    "write_partition",
    "write_partition_stats",
]
