"""Reading catalog files: formats, headers, line numbers, and bad rows turned into rejects."""
from __future__ import annotations

import gzip
import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from astropy.table import Table

from galaxiesml.catalog import DEFAULT_BATCH_ROWS, CatalogError, catalog_format, read_catalog
from galaxiesml.cuts import apply_cuts
from galaxiesml.schema import CATALOG_FIELDS
from tests.catalog_rows import GOOD, HEADER, csv_line, row
from tests.conftest import hsc_csv


def parse(data: bytes, source: str = "cat.csv", batch_rows: int = DEFAULT_BATCH_ROWS) -> tuple[pa.Table, pa.Table]:
    parts = list(read_catalog(io.BytesIO(data), source, batch_rows))
    rows = pa.Table.from_batches([p.rows for p in parts])
    rejected = pa.Table.from_batches([p.rejected for p in parts])
    return rows, rejected


def test_hsc_export_with_metadata_lines_gives_typed_rows_and_line_numbers():
    data = hsc_csv(HEADER, [csv_line(row(object_id=1)), csv_line(row(object_id=2))], meta=3)
    rows, rejected = parse(data)
    assert rejected.num_rows == 0
    assert rows.column("object_id").to_pylist() == [1, 2]
    # 3 metadata lines + header: the data starts on line 5.
    assert rows.column("line").to_pylist() == [5, 6]
    assert rows.column("specz_flag_homogeneous").to_pylist() == [True, True]
    assert rows.column("coord").to_pylist() == ["(0.1,0.2,0.3)"] * 2
    assert rows.schema.field("object_id").type == pa.int64()


def test_plain_csv_gzip_and_bom():
    plain = (",".join(HEADER) + "\n" + csv_line(GOOD) + "\n").encode()
    rows, _ = parse(plain)
    assert rows.column("line").to_pylist() == [2]
    rows, _ = parse(b"\xef\xbb\xbf" + plain)
    assert rows.num_rows == 1
    data = gzip.decompress(gzip.compress(plain))
    rows, _ = parse(data, "cat.csv.gz")
    assert rows.num_rows == 1
    assert catalog_format("x/cat.csv.gz") == "csv"
    assert catalog_format("x/cat.fits.gz") == "fits"
    assert catalog_format("x/cat.parquet") == "parquet"


def test_bad_values_are_rejected_with_reason_and_line():
    lines = [
        csv_line(row(object_id=1)),
        csv_line(row(object_id=2, specz_redshift="abc")),
        csv_line(row(object_id="99999999999999999999")),  # beyond int64
        csv_line(row(object_id=4, ra="")),
        csv_line(row(object_id=5, specz_name="")),
        csv_line(row(object_id=6, specz_flag_homogeneous="maybe")),
        csv_line(row(object_id=7, dec=95.0)),
        csv_line(row(object_id=8, specz_name="Ünïcødé-✓")),
    ]
    rows, rejected = parse(hsc_csv(HEADER, lines, meta=0))
    assert rows.column("object_id").to_pylist() == [1, 8]
    assert rows.column("specz_name").to_pylist()[1] == "Ünïcødé-✓"
    by_line = {r["line"]: r for r in rejected.to_pylist()}
    assert set(by_line) == {3, 4, 5, 6, 7, 8}
    assert all(r["reason"] == "bad_value" for r in by_line.values())
    assert "specz_redshift='abc'" in by_line[3]["detail"]
    assert "object_id" in by_line[4]["detail"]
    assert by_line[5]["detail"] == "ra is empty"
    assert by_line[6]["detail"] == "specz_name is empty"
    assert "specz_flag_homogeneous" in by_line[7]["detail"]
    assert "not on the sky" in by_line[8]["detail"]
    assert '"abc"' in by_line[3]["raw"]  # the original value survives in the reject


def test_malformed_rows_blank_lines_and_truncation_keep_line_numbers_right():
    lines = [
        csv_line(row(object_id=1)),
        "",
        "1,2,3",  # too few fields
        csv_line(row(object_id=4)),
        csv_line(row(object_id=5)) + ",extra",
        csv_line(row(object_id=6)),
        csv_line(row(object_id=7))[:40],  # a truncated last line
    ]
    rows, rejected = parse(hsc_csv(HEADER, lines, meta=1))
    assert rows.column("object_id").to_pylist() == [1, 4, 6]
    assert rows.column("line").to_pylist() == [3, 6, 8]
    mal = {r["line"]: r for r in rejected.to_pylist()}
    assert set(mal) == {5, 7, 9}
    assert {r["reason"] for r in mal.values()} == {"malformed_row"}
    assert mal[5]["raw"] == "1,2,3"


@pytest.mark.parametrize("batch_rows", [DEFAULT_BATCH_ROWS, 7_000])
def test_line_numbers_stay_right_across_many_batches(batch_rows):
    """60,000 rows are ~17 blocks of CSV text, gathered into one batch or into several."""
    n = 60000
    lines = [csv_line(row(object_id=i + 1)) for i in range(n)]  # ids are positive
    lines[45000] = "broken,row"
    rows, rejected = parse(hsc_csv(HEADER, lines, meta=2), batch_rows=batch_rows)
    assert rejected.column("line").to_pylist() == [45000 + 4]
    ids = np.asarray(rows.column("object_id"))
    got = np.asarray(rows.column("line"))
    assert np.array_equal(got, ids + 3)


