"""The released files: Consolidate in a TestPipeline over hand-made Parquet shards, read back with
h5py, pandas and pyarrow; reproducibility; galaxiesml.verify on good and broken datasets."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import time
from pathlib import Path

import apache_beam as beam
import h5py
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from galaxiesml.cutouts import central_crop
from galaxiesml.dataset import TABULAR_COLUMNS, cube_numpy
from galaxiesml.hdf5 import WRITE_BEHIND_MARGIN, consolidate, hdf5_name, ordered_parallel, release_attrs, write_split_csv
from galaxiesml.schema import SPLITS
from galaxiesml.verify import main as verify_main
from galaxiesml.verify import verify
from tests.galaxy_shards import write_shards
from transforms.consolidate import Consolidate, split_of

COUNTS = {"training": 130, "validation": 45, "testing": 45}
ATTRS = release_attrs({"seed": 0, "preset": "test"}, {"kept_by_split": COUNTS}, created="2024-01-01T00:00:00+00:00")


def run_consolidate(shards: list[str], output: str) -> None:
    """Consolidate `shards` into `output`, checking that one file of each kind per split is reported."""
    expected = [(s, k, f"{output}/{'csv' if k == 'csv' else 'hdf5'}/") for s in SPLITS for k in ("127", "64", "csv")]
    with TestPipeline(options=PipelineOptions(["--runner=FnApiRunner"])) as p:
        written = p | "ShardNames" >> beam.Create(shards) | Consolidate(output, ATTRS)
        reported = written | "What" >> beam.Map(lambda w: (w["split"], w["kind"], w["path"].rsplit("/", 1)[0] + "/"))
        assert_that(reported, equal_to(expected))


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> dict[str, list[str]]:
    return write_shards(tmp_path_factory.mktemp("parquet"), COUNTS, shards=3, seed=1)


@pytest.fixture(scope="module")
def built(shards, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("build")
    (out / "summary.json").write_text(json.dumps({"funnel": {"kept_by_split": COUNTS}, "run": {}}))
    run_consolidate([p for s in SPLITS for p in shards[s]], str(out))
    return out


def parquet_rows(paths: list[str]) -> pa.Table:
    return pa.concat_tables(pq.read_table(p) for p in paths).sort_by("object_id")


def test_split_of_parses_shard_paths():
    assert split_of("gs://b/out/galaxies/validation/part-00001-of-00004.parquet") == "validation"
    with pytest.raises(ValueError):
        split_of("/out/catalog/kept-00000-of-00001.parquet")


@pytest.mark.parametrize("split", SPLITS)
def test_hdf5_files_hold_every_galaxy_sorted_with_released_names(built, shards, split):
    expected = parquet_rows(shards[split])
    ids = expected.column("object_id").to_numpy()
    for size, column in ((127, "image"), (64, "image_64")):
        with h5py.File(built / "hdf5" / hdf5_name(size, split), "r") as h5:
            assert set(h5.keys()) == {"image", "image_flags", *TABULAR_COLUMNS}
            assert h5["image"].shape == (len(ids), 5, size, size) and h5["image"].dtype == np.float32
            assert h5["image"].chunks == (1, 5, size, size) and h5["image"].compression is None
            assert h5["image_flags"].dtype == np.uint8
            np.testing.assert_array_equal(h5["object_id"][:], ids)
            np.testing.assert_array_equal(h5["image"][:], cube_numpy(expected.column(column)))
            np.testing.assert_array_equal(
                h5["image_flags"][:], central_crop(cube_numpy(expected.column("image_flags")), size)
            )
            for name in ("specz_redshift", "g_petro_rad", "y_no_detection", "line"):
                np.testing.assert_array_equal(h5[name][:], expected.column(name).to_numpy(zero_copy_only=False))
            for name in ("specz_name", "coord", "source", "split"):
                assert [b.decode() for b in h5[name][:]] == expected.column(name).to_pylist()
            assert h5["filters"].shape == (len(ids), 5)
            assert h5["filters"][:].astype(str).tolist() == expected.column("filters").to_pylist()
            skymap = expected.column("skymap_id").to_pylist()
            assert h5["skymap_id"][:].tolist() == [-1 if v is None else v for v in skymap]
            assert h5.attrs["band_order"] == "g,r,i,z,y" and h5.attrs["split"] == split
            assert h5.attrs["pixel_scale_arcsec"] == 0.168 and h5.attrs["zero_point_ab"] == 27.0
            assert json.loads(h5.attrs["funnel"]) == {"kept_by_split": COUNTS}
            assert h5.attrs["n_galaxies"] == len(ids)


def test_splits_are_disjoint(built):
    ids = {}
    for split in SPLITS:
        with h5py.File(built / "hdf5" / hdf5_name(127, split), "r") as h5:
            ids[split] = set(h5["object_id"][:].tolist())
    assert sum(len(v) for v in ids.values()) == len(set().union(*ids.values())) == sum(COUNTS.values())


@pytest.mark.parametrize("split", SPLITS)
def test_csv_holds_the_tabular_columns_in_the_same_order(built, shards, split):
    expected = parquet_rows(shards[split])
    table = pd.read_csv(built / "csv" / f"{split}.csv")
    assert list(table.columns) == list(TABULAR_COLUMNS)
    assert table["object_id"].tolist() == expected.column("object_id").to_pylist()
    assert table["specz_name"].tolist() == expected.column("specz_name").to_pylist()
    np.testing.assert_array_equal(table["specz_redshift"], expected.column("specz_redshift").to_numpy())
    assert table["r_sersic_failed"].tolist() == expected.column("r_sersic_failed").to_pylist()
    assert table["filters"].str.split(";").tolist() == expected.column("filters").to_pylist()


def test_two_runs_give_byte_identical_files(built, shards, tmp_path):
    again = tmp_path / "again"
    # the shard names arrive in another order
    run_consolidate([p for s in reversed(SPLITS) for p in reversed(shards[s])], str(again))
    for name in sorted(p.relative_to(built) for p in built.rglob("*.*") if p.parent != built):
        digests = {hashlib.sha256((root / name).read_bytes()).hexdigest() for root in (built, again)}
        assert len(digests) == 1, name


def test_compression_keeps_pixels(shards, tmp_path):
    plain, packed = tmp_path / "plain.hdf5", tmp_path / "packed.hdf5"
    consolidate(shards["testing"], str(plain), 127, attrs={})
    result = consolidate(shards["testing"], str(packed), 127, attrs={}, compression="gzip")
    with h5py.File(plain, "r") as a, h5py.File(packed, "r") as b:
        assert b["image"].compression == "gzip" and b.attrs["compression"] == "gzip"
        np.testing.assert_array_equal(a["image"][:], b["image"][:])
        np.testing.assert_array_equal(a["image_flags"][:], b["image_flags"][:])
    assert result["bytes"] < plain.stat().st_size


@pytest.mark.skipif(not hasattr(os, "posix_fadvise"), reason="posix_fadvise is Linux/BSD only")
def test_written_images_are_handed_to_the_disk_as_they_go(shards, tmp_path, monkeypatch):
    out = tmp_path / "x.hdf5"
    calls, fadvise = [], os.posix_fadvise

    def spy(fd: int, offset: int, length: int, advice: int) -> None:
        if os.fstat(fd).st_ino == out.stat().st_ino:
            calls.append((offset, length, advice, os.fstat(fd).st_size))
        fadvise(fd, offset, length, advice)

    monkeypatch.setattr(os, "posix_fadvise", spy)
    consolidate(shards["training"], str(out), 127, attrs={}, batch_rows=8)
    galaxy = 5 * 127 * 127 * 5  # float32 image + uint8 flags
    assert len(calls) >= 130 // 8 - 2
    assert all(offset == 0 and advice == os.POSIX_FADV_DONTNEED for offset, _, advice, _ in calls)
    assert all(0 < length <= size - WRITE_BEHIND_MARGIN for _, length, _, size in calls)
    assert out.stat().st_size - calls[-1][1] < WRITE_BEHIND_MARGIN + 8 * galaxy + (1 << 20)


def test_repeated_object_ids_are_refused(shards, tmp_path):
    with pytest.raises(ValueError, match="object_id is not unique"):
        consolidate(shards["testing"] + shards["testing"][:1], str(tmp_path / "x.hdf5"), 64, attrs={})
    with pytest.raises(ValueError, match="image size"):
        consolidate(shards["testing"], str(tmp_path / "x.hdf5"), 100, attrs={})


def test_empty_split_gives_empty_files(tmp_path):
    empty = tmp_path / "empty.parquet"
    from galaxiesml.dataset import records_to_table

    pq.write_table(records_to_table([]), empty)
    result = consolidate([str(empty)], str(tmp_path / "e.hdf5"), 127, attrs={})
    assert result["n_galaxies"] == 0
    write_split_csv([str(empty)], str(tmp_path / "e.csv"))
    assert pd.read_csv(tmp_path / "e.csv").shape == (0, len(TABULAR_COLUMNS))


def test_verify_passes_on_a_good_dataset(built, capsys):
    assert verify(built).ok
    assert verify_main([str(built)]) == 0
    out = capsys.readouterr().out
    assert "training: 130 galaxies expected" in out and out.strip().endswith("OK")


def _broken_copy(built: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "broken"
    shutil.copytree(built, copy)
    return copy


@pytest.mark.parametrize(
    "damage, message",
    [
        ("count", "summary.json kept_by_split says 46"),
        ("nan", "images have NaN or infinite pixels"),
        ("crop", "not the central crop"),
        ("overlap", "splits training and testing share 1 galaxies"),
        ("column", "columns whose length differs"),
        ("missing", "5x64x64_validation_with_morphology.hdf5: missing"),
    ],
)
def test_verify_fails_with_a_clear_message(built, tmp_path, capsys, damage, message):
    broken = _broken_copy(built, tmp_path)
    hdf5 = broken / "hdf5"
    if damage == "count":
        (broken / "summary.json").write_text(json.dumps({"funnel": {"kept_by_split": {**COUNTS, "testing": 46}}}))
    elif damage == "nan":
        with h5py.File(hdf5 / hdf5_name(127, "training"), "r+") as h5:
            h5["image"][3, 2, 10, 10] = np.nan
    elif damage == "crop":
        with h5py.File(hdf5 / hdf5_name(64, "validation"), "r+") as h5:
            h5["image"][7, 0, 0, 0] += 1
    elif damage == "overlap":
        with h5py.File(hdf5 / hdf5_name(127, "training"), "r") as h5:
            shared = h5["object_id"][0]
        for size in (127, 64):
            with h5py.File(hdf5 / hdf5_name(size, "testing"), "r+") as h5:
                ids = h5["object_id"][:]
                ids[0] = shared
                h5["object_id"][:] = np.sort(ids)
    elif damage == "column":
        with h5py.File(hdf5 / hdf5_name(127, "testing"), "r+") as h5:
            values = h5["specz_mag_i"][:-1]
            del h5["specz_mag_i"]
            h5["specz_mag_i"] = values
    elif damage == "missing":
        (hdf5 / hdf5_name(64, "validation")).unlink()
    report = verify(broken)
    assert any(message in p for p in report.problems), report.problems
    assert verify_main([str(broken)]) == 1
    assert message in capsys.readouterr().err


def test_ordered_parallel_keeps_order_and_bounds_what_runs():
    """Sources' items come out in order while at most `workers` sources run at once; an error in a
    source reaches the consumer; closing early stops the threads."""
    running, most = set(), [0]
    lock = threading.Lock()

    def source(k: int):
        def items():
            with lock:
                running.add(k)
                most[0] = max(most[0], len(running))
            for j in range(5):
                time.sleep(0.001)
                yield (k, j)
            with lock:
                running.discard(k)
        return items

    got = list(ordered_parallel((source(k) for k in range(7)), workers=2, depth=2))
    assert got == [(k, j) for k in range(7) for j in range(5)]
    assert most[0] == 2

    def broken():
        yield "first"
        raise ValueError("bad row group")

    with pytest.raises(ValueError, match="bad row group"):
        list(ordered_parallel([source(0), lambda: broken()]))

    before = threading.active_count()
    stream = ordered_parallel(source(k) for k in range(100))
    assert next(stream) == (0, 0)
    stream.close()
    assert threading.active_count() == before
