"""Dedup in input order by specz_name then object_id, and the split assignment."""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from galaxiesml.dedup import bucket_of, first_per_key, partition
from galaxiesml.splits import assign_splits
from tests.catalog_rows import row, typed_table


def dedup_both(table: pa.Table) -> tuple[pa.Table, pa.Table]:
    kept, d1 = first_per_key(table, "specz_name")
    kept, d2 = first_per_key(kept, "object_id")
    return kept, pa.concat_tables([d1, d2])


def test_both_duplicate_patterns():
    table = typed_table(
        [
            row(object_id=1, specz_name="A"),
            row(object_id=2, specz_name="A"),  # pattern 1: same spectrum, another object id
            row(object_id=3, specz_name="B"),
            row(object_id=3, specz_name="C"),  # pattern 2: same object, another spectrum
        ]
    )
    kept, dups = dedup_both(table)
    assert kept.column("object_id").to_pylist() == [1, 3]
    d = {r["line"]: r for r in dups.to_pylist()}
    assert d[2]["duplicate_key"] == "specz_name" and d[2]["kept_line"] == 1
    assert d[2]["kept_object_id"] == 1
    assert d[4]["duplicate_key"] == "object_id" and d[4]["kept_line"] == 3


def test_first_is_earliest_by_file_then_line_whatever_the_arrival_order():
    rows = [
        (row(object_id=10, specz_name="A"), "b.csv", 2),
        (row(object_id=11, specz_name="A"), "a.csv", 9),
        (row(object_id=12, specz_name="A"), "a.csv", 3),
    ]
    tables = [typed_table([r], [line], source) for r, source, line in rows]
    for order in ([0, 1, 2], [2, 1, 0], [1, 0, 2]):
        kept, dups = first_per_key(pa.concat_tables([tables[i] for i in order]), "specz_name")
        assert kept.column("object_id").to_pylist() == [12]
        assert sorted(dups.column("kept_line").to_pylist()) == [3, 3]


def test_partition_puts_each_key_in_one_bucket_and_loses_nothing():
    table = typed_table([row(object_id=i % 50, specz_name=f"s{i % 37}") for i in range(500)])
    for key in ("specz_name", "object_id"):
        parts = list(partition(table, key, 8))
        assert sum(p.num_rows for _, p in parts) == 500
        seen: dict = {}
        for bucket, part in parts:
            for value in part.column(key).to_pylist():
                assert seen.setdefault(value, bucket) == bucket
    # the bucket is a pure function of the key (no per-process salt)
    assert bucket_of(table, "specz_name", 8).tolist() == bucket_of(table, "specz_name", 8).tolist()
    assert bucket_of(typed_table([row(specz_name="s1")]), "specz_name", 1000).tolist() == [
        int(__import__("zlib").crc32(b"s1") % 1000)
    ]


def test_splits_are_deterministic_proportional_and_seeded():
    ids = np.arange(200_000, dtype=np.int64) * 7919 + 36_416_246_018_753_893
    a = assign_splits(ids, seed=1)
    assert np.array_equal(a, assign_splits(ids, seed=1))
    assert np.array_equal(a[:1000], assign_splits(ids[:1000], seed=1))  # a galaxy keeps its split
    share = {s: float(np.mean(a == s)) for s in ("training", "validation", "testing")}
    assert abs(share["training"] - 0.6) < 0.005 and abs(share["testing"] - 0.2) < 0.005
    assert np.mean(a != assign_splits(ids, seed=2)) > 0.4
    b = assign_splits(ids, seed=1, fractions=(0.8, 0.1, 0.1))
    assert abs(float(np.mean(b == "training")) - 0.8) < 0.005
    # growing the training fraction only moves galaxies into training
    assert np.all(b[a == "training"] == "training")
