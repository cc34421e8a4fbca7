"""Stage 8 (paper section 3.5): the galaxies with their images as sharded Parquet, per split.

Each worker streams the galaxies of a split into an open shard under a temporary name, one Parquet
row group (ROW_GROUP galaxies, sorted by object_id) at a time, so that it holds at most a row group
per split in memory whatever the shard size; at `per_shard` galaxies (and at the end of a bundle)
the shard is closed and its name emitted. After a GroupByKey on the split (a barrier:
every shard of the split is written), the emitted shards — and only those, so a retried bundle's
leftovers are dropped — are renamed part-SSSSS-of-NNNNN.parquet in order of their smallest object_id.
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


ROW_GROUP = 64  # galaxies per Parquet row group: ~26 MB of pixels


class _Shard:
    """One temporary shard being written: its open file and Parquet writer, the pending row group."""

    def __init__(self, path: str):
        self.path = path
        self.rows = 0
        self.smallest_id: int | None = None
        self.pending: list[dict] = []
        self._file = None
        self._writer: pq.ParquetWriter | None = None

    @property
    def size(self) -> int:
        """Galaxies in the shard, written or pending."""
        return self.rows + len(self.pending)

    def add(self, record: dict) -> None:
        self.pending.append(record)
        if len(self.pending) >= ROW_GROUP:
            self._write()

    def _write(self) -> None:
        table = records_to_table(self.pending).sort_by("object_id")
        self.pending = []
        if self._writer is None:
            self._file = FileSystems.create(self.path)
            self._writer = pq.ParquetWriter(self._file, table.schema, **parquet_options(table.schema))
        self._writer.write_table(table, row_group_size=ROW_GROUP)
        first = table.column("object_id")[0].as_py()
        self.smallest_id = first if self.smallest_id is None else min(self.smallest_id, first)
        self.rows += table.num_rows

    def close(self) -> tuple[int, str, int]:
        """(smallest object_id, path, rows) of the finished shard."""
        if self.pending:
            self._write()
        self._writer.close()
        self._file.close()
        return self.smallest_id, self.path, self.rows


class _WriteShards(beam.DoFn):
    def __init__(self, output: str, per_shard: int):
        self.output = output
        self.per_shard = per_shard

    def start_bundle(self):
        self._shards: dict[str, _Shard] = {}

    def _close(self, split: str) -> tuple[str, tuple[int, str, int]]:
        return split, self._shards.pop(split).close()

    def process(self, record: dict):
        split = record["row"]["split"]
        shard = self._shards.get(split)
        if shard is None:
            shard = self._shards[split] = _Shard(FileSystems.join(split_dir(self.output, split), "_tmp", f"{uuid.uuid4().hex}.parquet"))
        shard.add(record)
        if shard.size >= self.per_shard:
            yield self._close(split)

    def finish_bundle(self):
        for split in list(self._shards):
            yield GlobalWindows.windowed_value(self._close(split))


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
