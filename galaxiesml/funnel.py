"""The funnel: how many catalog rows were read, rejected (by rule), duplicates (by key) and kept
(by split), and the check that every row read is in exactly one of those."""
from __future__ import annotations

from collections import Counter
from typing import Iterable

import pyarrow as pa
import pyarrow.compute as pc


class AccountingError(RuntimeError):
    """The outputs do not account for every row read."""


def count_by(table: pa.Table, column: str, prefix: str) -> Counter:
    """Counts of `table` rows per value of `column`, as '{prefix}.{value}' keys."""
    if table.num_rows == 0:
        return Counter()
    counts = pc.value_counts(table.column(column).combine_chunks())
    return Counter(
        {f"{prefix}.{v['values']}": int(v["counts"]) for v in counts.to_pylist()}
    )


def merge_counts(counts: Iterable[dict]) -> dict:
    """Sum count dictionaries."""
    total: Counter = Counter()
    for c in counts:
        total.update(c)
    return dict(total)


def summarize(counts: dict[str, int]) -> dict:
    """The funnel as summary.json holds it; raises AccountingError if the rows do not balance."""

    def group(prefix: str) -> dict[str, int]:
        return {k.split(".", 1)[1]: v for k, v in sorted(counts.items()) if k.startswith(prefix + ".")}

    rejected, duplicates, kept = group("rejected"), group("duplicates"), group("kept")
    read = counts.get("read", 0)
    funnel = {
        "rows_read": read,
        "rejected": sum(rejected.values()),
        "rejected_by_reason": rejected,
        "duplicates": sum(duplicates.values()),
        "duplicates_by_key": duplicates,
        "kept": sum(kept.values()),
        "kept_by_split": kept,
    }
    accounted = funnel["rejected"] + funnel["duplicates"] + funnel["kept"]
    if accounted != read:
        raise AccountingError(
            f"the outputs account for {accounted} rows but {read} were read: {funnel}"
        )
    return funnel
