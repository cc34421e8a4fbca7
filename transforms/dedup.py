"""Stage 3 (paper section 3.2): duplicates removed, first by specz_name, then by object_id.

Each pass is a GroupByKey on a deterministic hash bucket of the key (a plain Python int), so all
rows sharing a key meet in one group, which is deduplicated exactly, in input order. Only the keys
are shuffled; the full rows are filtered at the end by the kept keys, a side input (one line
number and file name per kept galaxy: ~10 MB for the paper's 286k)."""
from __future__ import annotations

import apache_beam as beam
import pyarrow as pa

from galaxiesml.dedup import DEDUP_KEYS, first_per_key, keep_rows, keys_of, partition
from galaxiesml.funnel import count_by
from transforms.arrow import typed_outputs
from transforms.metrics import increment

DUPLICATES = "duplicates"


class _KeepFirst(beam.DoFn):
    def __init__(self, key: str):
        self.key = key

    def process(self, element: tuple[int, list[pa.Table]]):
        _, parts = element
        kept, duplicates = first_per_key(pa.concat_tables(list(parts)), self.key)
        increment(count_by(duplicates, "duplicate_key", "duplicates"))
        if kept.num_rows:
            yield kept
        if duplicates.num_rows:
            yield beam.pvalue.TaggedOutput(DUPLICATES, duplicates)


class DeduplicateBy(beam.PTransform):
    """Key tables -> {"kept", "duplicates"}: the first row per `key` value, and the others."""

    def __init__(self, key: str, buckets: int):
        super().__init__()
        self.key = key
        self.buckets = buckets

    def expand(self, rows):
        outputs = (
            rows
            | f"Partition by {self.key}"
            >> beam.FlatMap(partition, self.key, self.buckets).with_output_types(tuple[int, pa.Table])
            | f"Group by {self.key}" >> beam.GroupByKey()
            | f"Keep first per {self.key}"
            >> beam.ParDo(_KeepFirst(self.key)).with_outputs(DUPLICATES, main="kept")
        )
        return typed_outputs(outputs, **{DUPLICATES: pa.Table})


class Deduplicate(beam.PTransform):
    """Rows -> {"kept", "duplicates"} after both passes of section 3.2."""

    def __init__(self, buckets: int = 64):
        super().__init__()
        self.buckets = buckets

    def expand(self, rows):
        keys = rows | "Keys" >> beam.Map(keys_of).with_output_types(pa.Table)
        duplicates = []
        for key in DEDUP_KEYS:
            result = keys | f"Dedup {key}" >> DeduplicateBy(key, self.buckets)
            keys = result.kept
            duplicates.append(result[DUPLICATES])
        all_duplicates = tuple(duplicates) | "All duplicates" >> beam.Flatten().with_output_types(
            pa.Table
        )
        kept = rows | "Keep deduplicated rows" >> beam.Map(
            _keep, beam.pvalue.AsList(keys)
        ).with_output_types(pa.Table)
        return {"kept": kept, DUPLICATES: all_duplicates}


def _keep(rows: pa.Table, kept_keys: list[pa.Table]) -> pa.Table:
    return keep_rows(rows, pa.concat_tables(kept_keys) if kept_keys else rows.slice(0, 0))