def test_unusable_files_raise_clear_errors():
    with pytest.raises(CatalogError, match="empty"):
        parse(b"")
    with pytest.raises(CatalogError, match="missing required column.*specz_redshift_err"):
        parse(hsc_csv([h for h in HEADER if h != "specz_redshift_err"], []))
    with pytest.raises(CatalogError, match="comma-separated"):
        parse(("\t".join(HEADER) + "\n").encode())
    with pytest.raises(CatalogError, match="twice"):
        parse(hsc_csv(HEADER + ["ra"], []))


def test_duplicated_header_row_is_rejected_not_crashing():
    data = hsc_csv(HEADER, [csv_line(GOOD), ",".join(HEADER), csv_line(GOOD)], meta=0)
    rows, rejected = parse(data)
    assert rows.num_rows == 2
    assert rejected.to_pylist()[0]["line"] == 3
    assert rejected.to_pylist()[0]["reason"] == "bad_value"


def test_parquet_and_fits_tables(tmp_path):
    rows_in = [row(object_id=i, specz_name=f"n{i}") for i in range(1, 6)]
    table = pa.Table.from_pylist(rows_in)
    pq.write_table(table, tmp_path / "c.parquet")
    rows, rejected = parse((tmp_path / "c.parquet").read_bytes(), "c.parquet")
    assert rows.column("object_id").to_pylist() == list(range(1, 6))
    assert rows.column("line").to_pylist() == [1, 2, 3, 4, 5]

    Table(rows=[tuple(r.values()) for r in rows_in], names=list(rows_in[0])).write(tmp_path / "c.fits")
    rows, rejected = parse((tmp_path / "c.fits").read_bytes(), "c.fits")
    assert rows.column("object_id").to_pylist() == list(range(1, 6))
    assert rows.column("specz_name").to_pylist() == [f"n{i}" for i in range(1, 6)]
    assert rejected.num_rows == 0


def test_fits_table_with_wrong_types_gives_reasoned_rejects(tmp_path):
    t = Table(rows=[tuple(row(object_id=i).values()) for i in range(3)], names=HEADER)
    t["object_id"] = t["object_id"].astype(float)  # ids as float have lost digits
    t.write(tmp_path / "w.fits")
    rows, rejected = parse((tmp_path / "w.fits").read_bytes(), "w.fits")
    assert rows.num_rows == 0
    assert rejected.num_rows == 3
    assert all("object_id" in d for d in rejected.column("detail").to_pylist())


NUMERIC = [f.name for f in CATALOG_FIELDS if pa.types.is_integer(f.type) or pa.types.is_floating(f.type)]
ODD_VALUES = ["nan", "NaN", "inf", "-inf", "", "1e999", "-5", "1e30", "0x10", "1,5", " 7 "]


@pytest.mark.parametrize("column", NUMERIC)
def test_odd_values_in_every_numeric_column_end_kept_or_rejected_with_reason(column):
    lines = [csv_line(row(**{"object_id": i + 1, column: v})) for i, v in enumerate(ODD_VALUES)]
    rows, rejected = parse(hsc_csv(HEADER, lines, meta=0))
    kept, cut = apply_cuts(rows.to_batches()[0]) if rows.num_rows else (rows, rows)
    where = {}
    for name, table in (("kept", kept), ("parse", rejected), ("cut", cut)):
        for line in table.column("line").to_pylist():
            assert line not in where, f"line {line} in {where[line]} and {name}"
            where[line] = name
    assert sorted(where) == list(range(2, 2 + len(ODD_VALUES)))  # every row somewhere, once
    for table in (rejected, cut):
        assert all(table.column("reason").to_pylist()) and all(table.column("detail").to_pylist())
    # "0x10" and "1,5" (a quoted comma) are never numbers; "1e999" overflows to inf, not a crash
    assert where[2 + ODD_VALUES.index("0x10")] == "parse"
    assert where[2 + ODD_VALUES.index("1,5")] == "parse"
    if column in ("object_id", "ra", "dec"):  # cannot be empty or non-finite
        assert where[2 + ODD_VALUES.index("")] == "parse"
        assert where[2 + ODD_VALUES.index("nan")] == "parse"


def test_semicolon_separated_file_is_a_clear_error():
    with pytest.raises(CatalogError, match="comma-separated"):
        parse((";".join(HEADER) + "\n").encode())


class _HighWater(io.BytesIO):
    """A file that remembers how far into it anything has read."""

    high = 0

    def read(self, size=-1):
        data = super().read(size)
        self.high = max(self.high, self.tell())
        return data

    def readinto(self, buffer):
        n = super().readinto(buffer)
        self.high = max(self.high, self.tell())
        return n


def test_a_large_csv_is_read_a_bounded_way_ahead_of_the_batches_given_out():
    """Memory for parsing a file must not grow with the file: by the time the first batch is
    given out, at most ~33 MB of a 48 MB file has been read (pyarrow reads up to 32 blocks ahead;
    with 16 MB blocks it had read the whole file). Blocks are gathered into batches of batch_rows."""
    line = csv_line(row(object_id=123456789))
    n = 48_000_000 // (len(line) + 1)
    lines = [line] * n
    data = hsc_csv(HEADER, lines, meta=1)
    stream = _HighWater(data)
    batches = read_catalog(stream, "cat.csv", batch_rows=10_000)
    first = next(batches)
    assert first.rows.num_rows >= 10_000
    assert stream.high < 40_000_000 < len(data)
    sizes = [first.rows.num_rows] + [b.rows.num_rows for b in batches]
    assert sum(sizes) == n
    assert all(10_000 <= s < 15_000 for s in sizes[:-1]) and sizes[-1] <= 15_000
