"""Galaxy records to Arrow: every column, the image cubes as nested lists, planes when kept."""
from __future__ import annotations

import io

import duckdb
import numpy as np
import pyarrow.parquet as pq
import pytest

from galaxiesml.cutouts import NONFINITE, PADDED, central_crop
from galaxiesml.dataset import GALAXY_SCHEMA, TABULAR_COLUMNS, cube_numpy, flag_cubes, flags_array, parquet_options, records_to_table
from galaxiesml.morphology import BAND_COLUMNS, COLUMN_DTYPES
from galaxiesml.schema import BANDS
from tests.catalog_rows import GOOD

MORPH = {f"{b}_{c}": (0.5 if COLUMN_DTYPES[c] is np.float64 else True) for b in BANDS for c in BAND_COLUMNS}


def record(i: int, planes: bool = False) -> dict:
    rng = np.random.default_rng(i)
    r = {
        "row": {**GOOD, "object_id": i, "source": "c.csv", "line": i + 2, "split": "testing"},
        "image": rng.random((5, 127, 127), dtype=np.float32),
        "flags": (rng.random((5, 127, 127)) < 0.1).astype(np.uint8),
        "filters": ("HSC-G", "HSC-R2", "HSC-I", "HSC-Z", "HSC-Y"),
        "morphology": MORPH,
    }
    if planes:
        r["hsc_mask"] = rng.integers(0, 1 << 16, (5, 127, 127), dtype=np.int32)
        r["variance"] = rng.random((5, 127, 127), dtype=np.float32)
    return r


def test_records_round_trip_through_parquet():
    records = [record(i) for i in range(4)]
    buf = io.BytesIO()
    pq.write_table(records_to_table(records), buf)
    table = pq.read_table(io.BytesIO(buf.getvalue()))
    assert table.schema.equals(GALAXY_SCHEMA, check_metadata=False)
    assert table.column("object_id").to_pylist() == [0, 1, 2, 3]
    assert table.column("filters").to_pylist()[0] == ["HSC-G", "HSC-R2", "HSC-I", "HSC-Z", "HSC-Y"]
    assert table.column("r_sersic_index").to_pylist() == [0.5] * 4
    assert table.column("g_no_detection").to_pylist() == [True] * 4
    images = np.stack([r["image"] for r in records])
    assert np.array_equal(cube_numpy(table.column("image")), images)
    assert np.array_equal(cube_numpy(table.column("image_64")), images[:, :, 31:95, 31:95])
    assert np.array_equal(cube_numpy(table.column("image_flags")), np.stack([r["flags"] for r in records]))
    assert set(TABULAR_COLUMNS) <= set(table.column_names)
    assert table.to_pandas()["image"][0].shape == (5,)  # pandas reads the nesting as it is


def test_kept_planes_become_columns():
    records = [record(i, planes=True) for i in range(2)]
    table = records_to_table(records)
    assert np.array_equal(cube_numpy(table.column("hsc_mask")), np.stack([r["hsc_mask"] for r in records]))
    assert np.array_equal(cube_numpy(table.column("variance")), np.stack([r["variance"] for r in records]))


def test_shards_store_pixels_plain_and_duckdb_reads_them_as_arrays(tmp_path):
    """Shards as the pipeline writes them: pixels neither dictionary-encoded nor compressed (both
    only slow readers down), everything else compressed; DuckDB reads the cubes as nested arrays."""
    records = [record(i) for i in range(3)]
    table = records_to_table(records)
    path = tmp_path / "part.parquet"
    pq.write_table(table, path, **parquet_options(table.schema))
    meta = pq.ParquetFile(path).metadata.row_group(0)
    columns = {meta.column(i).path_in_schema.split(".")[0]: meta.column(i) for i in range(meta.num_columns)}
    for name in ("image", "image_64"):
        assert columns[name].compression == "UNCOMPRESSED" and "RLE_DICTIONARY" not in columns[name].encodings
    assert columns["image_flags"].compression == "SNAPPY" and columns["specz_redshift"].compression == "SNAPPY"
    rows = duckdb.connect().execute(
        f"select object_id, image[2][10][20], image_64[5][1][64], len(image), len(image[1]), len(image[1][1]) "
        f"from read_parquet('{path}') order by object_id"
    ).fetchall()
    for r, (object_id, a, b, *shape) in zip(records, rows):
        assert object_id == r["row"]["object_id"] and shape == [5, 127, 127]
        assert a == pytest.approx(float(r["image"][1, 9, 19])) and b == pytest.approx(float(r["image"][4, 31, 94]))


def test_image_flags_are_runs_that_come_back_as_cubes(tmp_path):
    """Parquet keeps runs of flagged pixels along x, (band, y, x, length, flags); cube_numpy gives
    back the dense cubes, for any slice of the column; SQL readers can count flagged pixels."""
    flags = np.zeros((4, 5, 127, 127), np.uint8)
    flags[1] = PADDED
    flags[1, :, 4:123, 4:123] = 0  # the frame a 10" cutout leaves
    flags[3, 2, 60, 7] = NONFINITE
    flags[3, 0, 126, 120:] = PADDED
    flags[3, 0, 126, 126] = PADDED | NONFINITE
    column = flags_array(flags)
    assert column.to_pylist()[0] == [] and len(column.to_pylist()[1]) == 5 * (8 + 2 * 119)
    assert column.to_pylist()[3] == [
        {"band": 0, "y": 126, "x": 120, "length": 6, "flags": PADDED},
        {"band": 0, "y": 126, "x": 126, "length": 1, "flags": PADDED | NONFINITE},
        {"band": 2, "y": 60, "x": 7, "length": 1, "flags": NONFINITE},
    ]
    assert np.array_equal(cube_numpy(column), flags)
    assert np.array_equal(cube_numpy(column.slice(2, 2)), flags[2:])
    records = [{**record(i), "flags": flags[i]} for i in range(4)]
    table = records_to_table(records)
    path = tmp_path / "part.parquet"
    pq.write_table(table, path, **parquet_options(table.schema))
    assert np.array_equal(cube_numpy(pq.read_table(path).column("image_flags")), flags)
    counts = duckdb.connect().execute(
        f"select object_id, coalesce(list_sum(list_transform(image_flags, lambda r: r.length)), 0) "
        f"from read_parquet('{path}') order by object_id"
    ).fetchall()
    assert counts == [(i, int(np.count_nonzero(flags[i]))) for i in range(4)]


def test_flag_cubes_of_the_crop_match_the_cropped_cubes():
    """The 64 x 64 files' flags come from the runs clipped to the central crop: the same pixels as
    cropping the full cubes, for runs inside, outside and across the crop's edges."""
    rng = np.random.default_rng(3)
    flags = np.zeros((6, 5, 127, 127), np.uint8)
    flags[0] = PADDED
    flags[0, :, 4:123, 4:123] = 0
    flags[1, :, :, :40] = PADDED  # across the left edge (x 31)
    flags[2, 3, 20:100, 90:] = PADDED  # across the right and the top and bottom edges
    flags[3, 1, 63, :] = NONFINITE  # one whole row through the crop
    flags[4] = rng.choice([0, PADDED, NONFINITE, PADDED | NONFINITE], size=(5, 127, 127), p=[0.7, 0.1, 0.1, 0.1])
    column = flags_array(flags)
    for size in (127, 64, 1):
        assert np.array_equal(flag_cubes(column, size), central_crop(flags, size)), size
        assert np.array_equal(flag_cubes(column.slice(1, 3), size), central_crop(flags[1:4], size)), size
