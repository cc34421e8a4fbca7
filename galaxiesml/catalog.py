"""Reading catalog files (HSC export CSV, plain or gzip'd CSV, FITS tables, Parquet) into typed
Arrow batches, with every row that cannot be parsed turned into a reject with its reason.

Nothing here knows about Beam: callers hand in an open binary file and its name.
"""
from __future__ import annotations

import io
import json
import zlib
from dataclasses import dataclass
from typing import BinaryIO, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from galaxiesml.schema import (
    CATALOG_FIELDS,
    CATALOG_SCHEMA,
    FLAG_COLUMNS,
    REJECTED_SCHEMA,
    REQUIRED_COLUMNS,
)

DEFAULT_BATCH_ROWS = 65536
#: Bytes of CSV text pyarrow parses at a time (~3,600 HSC export rows); blocks are gathered into
#: batches of `batch_rows`. pyarrow's streaming reader reads up to 32 blocks ahead of its parser,
#: so the block size bounds the text held: with 16 MB blocks a worker held most of an
#: 800,000-row file (229 MB) at once.
CSV_BLOCK_BYTES = 1 << 20

#: Columns whose empty value makes a row unusable (the rest become NaN / null and meet the cuts).
NON_NULL_COLUMNS = ("object_id", "specz_name", "ra", "dec")

_FLOAT_RE = r"(?i)^[+-]?((\d+\.?\d*|\.\d+)(e[+-]?\d+)?|nan|inf|infinity)$"
_INT_RE = r"^[+-]?\d+$"
_TRUE = ["true", "t", "1", "yes", "y"]
_FALSE = ["false", "f", "0", "no", "n"]


class CatalogError(ValueError):
    """A catalog file that cannot be read at all (as opposed to a bad row in it)."""


@dataclass(frozen=True)
class ParsedBatch:
    """Rows of one catalog file: `rows` typed to CATALOG_SCHEMA (+ flag columns present),
    `rejected` in REJECTED_SCHEMA."""

    rows: pa.RecordBatch
    rejected: pa.RecordBatch


#: File names a folder given as --catalog is read for: every format catalog_format knows, plain or
#: compressed.
CATALOG_SUFFIXES: tuple[str, ...] = tuple(
    base + comp for base in (".csv", ".fits", ".fit", ".fts", ".parquet", ".pq") for comp in ("", ".gz", ".bz2", ".zst", ".deflate")
)


