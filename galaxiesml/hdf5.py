"""The released files: one HDF5 file per (split, image size) and one CSV per split (paper section 3.5).

An HDF5 file holds `image` (N, 5, S, S) float32 in g, r, i, z, y order, chunked one galaxy per
chunk; `image_flags` (N, 5, S, S) uint8 (PADDED | NONFINITE per pixel; for the 64 x 64 files the
same central crop as the image); and every tabular column as its own top-level dataset of length N:
numbers as float64 / int64, flags as bool, strings as fixed-length UTF-8 bytes `S<n>` (n = the
longest value in the split) and `filters` as an (N, 5) `S<n>` array (the filter each band came
from). Rows are sorted by object_id. Nulls, which kept rows should not carry, are stored as NaN
(floats), -1 (integers), False (bools) and b"" (strings). Compression, when asked for, applies to the
image planes (the tabular datasets are ~1 KB a galaxy against ~400 KB of pixels).

Memory stays bounded whatever the split's size: a first pass reads only object ids (and string
lengths) to give each row its place; the datasets are preallocated; then tabular columns and images
are streamed from the Parquet shards in batches and written to their rows. Files are byte-for-byte
reproducible for the same input and attributes (no HDF5 timestamps, shards read in sorted order).
"""
from __future__ import annotations

import contextlib
import functools
import itertools
import json
import os
import queue
import tempfile
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Sequence

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from galaxiesml.cutouts import CROP, SIZE
from galaxiesml.dataset import GALAXY_SCHEMA, TABULAR_COLUMNS, cube_numpy, flag_cubes, numpy_dtype
from galaxiesml.hsc.format import PIXEL_SCALE, ZERO_POINT
from galaxiesml.memory import use_jemalloc
from galaxiesml.schema import BANDS

SIZES: tuple[int, ...] = (SIZE, CROP)
#: The Parquet image column each file size is read from.
IMAGE_COLUMN = {SIZE: "image", CROP: "image_64"}
#: Rows per batch when streaming tabular columns (~1 KB a row).
TABULAR_BATCH_ROWS = 8192
#: Galaxies per batch when decoding images (~0.4 MB each at 127 x 127, with their flags). Parquet's
#: reader holds a batch's nested-list levels beside its pixels, and two threads decode at once: at
#: 64, consolidating 600 galaxies rose 255-290 MB above the process's base; at 16, 130-160 MB, in
#: the same time (consecutive runs, both sizes); the pipeline's workers peaked in this step.
IMAGE_BATCH_ROWS = 16
READ_BUFFER_BYTES = 8 << 20
#: The output's last bytes, which the next chunk written may share a page with, are left in the page cache.
WRITE_BEHIND_MARGIN = 1 << 20
#: HDF5 file format: 1.10's (readable by HDF5 >= 1.10, 2016; h5py >= 2.8), for its fixed-array chunk index.
LIBVER = ("v110", "v110")
#: Value stored for a null, by Arrow type kind.
_FILL = {"float": np.nan, "int": -1, "bool": False, "bytes": b""}


def hdf5_name(size: int, split: str) -> str:
    """The released file name, e.g. 5x127x127_training_with_morphology.hdf5."""
    if size not in SIZES:
        raise ValueError(f"image size must be one of {SIZES}, not {size}")
    return f"{len(BANDS)}x{size}x{size}_{split}_with_morphology.hdf5"


def csv_name(split: str) -> str:
    """The released tabular file of a split, e.g. training.csv."""
    return f"{split}.csv"


def release_attrs(run: dict, funnel: dict | None = None, created: str | None = None) -> dict:
    """The provenance each released file carries: tool and version, the run's options, band order,
    pixel scale, zero point, the funnel counts and the creation time (UTC, ISO 8601; pass it to
    make two runs' files byte-identical)."""
    from datetime import datetime, timezone
    from importlib.metadata import PackageNotFoundError, version

    try:
        tool_version = version("galaxiesml-builder")
    except PackageNotFoundError:
        tool_version = "unknown"
    return {
        "tool": "galaxiesml-builder",
        "tool_version": tool_version,
        "run": run,
        "band_order": ",".join(BANDS),
        "pixel_scale_arcsec": PIXEL_SCALE,
        "zero_point_ab": ZERO_POINT,
        "funnel": funnel or {},
        "created": created or datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


# --------------------------------------------------------------------------- reading shards

def _open_parquet(path: str, metadata: pq.FileMetaData | None = None) -> pq.ParquetFile:
    """A Parquet shard on any filesystem Beam knows (local, gs://, ...), read page by page through
    a READ_BUFFER_BYTES buffer rather than a whole ~64 MB column chunk at a time (less memory);
    `metadata`, when given, saves reading the footer again."""
    source = path if _is_local(path) else FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)
    return pq.ParquetFile(source, metadata=metadata, buffer_size=READ_BUFFER_BYTES, pre_buffer=False)


