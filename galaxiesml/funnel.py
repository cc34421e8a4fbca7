"""The funnel: how many catalog rows were read, rejected (by rule), duplicates (by key), kept by
the catalog stages (by split), failed in a later stage (by stage and reason), and kept in the end
with images and morphology (by split) — and the check that every row read is in exactly one of
rejected, duplicate, failed or kept."""
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

    rejected, duplicates = group("rejected"), group("duplicates")
    catalog_kept, kept, failed = group("catalog_kept"), group("kept"), group("failed")
    failed_nested: dict[str, dict[str, int]] = {}
    for key, n in failed.items():
        stage, _, reason = key.partition(".")
        failed_nested.setdefault(stage, {})[reason] = n
    read = counts.get("read", 0)
    funnel = {
        "rows_read": read,
        "rejected": sum(rejected.values()),
        "rejected_by_reason": rejected,
        "duplicates": sum(duplicates.values()),
        "duplicates_by_key": duplicates,
        "catalog_kept": sum(catalog_kept.values()),
        "catalog_kept_by_split": catalog_kept,
        "failed": sum(failed.values()),
        "failed_by_stage": failed_nested,
        "kept": sum(kept.values()),
        "kept_by_split": kept,
    }
    accounted = funnel["rejected"] + funnel["duplicates"] + funnel["failed"] + funnel["kept"]
    if accounted != read or funnel["catalog_kept"] != funnel["kept"] + funnel["failed"]:
        raise AccountingError(
            f"the outputs account for {accounted} rows but {read} were read "
            f"(catalog stage kept {funnel['catalog_kept']}, later failed {funnel['failed']}, "
            f"kept {funnel['kept']}): {funnel}"
        )
    return funnel