def catalog_format(path: str) -> str:
    """The reader a path calls for, from its name: 'csv', 'fits' or 'parquet'."""
    name = path.lower()
    for suffix in (".gz", ".bz2", ".zst", ".deflate"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    if name.endswith((".fits", ".fit", ".fts")):
        return "fits"
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    return "csv"


def read_catalog(
    stream: BinaryIO,
    source: str,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    extra_bool_columns: tuple[str, ...] = (),
) -> Iterator[ParsedBatch]:
    """Parse one catalog file, batch by batch; raises CatalogError if the file is unusable.

    `extra_bool_columns` are further boolean columns the file must have and the rows carry (for
    cuts that require them true)."""
    fmt = catalog_format(source)
    if fmt == "csv":
        raw_batches = _read_csv(stream, source, batch_rows)
    elif fmt == "fits":
        raw_batches = _read_fits(stream, source, batch_rows)
    else:
        raw_batches = _read_parquet(stream, source, batch_rows)
    for raw, lines, malformed in raw_batches:
        check_columns(raw.column_names, source, extra_bool_columns)
        yield coerce(raw, source, lines, malformed, extra_bool_columns)


# --------------------------------------------------------------------------- readers
# Each yields (raw columns, 1-based line numbers, malformed rows) per batch, where malformed
# rows are (line, text, reason) tuples for lines that could not be split into fields.

RawBatch = tuple[pa.Table, np.ndarray, list[tuple[int, str, str]]]


def parse_header(line: str) -> list[str] | None:
    """Column names of a header line (the HSC export writes it as '# object_id,...'), or None."""
    text = line.lstrip("\ufeff").strip()
    if text.startswith("#"):
        text = text[1:].strip()
    names = [n.strip() for n in text.split(",")]
    return names if "object_id" in names else None


def read_header(stream: BinaryIO, source: str) -> tuple[list[str], int]:
    """Read up to and including the header row: (column names, its 1-based line number)."""
    line_no = 0
    first_line: str | None = None
    while True:
        raw_line = stream.readline()
        if not raw_line:
            if first_line is None:
                raise CatalogError(f"{source}: the file is empty")
            raise CatalogError(
                f"{source}: no header row naming the columns (expected a line like "
                f"'# object_id,specz_redshift_err,...'; first line was {first_line[:80]!r})"
            )
        line_no += 1
        text = raw_line.decode("utf-8", errors="replace").lstrip("\ufeff")
        first_line = first_line if first_line is not None else text.rstrip("\n")
        names = parse_header(text)
        if names is not None:
            break
        if not text.startswith("#") and text.strip():
            raise CatalogError(
                f"{source}: line {line_no} is not a header naming object_id "
                f"({text.strip()[:80]!r}); is the file comma-separated with a header row?"
            )
    check_columns(names, source)
    if len(set(names)) != len(names):
        raise CatalogError(f"{source}: the header names a column twice: {names}")
    return names, line_no


def catalog_columns(stream: BinaryIO, source: str) -> list[str]:
    """The column names of a catalog file, checked for the required ones (a cheap pre-flight)."""
    fmt = catalog_format(source)
    if fmt == "csv":
        return read_header(stream, source)[0]
    batches = _read_fits(stream, source, 1) if fmt == "fits" else _read_parquet(stream, source, 1)
    first = next(iter(batches), None)
    return first[0].column_names if first else []


def _read_csv(stream: BinaryIO, source: str, batch_rows: int) -> Iterator[RawBatch]:
    """The file's CSV_BLOCK_BYTES blocks, gathered into batches of at least `batch_rows` rows
    (the last may be smaller)."""
    tables: list[pa.Table] = []
    lines: list[np.ndarray] = []
    bad: list[tuple[int, str, str]] = []
    try:
        for table, block_lines, block_bad in _csv_blocks(stream, source):
            tables.append(table)
            lines.append(block_lines)
            bad.extend(block_bad)
            if sum(t.num_rows for t in tables) >= batch_rows:
                yield pa.concat_tables(tables).combine_chunks(), np.concatenate(lines), bad
                tables, lines, bad = [], [], []
    finally:  # also when the file breaks off midway: the rows read before the break are not lost
        if tables and (bad or any(t.num_rows for t in tables)):
            yield pa.concat_tables(tables).combine_chunks(), np.concatenate(lines), bad


def _csv_blocks(stream: BinaryIO, source: str) -> Iterator[RawBatch]:
    """One raw batch per block pyarrow parses (and a last, empty one for malformed lines at the end).
    A line that is not UTF-8 text, or longer than LONG_LINE_BYTES, is a malformed row, not the end
    of the file's reading; a file with a header and no row has no rows."""
    names, line_no = read_header(stream, source)
    malformed: list[tuple[int, str, str]] = []
    long_lines = _LongLines(stream)

    def on_invalid(row: pacsv.InvalidRow) -> str:
        # pyarrow counts lines from where it starts reading, just after the header.
        number = int(row.number) + line_no
        text, why = long_lines.explain(row.text)
        malformed.append((number, text, why or f"expected {row.expected_columns} fields, found {row.actual_columns}"))
        return "skip"

    try:
        reader = pacsv.open_csv(
            long_lines,
            read_options=pacsv.ReadOptions(
                column_names=names, block_size=CSV_BLOCK_BYTES, use_threads=False
            ),
            parse_options=pacsv.ParseOptions(invalid_row_handler=on_invalid, ignore_empty_lines=False),
            convert_options=pacsv.ConvertOptions(
                column_types={n: pa.binary() for n in names},  # checked for UTF-8 row by row below
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
            ),
        )
    except pa.ArrowInvalid as exc:
        if long_lines.error is not None:
            raise long_lines.error
        if "Empty CSV file" in str(exc):
            return
        raise
    skipped: set[int] = set()
    next_line = line_no + 1
    while True:
        try:
            batch = reader.read_next_batch()
        except StopIteration:
            batch = None
        new_bad = list(malformed)
        malformed.clear()
        skipped.update(m[0] for m in new_bad)
        if batch is None:
            if new_bad:
                yield _empty_raw(names), np.zeros(0, np.int64), new_bad
            if long_lines.error is not None:
                raise long_lines.error
            return
        lines = _line_numbers(next_line, batch.num_rows, skipped)
        if batch.num_rows:
            next_line = int(lines[-1]) + 1
        table, not_utf8 = _as_text(pa.Table.from_batches([batch]))
        if not_utf8:
            keep = np.ones(table.num_rows, bool)
            keep[list(not_utf8)] = False
            new_bad += [(int(lines[i]), text, why) for i, (text, why) in sorted(not_utf8.items())]
            table, lines = table.filter(pa.array(keep)), lines[keep]
        yield table, lines, new_bad


def _as_text(table: pa.Table) -> tuple[pa.Table, dict[int, tuple[str, str]]]:
    """Binary CSV columns as UTF-8 strings; {row: (its text, why)} for rows that are not UTF-8
    (their values become "", and the caller takes them out)."""
    columns, bad = [], {}
    for name, column in zip(table.column_names, table.columns):
        try:
            columns.append(pc.cast(column, pa.string()))
            continue
        except pa.ArrowInvalid:
            pass
        values = column.to_pylist()
        for i, v in enumerate(values):
            try:
                v.decode("utf-8")
            except UnicodeDecodeError:
                bad.setdefault(i, (b",".join(table.column(c)[i].as_py() for c in table.column_names).decode("utf-8", "replace"),
                                   f"{name} is not UTF-8 text"))
        columns.append(pa.array(["" if i in bad else v.decode("utf-8") for i, v in enumerate(values)], pa.string()))
    return pa.table(dict(zip(table.column_names, columns))), bad


#: Longest catalog line read as a row; a longer one is a malformed row (pyarrow cannot parse a row
#: longer than its block, and no catalog row is anywhere near this).
LONG_LINE_BYTES = CSV_BLOCK_BYTES // 4
_LONG_MARK = b"\x00galaxiesml-long-line:"


class _LongLines(io.RawIOBase):
    """The rest of a CSV stream with every line longer than LONG_LINE_BYTES replaced by a short
    marker line, which the parser then reports as an invalid row; `explain` turns the marker back
    into the line's start and the reason. Line numbers are unchanged. A read that fails (a
    compressed file cut short) ends the stream there and is kept in `error`, for the caller to
    raise once the rows before it are out (the parser reads ahead, and would lose them)."""

    def __init__(self, stream: BinaryIO):
        self._stream = stream
        self._ready = bytearray()  # whole lines, to hand out
        self._pending = b""  # the current, unfinished line
        self._skipping = 0  # >0: inside an over-long line, this many bytes of it dropped so far
        self._heads: list[bytes] = []
        self._eof = False
        self.error: Exception | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self._ready and not self._eof:
            self._fill()
        n = min(len(buffer), len(self._ready))
        buffer[:n] = self._ready[:n]
        del self._ready[:n]
        return n

    def _mark(self, head: bytes, length: int) -> bytes:
        self._heads.append(head[:200])
        return _LONG_MARK + f"{len(self._heads) - 1}:{length}".encode()

    def _fill(self) -> None:
        try:
            chunk = self._stream.read(CSV_BLOCK_BYTES)
        except (EOFError, OSError, zlib.error) as exc:
            self.error, chunk = exc, b""
        if not chunk:
            self._eof = True
            if self._skipping:
                self._ready += self._mark(self._pending, self._skipping)
            else:
                self._ready += self._pending
            self._pending, self._skipping = b"", 0
            return
        if self._skipping:
            end = chunk.find(b"\n")
            if end < 0:
                self._skipping += len(chunk)
                return
            self._ready += self._mark(self._pending, self._skipping + end)
            self._pending, self._skipping, chunk = b"", 0, chunk[end:]
        data = self._pending + chunk
        last = data.rfind(b"\n")
        whole, self._pending = (data[: last + 1], data[last + 1 :]) if last >= 0 else (b"", data)
        if len(whole) > LONG_LINE_BYTES:
            ends = np.flatnonzero(np.frombuffer(whole, np.uint8) == 10)
            starts = np.concatenate([[0], ends[:-1] + 1])
            if (ends - starts > LONG_LINE_BYTES).any():  # rare: rebuild with the long lines marked
                whole = b"".join(
                    (self._mark(whole[a:b], b - a) + b"\n") if b - a > LONG_LINE_BYTES else whole[a : b + 1]
                    for a, b in zip(starts.tolist(), ends.tolist())
                )
        self._ready += whole
        if len(self._pending) > LONG_LINE_BYTES:
            self._skipping, self._pending = len(self._pending), self._pending[:200]

    def explain(self, text: str | None) -> tuple[str, str | None]:
        """(the row's text, why it is malformed) for a marker line; (text, None) for any other."""
        raw = (text or "").encode("utf-8", "surrogateescape")
        if not raw.startswith(_LONG_MARK):
            return text or "", None
        index, length = (int(v) for v in raw[len(_LONG_MARK) :].split(b":")[:2])
        head = self._heads[index].decode("utf-8", "replace")
        return head + "...", f"a line of {length:,} bytes, longer than the {LONG_LINE_BYTES:,} a catalog row may be"


def _line_numbers(first: int, count: int, skipped: set[int]) -> np.ndarray:
    """The `count` line numbers from `first` on, passing over lines pyarrow skipped."""
    ahead = sorted(s for s in skipped if s >= first)
    candidates = np.arange(first, first + count + len(ahead), dtype=np.int64)
    if ahead:
        candidates = candidates[~np.isin(candidates, ahead)]
    return candidates[:count]


def _empty_raw(names: list[str]) -> pa.Table:
    return pa.table({n: pa.array([], pa.string()) for n in names})


def check_columns(names: list[str], source: str, extra: tuple[str, ...] = ()) -> None:
    """Raise a CatalogError naming every required column the file lacks."""
    missing = [c for c in (*REQUIRED_COLUMNS, *extra) if c not in names]
    if missing:
        raise CatalogError(
            f"{source}: missing required column(s) {', '.join(missing)} "
            f"(the file has: {', '.join(names[:40])})"
        )


def _read_fits(stream: BinaryIO, source: str, batch_rows: int) -> Iterator[RawBatch]:
    from astropy.io import fits
    from astropy.table import Table

    data = stream.read()
    if not data:
        raise CatalogError(f"{source}: the file is empty")
    try:
        with fits.open(io.BytesIO(data), memmap=False) as hdus:
            hdu = next((h for h in hdus if isinstance(h, fits.BinTableHDU)), None)
            if hdu is None:
                raise CatalogError(f"{source}: no binary table extension in this FITS file")
            table = Table.read(hdu)
    except (OSError, ValueError, TypeError) as exc:
        raise CatalogError(f"{source}: not a readable FITS table ({exc})") from exc
    columns = {}
    for name in table.colnames:
        col = table[name]
        if col.ndim > 1:  # e.g. a vector column: carry it as text
            columns[name] = pa.array([str(list(v)) for v in col], pa.string())
        elif col.dtype.kind in "SU":
            columns[name] = pa.array(np.char.strip(col.astype(str)).tolist(), pa.string())
        else:
            values = np.asarray(col)
            values = values.astype(values.dtype.newbyteorder("="))
            mask = np.asarray(getattr(col, "mask", np.zeros(len(col), bool)))
            columns[name] = pa.array(values, mask=mask if mask.any() else None)
    names = list(columns)
    check_columns(names, source)
    full = pa.table(columns)
    yield from _slices(full, batch_rows)


def _read_parquet(stream: BinaryIO, source: str, batch_rows: int) -> Iterator[RawBatch]:
    if not stream.seekable():
        stream = io.BytesIO(stream.read())
    try:
        parquet = pq.ParquetFile(stream)
    except (OSError, pa.ArrowInvalid) as exc:
        raise CatalogError(f"{source}: not a readable Parquet file ({exc})") from exc
    check_columns(parquet.schema_arrow.names, source)
    first = 1
    for batch in parquet.iter_batches(batch_size=batch_rows):
        yield pa.Table.from_batches([batch]), np.arange(first, first + batch.num_rows), []
        first += batch.num_rows


def _slices(table: pa.Table, batch_rows: int) -> Iterator[RawBatch]:
    for start in range(0, table.num_rows, batch_rows):
        part = table.slice(start, batch_rows)
        yield part, np.arange(start + 1, start + 1 + part.num_rows, dtype=np.int64), []


# --------------------------------------------------------------------------- typing rows

def coerce(
    raw: pa.Table,
    source: str,
    lines: np.ndarray,
    malformed: list[tuple[int, str, str]],
    extra_bool_columns: tuple[str, ...] = (),
) -> ParsedBatch:
    """Type raw columns to CATALOG_SCHEMA; rows that do not fit become rejects with a reason.

    Blank lines are not rows and are dropped. Flag columns (section 3.1) present in the input are
    kept as booleans for the cuts.
    """
    raw = raw.combine_chunks()
    if raw.num_rows and all(pa.types.is_string(t) for t in raw.schema.types):
        blank = np.ones(raw.num_rows, bool)
        for col in raw.columns:
            blank &= np.asarray(pc.equal(pc.utf8_trim_whitespace(col), ""))
            if not blank.any():  # usually settled by the first column
                break
        if blank.any():
            raw = raw.filter(pa.array(~blank))
            lines = lines[~blank]

    n = raw.num_rows
    reason = np.full(n, None, dtype=object)
    detail = np.full(n, None, dtype=object)
    columns: dict[str, pa.Array] = {}
    fields = list(CATALOG_FIELDS) + [
        pa.field(f, pa.bool_())
        for f in dict.fromkeys((*FLAG_COLUMNS, *extra_bool_columns))
        if f in raw.column_names and f not in CATALOG_SCHEMA.names
    ]
    for field in fields:
        if field.name not in raw.column_names:
            columns[field.name] = pa.nulls(n, field.type)
            continue
        values, bad = _coerce_column(raw.column(field.name).combine_chunks(), field.type)
        columns[field.name] = values
        must_exist = field.name in NON_NULL_COLUMNS
        missing = np.asarray(values.is_null()) & ~bad if must_exist else np.zeros(n, bool)
        for idx in np.flatnonzero((bad | missing) & (reason == None)):  # noqa: E711
            value = raw.column(field.name)[int(idx)].as_py()
            reason[idx] = "bad_value"
            detail[idx] = (
                f"{field.name} is empty"
                if missing[idx]
                else f"{field.name}={value!r} is not a valid {field.type}"
            )
    ra = _as_float(columns["ra"])
    dec = _as_float(columns["dec"])
    off_sky = ~(np.isfinite(ra) & np.isfinite(dec) & (ra >= 0) & (ra <= 360) & (np.abs(dec) <= 90))
    for idx in np.flatnonzero(off_sky & (reason == None)):  # noqa: E711
        reason[idx], detail[idx] = "bad_value", f"ra, dec = {ra[idx]}, {dec[idx]} is not on the sky"
    non_positive = np.asarray(pc.fill_null(pc.less_equal(columns["object_id"], 0), False))
    for idx in np.flatnonzero(non_positive & (reason == None)):  # noqa: E711
        reason[idx], detail[idx] = "bad_value", f"object_id={columns['object_id'][int(idx)].as_py()} is not positive"
    name = columns["specz_name"]
    blank_name = np.asarray(pc.fill_null(pc.equal(pc.utf8_trim_whitespace(name), ""), False))
    for idx in np.flatnonzero(blank_name & (reason == None)):  # noqa: E711
        reason[idx], detail[idx] = "bad_value", "specz_name is empty"

    typed = pa.table(columns).append_column("source", pa.array([source] * n, pa.string()))
    typed = typed.append_column("line", pa.array(lines, pa.int64()))
    bad_rows = reason != None  # noqa: E711
    rows = typed.filter(pa.array(~bad_rows))
    rejected_idx = np.flatnonzero(bad_rows)
    rejected = rejects_table(
        typed.take(pa.array(rejected_idx, pa.int64())),
        reason[rejected_idx].tolist(),
        detail[rejected_idx].tolist(),
        raw=[_raw_json(r) for r in raw.take(pa.array(rejected_idx, pa.int64())).to_pylist()],
    )
    if malformed:
        lost = pa.table({"source": [source] * len(malformed), "line": [m[0] for m in malformed]})
        rejected = pa.concat_tables(
            [
                rejected,
                rejects_table(
                    lost, ["malformed_row"] * len(malformed), [m[2] for m in malformed], [m[1] for m in malformed]
                ),
            ]
        )
    return ParsedBatch(rows=_to_batch(rows), rejected=_to_batch(rejected))


#: The reason of the one rejected record that stands for the unread rest of a damaged file.
UNREADABLE_FILE = "unreadable_file"


def unreadable_file(source: str, last_line: int, exc: BaseException) -> pa.Table:
    """The rejected record for a file whose reading broke off after line `last_line` (a
    compressed file cut short, a damaged block): the rows after it are lost, and this says so."""
    detail = (f"the file could not be read past line {last_line:,} ({type(exc).__name__}: {str(exc)[:200]}); "
              "every row after it is lost: replace the file and build again")
    rows = pa.table({"source": [source], "line": pa.array([last_line + 1], pa.int64())})
    return rejects_table(rows, [UNREADABLE_FILE], [detail])


def rejects_table(
    rows: pa.Table, reasons: list[str], details: list[str], raw: list[str] | None = None
) -> pa.Table:
    """Rejected rows in REJECTED_SCHEMA: the typed columns `rows` has (null for the others)."""
    n = rows.num_rows
    columns = [
        rows.column(f.name) if f.name in rows.column_names else pa.nulls(n, f.type)
        for f in CATALOG_SCHEMA
    ]
    extra = [
        pa.array(reasons, pa.string()),
        pa.array(details, pa.string()),
        pa.array(raw, pa.string()) if raw is not None else pa.nulls(n, pa.string()),
    ]
    return pa.Table.from_arrays(columns + extra, schema=REJECTED_SCHEMA)


def _to_batch(table: pa.Table) -> pa.RecordBatch:
    table = table.combine_chunks()
    batches = table.to_batches()
    return batches[0] if batches else pa.RecordBatch.from_pylist([], schema=table.schema)


def _raw_json(row: dict) -> str:
    return json.dumps(row, default=str, ensure_ascii=False, allow_nan=True)


def _as_float(values: pa.Array) -> np.ndarray:
    return np.asarray(pc.fill_null(pc.cast(values, pa.float64()), np.nan), dtype=np.float64)


def _coerce_column(values: pa.Array, target: pa.DataType) -> tuple[pa.Array, np.ndarray]:
    """Cast one column to `target`; returns the typed array (null where bad) and the bad mask."""
    n = len(values)
    none = np.zeros(n, bool)
    src = values.type
    if pa.types.is_large_string(src) or pa.types.is_binary(src) or pa.types.is_large_binary(src):
        values = pc.cast(values, pa.string())
        src = values.type
    if src == target:
        return values, none
    if pa.types.is_string(target):
        return pc.cast(values, pa.string()), none
    if pa.types.is_boolean(target):
        if pa.types.is_integer(src):
            ok = pc.is_in(values, pa.array([0, 1], src))
            bad = ~np.asarray(pc.fill_null(ok, True))
            return pc.if_else(pa.array(bad), None, pc.equal(values, 1)), bad
        if pa.types.is_string(src):
            text = pc.utf8_lower(pc.utf8_trim_whitespace(values))
            true = pc.is_in(text, pa.array(_TRUE))
            false = pc.is_in(text, pa.array(_FALSE))
            empty = pc.equal(text, "")
            bad = ~np.asarray(pc.fill_null(pc.or_(pc.or_(true, false), empty), True))
            return pc.if_else(pc.or_(pa.array(bad), empty), None, true), bad
        return pa.nulls(n, target), np.ones(n, bool)
    # numeric targets
    if pa.types.is_integer(target) and pa.types.is_floating(src):
        # a float object id has lost digits; it cannot be trusted.
        return pa.nulls(n, target), ~np.asarray(values.is_null())
    if pa.types.is_integer(src) or pa.types.is_floating(src):
        try:
            return pc.cast(values, target), none
        except (pa.ArrowInvalid, OverflowError):
            return _cast_each(values, target)
    if not pa.types.is_string(src):
        return pa.nulls(n, target), ~np.asarray(values.is_null())
    try:  # fast path: every value already in a form Arrow casts
        return pc.cast(pc.if_else(pc.equal(values, ""), None, values), target), none
    except (pa.ArrowInvalid, OverflowError):
        pass
    text = pc.utf8_trim_whitespace(values)
    empty = pc.equal(text, "")
    pattern = _FLOAT_RE if pa.types.is_floating(target) else _INT_RE
    ok = pc.or_(pc.match_substring_regex(text, pattern), empty)
    bad = ~np.asarray(pc.fill_null(ok, True))
    clean = pc.if_else(pc.or_(pa.array(bad), empty), None, text)
    try:
        return pc.cast(clean, target), bad
    except (pa.ArrowInvalid, OverflowError):
        typed, more_bad = _cast_each(clean, target)
        return typed, bad | more_bad


def _cast_each(values: pa.Array, target: pa.DataType) -> tuple[pa.Array, np.ndarray]:
    """Slow path, value by value, for a column where a vectorised cast overflowed."""
    out, bad = [], np.zeros(len(values), bool)
    for i, v in enumerate(values):
        try:
            out.append(pc.cast(pa.array([v.as_py()]), target)[0].as_py())
        except (pa.ArrowInvalid, OverflowError, pa.ArrowTypeError):
            out.append(None)
            bad[i] = True
    return pa.array(out, target), bad
