"""Catalog files no test made on purpose: cut short, with bytes that are not UTF-8, with a line of
megabytes, with a header and nothing else, with ids that are not ids, or a folder. Each gives its
stated outcome, and every row read is accounted for (read = kept + rejected + duplicates + failed)."""
from __future__ import annotations

import gzip
import json

import pyarrow.parquet as pq
import pytest

from pipeline.cli import main
from tests.catalog_rows import HEADER, csv_line, row
from tests.conftest import hsc_csv


def rows(n: int, start: int = 1) -> list[str]:
    return [csv_line(row(object_id=36416246018700000 + i, specz_name=f"S-{i}")) for i in range(start, start + n)]


def build(capsys, tmp_path, catalog: str, *extra: str) -> tuple[int, str, dict, pq.ParquetDataset | None]:
    out = tmp_path / "out"
    code = main(["--catalog", catalog, "--output", str(out), "--cutout_source=none", "--runner=FnApiRunner",
                 "--progress_every=0", *extra])
    err = capsys.readouterr().err.strip()
    funnel = json.loads((out / "summary.json").read_text())["funnel"] if (out / "summary.json").exists() else {}
    if funnel:
        assert funnel["rows_read"] == funnel["kept"] + funnel["rejected"] + funnel["duplicates"] + funnel["failed"]
    rejected = sorted(out.glob("catalog/rejected-*.parquet"))
    return code, err, funnel, (pq.read_table(rejected).to_pylist() if rejected else [])


def test_a_gzip_catalog_cut_short_is_named_and_fails_the_build(capsys, tmp_path):
    whole = gzip.compress(hsc_csv(HEADER, rows(20000)))
    path = tmp_path / "cut.csv.gz"
    path.write_bytes(whole[: int(len(whole) * 0.6)])
    code, err, funnel, rejected = build(capsys, tmp_path, str(path))
    assert code == 1 and len(err.splitlines()) == 1 and "could not be read to their end" in err, err
    assert funnel["rejected_by_reason"]["unreadable_file"] == 1
    (record,) = [r for r in rejected if r["reason"] == "unreadable_file"]
    assert record["source"] == str(path) and f"past line {record['line'] - 1:,}" in record["detail"]
    assert 0 < funnel["kept"] < 20000 and record["line"] > funnel["kept"]  # what was read stays


def test_bytes_that_are_not_utf8_reject_their_row_only(capsys, tmp_path):
    text = hsc_csv(HEADER, rows(5)).replace(b"S-3", b"S-\xe9-latin1")
    path = tmp_path / "latin1.csv"
    path.write_bytes(text)
    code, err, funnel, rejected = build(capsys, tmp_path, str(path))
    assert code == 0, err
    assert funnel["kept"] == 4 and funnel["rejected_by_reason"] == {"malformed_row": 1}
    (record,) = rejected
    assert record["line"] == 6 and record["detail"] == "specz_name is not UTF-8 text" and "S-\ufffd-latin1" in record["raw"]


@pytest.mark.parametrize("where", ["field", "line"])
def test_a_line_of_ten_megabytes_rejects_that_line_only(capsys, tmp_path, where):
    lines = rows(6)
    huge = "x" * (10 << 20)
    lines[2] = lines[2].replace("S-3", "S-3" + huge) if where == "field" else huge
    path = tmp_path / "long.csv"
    path.write_bytes(hsc_csv(HEADER, lines))
    code, err, funnel, rejected = build(capsys, tmp_path, str(path))
    assert code == 0, err
    assert funnel["kept"] == 5 and funnel["rejected_by_reason"] == {"malformed_row": 1}
    (record,) = rejected
    assert record["line"] == 6 and record["detail"].startswith("a line of 10,4")  # 2 metadata lines, header, 2 rows
    kept = pq.read_table(sorted((tmp_path / "out").glob("catalog/kept-*.parquet"))).column("line").to_pylist()
    assert sorted(kept) == [4, 5, 7, 8, 9]  # the lines after it keep their numbers


def test_a_header_only_file_has_no_rows_and_a_build_of_it_alone_says_it_kept_none(capsys, tmp_path):
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "empty.csv").write_bytes(hsc_csv(HEADER, []))
    (tmp_path / "cat" / "full.csv").write_bytes(hsc_csv(HEADER, rows(3)))
    code, err, funnel, _ = build(capsys, tmp_path, str(tmp_path / "cat" / "*.csv"))
    assert code == 0 and funnel["rows_read"] == 3 and funnel["kept"] == 3, err
    code, err, funnel, _ = build(capsys, tmp_path / "alone", str(tmp_path / "cat" / "empty.csv"))
    assert code == 1 and err == "error: the build kept no galaxy of 0 catalog rows"


def test_zero_and_negative_object_ids_are_bad_values(capsys, tmp_path):
    lines = rows(3) + [csv_line(row(object_id=0, specz_name="Z")), csv_line(row(object_id=-5, specz_name="N"))]
    path = tmp_path / "ids.csv"
    path.write_bytes(hsc_csv(HEADER, lines))
    code, err, funnel, rejected = build(capsys, tmp_path, str(path))
    assert code == 0 and funnel["kept"] == 3 and funnel["rejected_by_reason"] == {"bad_value": 2}
    assert sorted(r["detail"] for r in rejected) == ["object_id=-5 is not positive", "object_id=0 is not positive"]


@pytest.mark.parametrize("slash", ["", "/"])
def test_a_folder_reads_its_catalog_files_and_skips_hidden_ones(capsys, tmp_path, slash):
    folder = tmp_path / "catalogs"
    folder.mkdir()
    (folder / "a.csv").write_bytes(hsc_csv(HEADER, rows(2)))
    (folder / "b.csv.gz").write_bytes(gzip.compress(hsc_csv(HEADER, rows(3, start=10))))
    (folder / ".hidden.csv").write_bytes(hsc_csv(HEADER, rows(4, start=20)))
    (folder / "notes.md").write_text("not a catalog")
    code, err, funnel, _ = build(capsys, tmp_path / slash.replace("/", "s"), str(folder) + slash)
    assert code == 0 and funnel["rows_read"] == 5 and funnel["kept"] == 5, err