def _is_local(path: str) -> bool:
    """Whether `path` is a file of this machine (read directly) rather than a Beam filesystem URL."""
    return os.path.exists(path)


def _kind(t: pa.DataType) -> str:
    """The storage kind of an Arrow type (of its values, for lists)."""
    if pa.types.is_floating(t):
        return "float"
    if pa.types.is_integer(t):
        return "int"
    if pa.types.is_boolean(t):
        return "bool"
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "bytes"
    if pa.types.is_fixed_size_list(t) or pa.types.is_list(t):
        return _kind(t.value_type)
    raise TypeError(f"no HDF5 mapping for Arrow type {t}")


@dataclass
class Layout:
    """Where every row goes: `positions[k]` gives the sorted-by-object_id row of each row of shard
    k, in shard order; `string_lengths` the byte width of each string column; `metadata` each
    shard's footer, read once here for every later pass (on gs:// each read is a request)."""

    paths: list[str]
    positions: list[np.ndarray]
    string_lengths: dict[str, int]
    metadata: list[pq.FileMetaData]

    @property
    def n(self) -> int:
        return sum(len(p) for p in self.positions)


def plan(parquet_paths: Sequence[str], columns: Sequence[str] = TABULAR_COLUMNS) -> Layout:
    """First pass: read only object_id and the string columns, sort, check ids are unique."""
    paths = sorted(parquet_paths)
    strings = [c for c in columns if _kind(GALAXY_SCHEMA.field(c).type) == "bytes"]
    ids, lengths, footers = [], {c: 1 for c in strings}, []
    for path in paths:
        shard, parquet = [], _open_parquet(path)
        footers.append(parquet.metadata)
        for batch in parquet.iter_batches(batch_size=TABULAR_BATCH_ROWS, columns=["object_id", *strings]):
            shard.append(batch.column("object_id").to_numpy(zero_copy_only=False).astype(np.int64))
            for c in strings:
                col = batch.column(c)
                if pa.types.is_fixed_size_list(col.type) or pa.types.is_list(col.type):
                    col = col.flatten()
                lengths[c] = max(lengths[c], pc.max(pc.binary_length(col)).as_py() or 0)
        ids.append(np.concatenate(shard) if shard else np.zeros(0, np.int64))
    all_ids = np.concatenate(ids) if ids else np.zeros(0, np.int64)
    order = np.argsort(all_ids, kind="stable")
    sorted_ids = all_ids[order]
    repeated = sorted_ids[1:][np.diff(sorted_ids) == 0]
    if len(repeated):
        raise ValueError(f"object_id is not unique in {paths}: {sorted(set(repeated.tolist()))[:10]}")
    rank = np.empty(len(all_ids), np.int64)
    rank[order] = np.arange(len(all_ids))
    bounds = np.cumsum([0, *(len(i) for i in ids)])
    return Layout(paths, [rank[a:b] for a, b in zip(bounds[:-1], bounds[1:])], lengths, footers)


def _batches(layout: Layout, columns: Sequence[str], batch_rows: int) -> Iterator[tuple[np.ndarray, pa.RecordBatch]]:
    """(target rows, record batch) over every shard, in shard order, `batch_rows` at a time across
    row groups."""
    for path, positions, metadata in zip(layout.paths, layout.positions, layout.metadata):
        yield from _with_rows(positions, _open_parquet(path, metadata).iter_batches(batch_size=batch_rows, columns=list(columns), use_threads=False))


def _with_rows(rows: np.ndarray, batches: Iterable[pa.RecordBatch]) -> Iterator[tuple[np.ndarray, pa.RecordBatch]]:
    """Each batch with the target rows of its records, `rows` being those of all the batches in order."""
    start = 0
    for batch in batches:
        yield rows[start : start + batch.num_rows], batch
        start += batch.num_rows


