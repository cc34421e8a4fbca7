"""The catalog stage end to end on a generated 20,000-row catalog: every funnel count against an
independent pandas computation of the same rules, counters against summary.json, and the same
outputs on FnApiRunner and on DirectRunner with two worker processes."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from galaxiesml.schema import BANDS
from galaxiesml.splits import assign_splits
from galaxiesml.synthetic_catalog import make_catalog, write_catalog
from pipeline.cli import run_pipeline
from pipeline.options import GalaxiesMLOptions

ROWS = 20_000


@pytest.fixture(scope="module")
def catalog_dir(tmp_path_factory) -> Path:
    """The generated catalog in two shards, one of them gzip'd."""
    d = tmp_path_factory.mktemp("catalog")
    rows, _ = make_catalog(ROWS, seed=7)
    write_catalog(rows.slice(0, 12_000), d / "part-0.csv")
    write_catalog(rows.slice(12_000), d / "part-1.csv.gz")
    return d


def build(catalog_dir: Path, out: Path, *runner_flags: str):
    opts = GalaxiesMLOptions(
        ["--catalog", str(catalog_dir / "part-*"), "--output", str(out), "--split_seed", "5", "--cutout_source=none", *runner_flags]
    )
    result = run_pipeline(opts)
    summary = json.loads((out / "summary.json").read_text())
    return result, summary


@pytest.fixture(scope="module")
def fnapi_build(catalog_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("fnapi")
    return (out, *build(catalog_dir, out, "--runner=FnApiRunner"))


def read_parquet(out: Path, name: str) -> pd.DataFrame:
    return pq.read_table(sorted((out / "catalog").glob(f"{name}-*.parquet"))).to_pandas()


def expected_funnel(catalog_dir: Path) -> dict:
    """The paper's rules done independently with pandas over the same files, in file/line order."""
    frames = []
    for path in sorted(catalog_dir.glob("part-*")):
        names = None
        opener = __import__("gzip").open if path.suffix == ".gz" else open
        with opener(path, "rt") as f:
            for skip, line in enumerate(f):
                if line.startswith("# object_id"):
                    names = line[2:].strip().split(",")
                    break
        frames.append(pd.read_csv(path, skiprows=skip + 1, names=names))
    df = pd.concat(frames, ignore_index=True)
    z, err = df.specz_redshift, df.specz_redshift_err
    rules = [
        ("redshift_missing", z != 9.9999),
        ("redshift_err_range", (err > 0) & (err < 1)),
        ("specz_not_homogeneous", df.specz_flag_homogeneous.astype(bool)),
        ("redshift_range", (z > 0.01) & (z < 4)),
        ("redshift_err_relative", err < 0.005 * (1 + z)),
        ("magnitude_range", np.logical_and.reduce([(df[f"{b}_cmodel_mag"] > 0) & (df[f"{b}_cmodel_mag"] < 50) for b in BANDS])),
    ]
    alive = pd.Series(True, index=df.index)
    rejected = {}
    for name, ok in rules:
        failed = alive & ~ok
        if failed.sum():
            rejected[name] = int(failed.sum())
        alive &= ok
    cut = df[alive]
    step1 = cut.drop_duplicates("specz_name", keep="first")
    step2 = step1.drop_duplicates("object_id", keep="first")
    splits = assign_splits(step2.object_id.to_numpy(), seed=5)
    return {
        "rows_read": len(df),
        "rejected_by_reason": rejected,
        "duplicates_by_key": {"specz_name": len(cut) - len(step1), "object_id": len(step1) - len(step2)},
        "kept_by_split": {s: int((splits == s).sum()) for s in ("testing", "training", "validation")},
        "kept_ids": sorted(step2.object_id.tolist()),
    }


def test_funnel_matches_pandas(fnapi_build, catalog_dir):
    out, _, summary = fnapi_build
    expected = expected_funnel(catalog_dir)
    funnel = summary["funnel"]
    assert funnel["rows_read"] == ROWS == expected["rows_read"]
    assert funnel["rejected_by_reason"] == expected["rejected_by_reason"]
    assert funnel["duplicates_by_key"] == expected["duplicates_by_key"]
    assert funnel["kept_by_split"] == expected["kept_by_split"]
    assert sorted(read_parquet(out, "kept").object_id.tolist()) == expected["kept_ids"]
    assert funnel["kept"] + funnel["rejected"] + funnel["duplicates"] == funnel["rows_read"]
    # the generator makes every cut bite and both duplicate patterns appear
    assert len(funnel["rejected_by_reason"]) == 6
    assert min(funnel["duplicates_by_key"].values()) > 100


def test_outputs_hold_every_row_once_with_reasons(fnapi_build):
    out, _, summary = fnapi_build
    kept, rejected, dups = (read_parquet(out, n) for n in ("kept", "rejected", "duplicates"))
    everything = pd.concat([kept[["source", "line"]], rejected[["source", "line"]], dups[["source", "line"]]])
    assert len(everything) == ROWS
    assert not everything.duplicated().any()
    assert rejected.reason.notna().all() and rejected.detail.notna().all()
    assert (dups.kept_line > 0).all()
    assert set(kept.split) == {"training", "validation", "testing"}


def test_counters_equal_summary(fnapi_build):
    _, result, summary = fnapi_build
    counters = {
        m.key.metric.name: m.committed
        for m in result.metrics().query()["counters"]
        if m.key.metric.namespace == "galaxiesml"
    }
    f = summary["funnel"]
    assert counters["read"] == f["rows_read"]
    for reason, n in f["rejected_by_reason"].items():
        assert counters[f"rejected.{reason}"] == n
    for key, n in f["duplicates_by_key"].items():
        assert counters[f"duplicates.{key}"] == n
    for split, n in f["kept_by_split"].items():
        assert counters[f"catalog_kept.{split}"] == n
    assert f["catalog_kept_by_split"] == f["kept_by_split"]  # no image stage: nothing fails later


def test_same_outputs_on_multiprocessing_direct_runner(fnapi_build, catalog_dir, tmp_path):
    out, _, summary = fnapi_build
    _, other = build(
        catalog_dir,
        tmp_path,
        "--runner=DirectRunner",
        "--direct_running_mode=multi_processing",
        "--direct_num_workers=2",
    )
    assert other["funnel"] == summary["funnel"]
    key = ["object_id", "split", "source", "line"]
    a = read_parquet(out, "kept")[key].sort_values(key).reset_index(drop=True)
    b = read_parquet(tmp_path, "kept")[key].sort_values(key).reset_index(drop=True)
    a.source = a.source.str.rsplit("/", n=1).str[1]
    b.source = b.source.str.rsplit("/", n=1).str[1]
    pd.testing.assert_frame_equal(a, b)
