"""Duplicate removal as section 3.2 of the paper does it: keep the first row per specz_name, then
the first per object_id. "First" is the earliest in input order: by source file, then line.

Only the keys travel: each row's (source, line, object_id, specz_name) is partitioned by a
deterministic hash of the key, so every row sharing a key meets in one partition, which is
deduplicated exactly on its own; the full rows are then filtered by the (source, line) kept.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from galaxiesml.hashing import hash_ids, hash_strings
from galaxiesml.schema import DUPLICATE_SCHEMA

DEDUP_KEYS = ("specz_name", "object_id")
KEY_COLUMNS = ("source", "line", "object_id", "specz_name")


def keys_of(rows: pa.Table) -> pa.Table:
    """The columns dedup needs: the row's identity and the two keys."""
    return rows.select(list(KEY_COLUMNS))


def keep_rows(rows: pa.Table, kept_keys: pa.Table) -> pa.Table:
    """The rows whose (source, line) is among `kept_keys`, in the order of `rows`."""
    mask = pc.is_in(
        _row_ids(rows), value_set=_row_ids(kept_keys)
    )
    return rows.filter(mask)


def _row_ids(table: pa.Table) -> pa.Array:
    # "line@source": one string per row, unique across files
    return pc.binary_join_element_wise(
        pc.cast(table.column("line"), pa.string()), table.column("source"), "@"
    )


def bucket_of(table: pa.Table, key: str, buckets: int) -> np.ndarray:
    """Partition number of each row for `key`."""
    column = table.column(key).combine_chunks()
    if pa.types.is_integer(column.type):
        hashes = hash_ids(np.asarray(column.fill_null(0), dtype=np.int64), seed=0)
    else:
        hashes = hash_strings(column)
    return (hashes % np.uint64(buckets)).astype(np.int64)


def partition(table: pa.Table, key: str, buckets: int) -> Iterator[tuple[int, pa.Table]]:
    """Split a table into (bucket, rows) parts by the hash of `key`."""
    if table.num_rows == 0:
        return
    bucket = bucket_of(table, key, buckets)
    order = np.argsort(bucket, kind="stable")
    sorted_table = table.take(pa.array(order))
    sorted_bucket = bucket[order]
    starts = np.flatnonzero(np.r_[True, sorted_bucket[1:] != sorted_bucket[:-1]])
    ends = np.r_[starts[1:], len(order)]
    for s, e in zip(starts, ends):
        yield int(sorted_bucket[s]), sorted_table.slice(int(s), int(e - s))


def first_per_key(table: pa.Table, key: str) -> tuple[pa.Table, pa.Table]:
    """(first row of each `key` in input order, every other row in DUPLICATE_SCHEMA)."""
    table = table.sort_by([("source", "ascending"), ("line", "ascending")])
    codes = np.asarray(pc.dictionary_encode(table.column(key).combine_chunks()).indices)
    _, first = np.unique(codes, return_index=True)
    is_first = np.zeros(table.num_rows, bool)
    is_first[first] = True
    first_of_row = np.empty(codes.max() + 1 if len(codes) else 0, dtype=np.int64)
    first_of_row[codes[first]] = first
    dup_idx = np.flatnonzero(~is_first)
    kept_idx = pa.array(first_of_row[codes[dup_idx]], pa.int64())
    dups = table.take(pa.array(dup_idx, pa.int64()))
    duplicates = pa.table(
        {
            "source": dups.column("source"),
            "line": dups.column("line"),
            "object_id": dups.column("object_id"),
            "specz_name": dups.column("specz_name"),
            "duplicate_key": pa.array([key] * len(dup_idx), pa.string()),
            "kept_source": table.column("source").take(kept_idx),
            "kept_line": table.column("line").take(kept_idx),
            "kept_object_id": table.column("object_id").take(kept_idx),
        },
        schema=DUPLICATE_SCHEMA,
    )
    return table.filter(pa.array(is_first)), duplicates