def _row_group_sources(layout: Layout, columns: Sequence[str], batch_rows: int) -> Iterator[Callable[[], Iterator]]:
    """One source per row group of every shard, in shard order: a callable streaming that row
    group's (target rows, record batch) pairs, `batch_rows` at a time."""
    for path, positions, metadata in zip(layout.paths, layout.positions, layout.metadata):
        start = 0
        for group in range(metadata.num_row_groups):
            rows = positions[start : start + metadata.row_group(group).num_rows]
            start += len(rows)
            yield functools.partial(_row_group_batches, path, metadata, group, rows, columns, batch_rows)


def _row_group_batches(
    path: str, metadata: pq.FileMetaData, group: int, rows: np.ndarray, columns: Sequence[str], batch_rows: int
) -> Iterator[tuple[np.ndarray, pa.RecordBatch]]:
    """One row group's (target rows, record batch) pairs, through its own file handle (so that
    row groups can be read in parallel); its column chunks are then dropped from the page cache."""
    shard = _open_parquet(path, metadata)
    yield from _with_rows(rows, shard.iter_batches(batch_size=batch_rows, row_groups=[group], columns=list(columns), use_threads=False))
    _drop_from_cache(path, metadata.row_group(group), columns)


def _drop_from_cache(path: str, group: pq.RowGroupMetaData, columns: Sequence[str]) -> None:
    """Tell the kernel that a row group's chunks of `columns` will not be read again (local files,
    where posix_fadvise exists). A consolidation streams as many GB in as it writes out; the clean
    pages it left behind made the kernel reclaim memory on every write: 45 of 60 CPU-s and 2.5x
    the time at 20,000 galaxies here. Only the chunks read are dropped: the other size's
    consolidation reads its own image column of the same shards."""
    if not hasattr(os, "posix_fadvise") or not _is_local(path):
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        for k in range(group.num_columns):
            chunk = group.column(k)
            if chunk.path_in_schema.split(".")[0] in columns:
                start = chunk.dictionary_page_offset if chunk.has_dictionary_page else chunk.data_page_offset
                os.posix_fadvise(fd, start, chunk.total_compressed_size, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def ordered_parallel(sources: Iterable[Callable[[], Iterable]], workers: int = 2, depth: int = 2) -> Iterator:
    """Every item of every source, in order (a source's items in order, then the next source's),
    while up to `workers` sources are iterated at once by background threads, each at most `depth`
    items ahead of the consumer. Parquet decoding releases the GIL, so row groups decode on all
    cores while memory stays bounded (workers x depth items) and the output order stays fixed."""
    stop = threading.Event()

    def fill(source: Callable[[], Iterable], out: queue.Queue) -> None:
        try:
            for item in source():
                if not _put(out, (True, item), stop):
                    return
            _put(out, (False, None), stop)
        except BaseException as error:  # handed to the consumer, raised there
            _put(out, (False, error), stop)

    with ThreadPoolExecutor(workers, thread_name_prefix="decode") as pool:
        pending: deque[queue.Queue] = deque()
        sources = iter(sources)
        try:
            while True:
                for source in itertools.islice(sources, workers - len(pending)):
                    pending.append(out := queue.Queue(depth))
                    pool.submit(fill, source, out)
                if not pending:
                    return
                while (item := pending[0].get())[0]:
                    yield item[1]
                pending.popleft()
                if item[1] is not None:
                    raise item[1]
        finally:
            stop.set()


def _put(out: queue.Queue, item, stop: threading.Event) -> bool:
    """Put `item` unless the consumer has stopped; False once it has."""
    while not stop.is_set():
        try:
            out.put(item, timeout=0.1)
            return True
        except queue.Full:
            pass
    return False


def column_numpy(column: pa.Array, width: int | None = None) -> np.ndarray:
    """An Arrow tabular column as the numpy array stored in HDF5 (nulls filled, strings as S<width>,
    fixed-size lists as 2-D)."""
    kind = _kind(column.type)
    if pa.types.is_fixed_size_list(column.type) or pa.types.is_list(column.type):
        values = column_numpy(column.flatten(), width)
        return values.reshape(len(column), -1)
    if kind == "bytes":
        return np.array([(v or "").encode() for v in column.to_pylist()], dtype=f"S{width}")
    if column.null_count:
        column = pc.fill_null(column, pa.scalar(_FILL[kind], column.type))
    return column.to_numpy(zero_copy_only=False)


def _hdf5_dtype(field: pa.Field, layout: Layout) -> tuple[np.dtype, tuple[int, ...]]:
    """The (dtype, trailing shape) a tabular column is stored with: fixed-size lists as 2-D."""
    t, extra = field.type, ()
    if pa.types.is_fixed_size_list(t):
        t, extra = t.value_type, (t.list_size,)
    if _kind(t) == "bytes":
        return np.dtype(f"S{layout.string_lengths[field.name]}"), extra
    return numpy_dtype(t), extra


def _write_rows(dataset: h5py.Dataset, rows: np.ndarray, values: np.ndarray) -> None:
    """values[j] -> dataset[rows[j]] in one HDF5 call (an element selection, sorted by row)."""
    order = np.argsort(rows)
    rows, values = rows[order], np.ascontiguousarray(values[order])
    extra = dataset.shape[1:]
    if extra:  # (N, k): select every (row, j) in row-major order
        coords = np.stack(np.meshgrid(rows, np.arange(extra[0]), indexing="ij"), -1).reshape(-1, 2)
    else:
        coords = rows[:, None]
    file_space = dataset.id.get_space()
    file_space.select_elements(coords.astype(np.uint64))
    memory_space = h5py.h5s.create_simple((len(coords),))
    dataset.id.write(memory_space, file_space, values.reshape(-1))


def _write_attrs(h5: h5py.File, attrs: dict) -> None:
    """Scalars as HDF5 attributes, anything else as a JSON string; sorted for reproducible files."""
    for key in sorted(attrs):
        value = attrs[key]
        if isinstance(value, (str, bool, int, float, np.generic)):
            h5.attrs[key] = value
        else:
            h5.attrs[key] = json.dumps(value, sort_keys=True, default=str)


# --------------------------------------------------------------------------- writers

def _write_tabular(h5: h5py.File, layout: Layout, columns: Sequence[str]) -> None:
    """One preallocated dataset per column, filled from Parquet batches of TABULAR_BATCH_ROWS."""
    datasets = {}
    for name in columns:
        dtype, extra = _hdf5_dtype(GALAXY_SCHEMA.field(name), layout)
        datasets[name] = h5.create_dataset(name, shape=(layout.n, *extra), dtype=dtype, track_times=False)
    for rows, batch in _batches(layout, columns, TABULAR_BATCH_ROWS):
        for name in columns:
            _write_rows(datasets[name], rows, column_numpy(batch.column(name), layout.string_lengths.get(name)))


def _write_images(h5: h5py.File, layout: Layout, size: int, compression: str | None, batch_rows: int, threads: int) -> None:
    """`image` and `image_flags`, one chunk per galaxy, decoded `batch_rows` at a time by `threads`
    threads (row groups in parallel), written in a fixed order."""
    shape = (layout.n, len(BANDS), size, size)
    # a fixed shape gets HDF5 1.10's fixed-array chunk index (LIBVER): the B-tree that a resizable
    # dataset's chunks need cost ~2x the time in kernel writes; only an empty split needs resizing
    # (a chunk may not be larger than a fixed shape of 0)
    maxshape = shape if layout.n else (None, *shape[1:])
    options = dict(shape=shape, maxshape=maxshape, chunks=(1, *shape[1:]), track_times=False)
    if compression:
        options.update(compression=compression, shuffle=True)
    image = h5.create_dataset("image", dtype=np.float32, **options)
    flags = h5.create_dataset("image_flags", dtype=np.uint8, **options)
    sources = _row_group_sources(layout, [IMAGE_COLUMN[size], "image_flags"], batch_rows)
    decoded = (functools.partial(_decoded_cubes, source, size) for source in sources)
    write_image, write_flags = _chunk_writer(image, compression), _chunk_writer(flags, compression)
    with _write_behind(h5.filename) as written:
        for rows, images, flagged in ordered_parallel(decoded, workers=threads):
            for j, row in enumerate(rows.tolist()):
                write_image(row, images[j])
                write_flags(row, flagged[j])
            written()


def _decoded_cubes(source: Callable[[], Iterator], size: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(target rows, image cubes, flag cubes) of one row group's batches, for `size` images, as
    C-contiguous arrays of the datasets' dtypes (run on a decoding thread)."""
    for rows, batch in source():
        yield rows, cube_numpy(batch.column(IMAGE_COLUMN[size])), flag_cubes(batch.column("image_flags"), size)


@contextlib.contextmanager
def _write_behind(path: str) -> Iterator[Callable[[], None]]:
    """A callable that hands what has been written to local file `path` so far (but its last
    WRITE_BEHIND_MARGIN bytes) to the disk and drops it from the page cache, where posix_fadvise
    exists. The images are never read back: left in the cache, the kernel reclaimed memory on every
    write and the final fsync waited for all of them at once (20,000 galaxies here: 14 s against
    21-25 s and 25 against 36-40 CPU-s for the 127 x 127 file). Dirty pages are written, never lost."""
    if not hasattr(os, "posix_fadvise"):
        yield lambda: None
        return
    fd = os.open(path, os.O_RDONLY)

    def written() -> None:
        end = os.fstat(fd).st_size - WRITE_BEHIND_MARGIN
        if end > 0:
            os.posix_fadvise(fd, 0, end, os.POSIX_FADV_DONTNEED)

    try:
        yield written
    finally:
        os.close(fd)


def _chunk_writer(dataset: h5py.Dataset, compression: str | None) -> Callable[[int, np.ndarray], None]:
    """How one galaxy (one chunk) is written: as is when uncompressed (no selection, no conversion;
    the cube must be C-contiguous and of the dataset's dtype), through HDF5's filter pipeline otherwise."""
    if compression:
        return dataset.__setitem__
    write = dataset.id.write_direct_chunk
    return lambda row, cube: write((row, 0, 0, 0), cube)


def consolidate(
    parquet_paths: list[str],
    out_path: str,
    size: int,
    *,
    attrs: dict,
    compression: str | None = None,
    batch_rows: int = IMAGE_BATCH_ROWS,
    threads: int = 2,
) -> dict:
    """Write one split's Parquet shards as one released HDF5 file (local `out_path`) of `size`
    (127 or 64) images; returns what it wrote ({"path", "n_galaxies", "size", "bytes"}). Switches
    the process's Arrow allocations to jemalloc (galaxiesml.memory.use_jemalloc)."""
    if size not in SIZES:
        raise ValueError(f"image size must be one of {SIZES}, not {size}")
    use_jemalloc()
    layout = plan(parquet_paths)
    with h5py.File(out_path, "w", track_order=False, libver=LIBVER) as h5:
        _write_attrs(
            h5,
            {**attrs, "n_galaxies": layout.n, "image_shape": json.dumps([len(BANDS), size, size]), "compression": compression or "none"},
        )
        _write_tabular(h5, layout, TABULAR_COLUMNS)
        _write_images(h5, layout, size, compression, batch_rows, threads)
    return {"path": out_path, "n_galaxies": layout.n, "size": size, "bytes": os.path.getsize(out_path)}


def _csv_value(values: np.ndarray) -> pa.Array:
    """An HDF5 tabular slice back to an Arrow column for CSV: bytes decoded, filters joined by ';'."""
    if values.dtype.kind == "S":
        text = np.char.decode(values, "utf-8")
        if text.ndim == 2:
            return pa.array([";".join(r) for r in text.tolist()], pa.string())
        return pa.array(text.tolist(), pa.string())
    return pa.array(values)


def write_split_csv(parquet_paths: list[str], out_path: str, batch_rows: int = TABULAR_BATCH_ROWS) -> dict:
    """The tabular columns of a split as one CSV (local `out_path`), rows sorted by object_id as in
    the HDF5 files; `filters` joined by ';'. Streams through a temporary tabular-only HDF5 file so a
    split is never held in memory."""
    layout, schema = plan(parquet_paths), _csv_schema()
    with tempfile.TemporaryDirectory() as tmp:
        store = os.path.join(tmp, "tabular.hdf5")
        with h5py.File(store, "w") as h5:
            _write_tabular(h5, layout, TABULAR_COLUMNS)
        with h5py.File(store, "r") as h5, pacsv.CSVWriter(out_path, schema) as writer:
            for start in range(0, layout.n, batch_rows):
                arrays = [_csv_value(h5[c][start : start + batch_rows]) for c in TABULAR_COLUMNS]
                writer.write_table(pa.Table.from_arrays(arrays, schema=schema))
    return {"path": out_path, "n_galaxies": layout.n, "bytes": os.path.getsize(out_path)}


def _csv_schema() -> pa.Schema:
    """TABULAR_COLUMNS' types, lists as text."""
    fields = []
    for name in TABULAR_COLUMNS:
        t = GALAXY_SCHEMA.field(name).type
        fields.append(pa.field(name, pa.string() if pa.types.is_fixed_size_list(t) or pa.types.is_list(t) else t))
    return pa.schema(fields)
