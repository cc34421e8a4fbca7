"""The whole job on a small synthetic sky through the loopback stand-in: images, morphology,
sharded Parquet per split, failed galaxies accounted, and no credential anywhere in the outputs."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from galaxiesml.cutouts import CENTRE, SIZE
from galaxiesml.dataset import GALAXY_SCHEMA, cube_numpy
from galaxiesml.morphology import MORPHOLOGY_COLUMNS
from pipeline import demo as demo_module
from pipeline.cli import run

PASSWORD = "demo-pw-Q7x!z19"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    mp = pytest.MonkeyPatch()
    mp.setattr(demo_module.secrets, "token_urlsafe", lambda n: PASSWORD)
    try:
        summary = demo_module.demo(
            ["--galaxies", "60", "--seed", "3", "--output", str(out), "--runner=FnApiRunner", "--galaxies_per_shard", "8"],
            run,
        )
    finally:
        mp.undo()
    return out, summary


def test_every_row_accounted_and_galaxies_written_per_split(built):
    out, summary = built
    f = summary["funnel"]
    assert f["rows_read"] == f["rejected"] + f["duplicates"] + f["failed"] + f["kept"]
    assert f["kept"] > 0
    total = 0
    for split, n in f["kept_by_split"].items():
        files = sorted((out / "galaxies" / split).glob("part-*.parquet"))
        assert files and all(p.name.endswith(f"-of-{len(files):05d}.parquet") for p in files)
        table = pq.read_table(files)
        assert table.num_rows == n and set(table.column("split").to_pylist()) == {split}
        assert table.schema.equals(GALAXY_SCHEMA, check_metadata=False)
        total += n
        images = cube_numpy(table.column("image"))
        assert images.shape == (n, 5, SIZE, SIZE) and np.isfinite(images).all()
        assert (images[:, :, CENTRE, CENTRE] != 0).all()
        crop = cube_numpy(table.column("image_64"))
        assert np.array_equal(crop, images[:, :, 31:95, 31:95])
        morph = table.select(list(MORPHOLOGY_COLUMNS)).to_pandas()
        assert morph["i_major_axis"].notna().mean() > 0.9
    assert not list((out / "galaxies").glob("*/_tmp/*"))  # temporary shards renamed or removed
    failed = pq.read_table(sorted((out / "catalog").glob("failed-*.parquet")))
    assert failed.num_rows == f["failed"]
    assert all(failed.column("reason").to_pylist()) and set(failed.column("stage").to_pylist()) <= {"cutout", "morphology"}


def test_no_credential_in_anything_the_run_wrote(built):
    out, _ = built
    for path in Path(out).rglob("*"):
        if path.is_file():
            assert PASSWORD.encode() not in path.read_bytes(), path


def test_summary_records_how_it_was_made(built):
    out, _ = built
    run_info = json.loads((out / "summary.json").read_text())["run"]
    assert run_info["cutout_source"] == "service" and run_info["sersic_fit"] is True
    assert run_info["cutouts"]["half_width"] == 10.0


def galaxies_of(out: Path) -> dict:
    """object_id -> (split, image, morphology values) of a built dataset."""
    table = pq.read_table(sorted(out.glob("galaxies/*/part-*.parquet")))
    images = cube_numpy(table.column("image"))
    morph = table.select(list(MORPHOLOGY_COLUMNS)).to_pandas().to_numpy(dtype=float)
    return {
        oid: (split, images[k], morph[k])
        for k, (oid, split) in enumerate(zip(table.column("object_id").to_pylist(), table.column("split").to_pylist()))
    }


def test_a_fault_injected_build_gives_the_same_dataset(tmp_path):
    """A few hundred galaxies, clean and with 20% of cutout requests failing or corrupt."""
    common = ["--galaxies", "250", "--seed", "5", "--runner=FnApiRunner", "--no_sersic", "--cutout_half_width", "3",
              "--galaxies_per_request", "10", "--progress_every", "0"]
    clean = demo_module.demo([*common, "--output", str(tmp_path / "clean")], run)
    faulty = demo_module.demo([*common, "--output", str(tmp_path / "faulty"), "--fault_rate", "0.2"], run)
    assert faulty["funnel"] == clean["funnel"] and clean["funnel"]["kept"] > 100
    a, b = galaxies_of(tmp_path / "clean"), galaxies_of(tmp_path / "faulty")
    assert a.keys() == b.keys()
    for oid in a:
        assert a[oid][0] == b[oid][0]
        assert np.array_equal(a[oid][1], b[oid][1])
        np.testing.assert_array_equal(a[oid][2], b[oid][2])


def test_no_credential_in_the_job_graph_or_the_logs(tmp_path, monkeypatch, capfd):
    import logging

    import apache_beam as beam

    from pipeline.build import build
    from pipeline.cli import options

    monkeypatch.setenv("HSC_SSP_CAS_USER", "erin")
    monkeypatch.setenv("HSC_SSP_CAS_PASSWORD", PASSWORD)
    catalog = tmp_path / "cat.csv"
    catalog.write_text("# object_id\n")
    opts = options(["--catalog", str(catalog), "--output", str(tmp_path / "o"), "--hsc_url", "http://127.0.0.1:9/x"])
    p = beam.Pipeline(options=opts)
    build(p, opts)
    assert PASSWORD.encode() not in p.to_runner_api().SerializeToString()
    assert PASSWORD not in str(opts.get_all_options())
    # a client refused by the service says so without the password, in its error and its logs
    from galaxiesml.hsc.credentials import Credentials
    from galaxiesml.hsc.cutout_client import CutoutClient, Target

    logging.getLogger().setLevel(logging.DEBUG)
    with CutoutClient(Credentials.from_env(), url="http://127.0.0.1:9/x", max_retries=1, backoff_s=0.001) as client:
        try:
            list(client.fetch_galaxies([Target(1, 150.0, 2.0)]))
        except Exception as exc:  # noqa: BLE001 - any error will do; its text is what is checked
            assert PASSWORD not in f"{exc!r} {exc}"
        assert PASSWORD not in repr(client)
    captured = capfd.readouterr()
    assert PASSWORD not in captured.out + captured.err


def test_released_hdf5_files_and_csvs_verify(built):
    import h5py

    from galaxiesml.verify import verify

    out, summary = built
    report = verify(str(out))
    assert not report.problems, report.problems
    names = sorted(p.name for p in (out / "hdf5").glob("*.hdf5"))
    assert len(names) == 6 and "5x127x127_training_with_morphology.hdf5" in names
    with h5py.File(out / "hdf5" / "5x64x64_testing_with_morphology.hdf5") as f:
        assert f["image"].shape == (summary["funnel"]["kept_by_split"]["testing"], 5, 64, 64)
        assert json.loads(f.attrs["funnel"]) == summary["funnel"]
        assert json.loads(f.attrs["run"])["preset"] == "paper"
    assert sorted(p.name for p in (out / "csv").glob("*.csv")) == ["testing.csv", "training.csv", "validation.csv"]
