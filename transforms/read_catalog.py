"""Stage 1 (paper section 3.1): the catalog files, parsed into typed Arrow rows and rejects."""
from __future__ import annotations

import io

import apache_beam as beam
import pyarrow as pa
from apache_beam.io import fileio
from apache_beam.io.filesystem import CompressedFile
from apache_beam.io.filesystems import FileSystems

from galaxiesml.catalog import DEFAULT_BATCH_ROWS, read_catalog
from galaxiesml.funnel import count_by
from galaxiesml.memory import release_free_memory
from transforms.arrow import typed_outputs
from transforms.metrics import increment

REJECTED = "rejected"
COUNTS = "counts"


class _RawReader(io.RawIOBase):
    """Beam's CompressedFile as a plain Python stream (its `closed` is a method, which Arrow
    reads as "closed")."""

    def __init__(self, f: CompressedFile):
        self._f = f

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self._f.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self._f.close()
        super().close()


def open_catalog(path: str) -> io.IOBase:
    """Open a catalog file on any Beam filesystem, decompressing by its extension."""
    f = FileSystems.open(path)
    return io.BufferedReader(_RawReader(f)) if isinstance(f, CompressedFile) else f


class _ParseCatalogFile(beam.DoFn):
    def __init__(self, batch_rows: int, extra_bool_columns: tuple[str, ...]):
        self.batch_rows = batch_rows
        self.extra_bool_columns = extra_bool_columns

    def process(self, metadata: fileio.FileMetadata):
        with open_catalog(metadata.path) as stream:
            for parsed in read_catalog(stream, metadata.path, self.batch_rows, self.extra_bool_columns):
                rows = pa.Table.from_batches([parsed.rows])
                rejected = pa.Table.from_batches([parsed.rejected])
                read = {"read": rows.num_rows + rejected.num_rows}
                increment({**read, **count_by(rejected, "reason", "rejected")})
                yield beam.pvalue.TaggedOutput(COUNTS, read)
                if rows.num_rows:
                    yield rows
                if rejected.num_rows:
                    yield beam.pvalue.TaggedOutput(REJECTED, rejected)
        release_free_memory()  # what parsing a file (and the steps fused after it) freed


class ReadCatalog(beam.PTransform):
    """Files matching `pattern` (any Beam filesystem) -> "rows" and "rejected" tables, and
    "counts" of rows read (kept apart from the rows so the funnel can check the outputs add up)."""

    def __init__(
        self, pattern: str, batch_rows: int = DEFAULT_BATCH_ROWS, extra_bool_columns: tuple[str, ...] = ()
    ):
        super().__init__()
        self.pattern = pattern
        self.batch_rows = batch_rows
        self.extra_bool_columns = extra_bool_columns

    def expand(self, pbegin):
        outputs = (
            pbegin
            | "MatchCatalogFiles" >> fileio.MatchFiles(self.pattern)
            | "SpreadFiles" >> beam.Reshuffle()
            | "ParseCatalogFile"
            >> beam.ParDo(_ParseCatalogFile(self.batch_rows, self.extra_bool_columns)).with_outputs(REJECTED, COUNTS, main="rows")
        )
        return typed_outputs(outputs, **{REJECTED: pa.Table, COUNTS: dict})
