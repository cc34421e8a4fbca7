"""Stage 8 (paper section 3.5): the galaxies with their images as sharded Parquet, per split.

Each worker writes a shard whenever it holds `per_shard` galaxies of a split (and at the end of a
bundle) under a temporary name, and emits the name. After a GroupByKey on the split (a barrier:
every shard of the split is written), the emitted shards — and only those, so a retried bundle's
leftovers are dropped — are renamed part-SSSSS-of-NNNNN.parquet in order of their first object_id.
"""
from __future__ import annotations

import uuid

import apache_beam as beam
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems
from apache_beam.transforms.window import GlobalWindows

from galaxiesml.dataset import GALAXIES_DIR, parquet_options, records_to_table

def split_dir(output: str, split: str) -> str:
    return FileSystems.join(output, GALAXIES_DIR, split)


class _WriteShards(beam.DoFn):
    def __init__(self, output: str, per_shard: int):
        self.output = output
        self.per_shard = per_shard

    def start_bundle(self):
        self._buffers: dict[str, list[dict]] = {}

    def _flush(self, split: str) -> tuple[str, tuple[int, str, int]]:
        records = self._buffers.pop(split)
        table = records_to_table(records).sort_by("object_id")
        path = FileSystems.join(split_dir(self.output, split), "_tmp", f"{uuid.uuid4().hex}.parquet")
        with FileSystems.create(path) as f:
            pq.write_table(table, f, row_group_size=64, **parquet_options(table.schema))
        return split, (table.column("object_id")[0].as_py(), path, table.num_rows)

    def process(self, record: dict):
        split = record["row"]["split"]
        self._buffers.setdefault(split, []).append(record)
        if len(self._buffers[split]) >= self.per_shard:
            yield self._flush(split)

    def finish_bundle(self):
        for split in list(self._buffers):
            yield GlobalWindows.windowed_value(self._flush(split))


def _finalize(element: tuple[str, list[tuple[int, str, int]]], output: str) -> tuple[str, list[str]]:
    """Rename a split's written shards to their final names; drop anything else left there."""
    split, shards = element
    shards = sorted(shards)
    directory = split_dir(output, split)
    keep = {path for _, path, _ in shards}
    stale = [
        m.path
        for pattern in (FileSystems.join(directory, "part-*.parquet"), FileSystems.join(directory, "_tmp", "*"))
        for r in FileSystems.match([pattern])
        for m in r.metadata_list
        if m.path not in keep
    ]
    if stale:
        FileSystems.delete(stale)
    final = [FileSystems.join(directory, f"part-{i:05d}-of-{len(shards):05d}.parquet") for i in range(len(shards))]
    FileSystems.rename([path for _, path, _ in shards], final)
    return split, final


class WriteGalaxies(beam.PTransform):
    """Galaxy records -> (split, [final Parquet paths]) once every shard of the split is written."""

    def __init__(self, output: str, per_shard: int):
        super().__init__()
        self.output = output
        self.per_shard = per_shard

    def expand(self, galaxies):
        return (
            galaxies
            | "Write shards" >> beam.ParDo(_WriteShards(self.output, self.per_shard))
            | "All shards of a split" >> beam.GroupByKey()
            | "Name shards" >> beam.Map(_finalize, self.output)
        )
