"""Stage 1 (paper section 3.1): the catalog files, parsed into typed Arrow rows and rejects."""
from __future__ import annotations

import bz2
import gzip
import io
import os
import zlib

import apache_beam as beam
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.io import fileio
from apache_beam.io.filesystem import CompressedFile, CompressionTypes, FileMetadata
from apache_beam.io.filesystems import FileSystems

from galaxiesml.catalog import CATALOG_SUFFIXES, DEFAULT_BATCH_ROWS, read_catalog, unreadable_file
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
    """Open a catalog file on any Beam filesystem, decompressing by its extension. gzip and bzip2
    go through Python's readers, which raise EOFError on a file cut short (Beam's own reader ends
    there silently, as if the file were whole)."""
    lower = path.lower()
    for suffix, opener in ((".gz", gzip.GzipFile), (".bz2", bz2.BZ2File)):
        if lower.endswith(suffix):
            return io.BufferedReader(opener(fileobj=FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)))
    f = FileSystems.open(path)
    return io.BufferedReader(_RawReader(f)) if isinstance(f, CompressedFile) else f


def folder_files(pattern: str) -> list[FileMetadata] | None:
    """The catalog files of a folder given as --catalog, with or without its slash (names ending in
    a catalog extension, hidden ones skipped, sorted by path); None when `pattern` is a file or a
    glob, which match as they say."""
    if any(c in pattern for c in "*?["):
        return None
    base = pattern.rstrip("/") or "/"
    if not pattern.endswith("/"):
        found = FileSystems.match([base])[0].metadata_list if FileSystems.exists(base) else []
        if not (os.path.isdir(base) or (not found and FileSystems.match([FileSystems.join(base, "*")])[0].metadata_list)):
            return None
    listed = FileSystems.match([FileSystems.join(base, "*")])[0].metadata_list
    name = lambda m: m.path.rstrip("/").rsplit("/", 1)[-1]  # noqa: E731
    files = [m for m in listed if not name(m).startswith(".") and name(m).lower().endswith(CATALOG_SUFFIXES)]
    return sorted(files, key=lambda m: m.path)


def catalog_files(pattern: str) -> list[FileMetadata]:
    """The catalog files --catalog names (a file, a glob, or a folder's catalog files), sorted by
    path, each with its size: one listing of the filesystem."""
    files = folder_files(pattern)
    if files is None:
        files = sorted((m for r in FileSystems.match([pattern]) for m in r.metadata_list), key=lambda m: m.path)
    return files


class _ParseCatalogFile(beam.DoFn):
    def __init__(self, batch_rows: int, extra_bool_columns: tuple[str, ...]):
        self.batch_rows = batch_rows
        self.extra_bool_columns = extra_bool_columns

    def process(self, metadata: fileio.FileMetadata):
        last_line = 0
        try:
            with open_catalog(metadata.path) as stream:
                for parsed in read_catalog(stream, metadata.path, self.batch_rows, self.extra_bool_columns):
                    for batch in (parsed.rows, parsed.rejected):  # the furthest line read, for a break's record
                        last_line = max(last_line, pc.max(batch.column("line")).as_py() or 0)
                    yield from self._emit(pa.Table.from_batches([parsed.rows]), pa.Table.from_batches([parsed.rejected]))
        except (EOFError, OSError, zlib.error, pa.ArrowInvalid) as exc:
            # a file cut short or damaged midway: what was read stays, and the rest is one rejected
            # record naming the file and where it stopped (never silence)
            yield from self._emit(None, unreadable_file(metadata.path, last_line, exc))
        release_free_memory()  # what parsing a file (and the steps fused after it) freed

    @staticmethod
    def _emit(rows: pa.Table | None, rejected: pa.Table):
        read = {"read": (rows.num_rows if rows is not None else 0) + rejected.num_rows}
        increment({**read, **count_by(rejected, "reason", "rejected")})
        yield beam.pvalue.TaggedOutput(COUNTS, read)
        if rows is not None and rows.num_rows:
            yield rows
        if rejected.num_rows:
            yield beam.pvalue.TaggedOutput(REJECTED, rejected)


class ReadCatalog(beam.PTransform):
    """Files matching `pattern` (any Beam filesystem; a folder: its catalog files) -> "rows" and "rejected" tables, and
    "counts" of rows read (kept apart from the rows so the funnel can check the outputs add up)."""

    def __init__(
        self, pattern: str, batch_rows: int = DEFAULT_BATCH_ROWS, extra_bool_columns: tuple[str, ...] = ()
    ):
        super().__init__()
        self.pattern = pattern
        self.batch_rows = batch_rows
        self.extra_bool_columns = extra_bool_columns

    def expand(self, pbegin):
        files = folder_files(self.pattern)
        matched = (
            pbegin | "MatchCatalogFiles" >> fileio.MatchFiles(self.pattern)
            if files is None
            else pbegin | "CatalogFolder" >> beam.Create(files)  # listed already, sizes and all
        )
        outputs = (
            matched
            | "SpreadFiles" >> beam.Reshuffle()
            | "ParseCatalogFile"
            >> beam.ParDo(_ParseCatalogFile(self.batch_rows, self.extra_bool_columns)).with_outputs(REJECTED, COUNTS, main="rows")
        )
        return typed_outputs(outputs, **{REJECTED: pa.Table, COUNTS: dict})
