"""Samples users choose: extra cuts on top of the paper's, presets, and mini builds."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy.stats import ks_2samp

from galaxiesml.cuts import PAPER_RULES, SampleCuts, apply_cuts
from galaxiesml.mini import select_mini
from galaxiesml.splits import assign_splits
from galaxiesml.synthetic_catalog import make_catalog, make_galaxies, write_catalog
from pipeline.cli import UserError, options, preflight, run_pipeline
from tests.catalog_rows import HEADER, csv_line, row, typed_table
from tests.conftest import hsc_csv


def reasons(cuts: SampleCuts, rows: list[dict], extra_columns: dict | None = None) -> list:
    table = typed_table(rows)
    for name, values in (extra_columns or {}).items():
        table = table.append_column(name, pa.array(values))
    kept, rejected = apply_cuts(table.to_batches()[0], PAPER_RULES + cuts.rules())
    by_line = dict(zip(rejected.column("line").to_pylist(), rejected.column("reason").to_pylist()))
    return [by_line.get(i + 1) for i in range(len(rows))]


def test_magnitude_and_magsigma_limits_name_their_cut():
    cuts = SampleCuts(max_mag={"i": 22.5}, max_magsigma={"g": 0.05})
    got = reasons(
        cuts,
        [
            row(i_cmodel_mag=22.49),
            row(i_cmodel_mag=22.5),
            row(g_cmodel_magsigma=0.05),
            row(g_cmodel_magsigma=float("nan")),
        ],
    )
    assert got == [None, "mag_limit_i", "magsigma_limit_g", "magsigma_limit_g"]


def test_redshift_window_sky_box_tracts_and_required_columns():
    cuts = SampleCuts(
        redshift_window=(0.2, 1.0), sky_box=(150.0, 151.0, 2.0, 3.0), tracts=(9813,), require_true=("is_galaxy",)
    )
    got = reasons(
        cuts,
        [
            row(),
            row(specz_redshift=0.15),
            row(ra=149.9),
            row(skymap_id=98140101),
            row(),
        ],
        {"is_galaxy": [True, True, True, True, False]},
    )
    assert got == [None, "redshift_window", "sky_box", "tracts", "require_is_galaxy"]


def test_paper_cuts_come_first_and_are_never_weakened():
    # a window wider than the paper's range does not let z = 4.5 back in
    cuts = SampleCuts(redshift_window=(0.0, 10.0), max_mag={"g": 99.0})
    assert reasons(cuts, [row(specz_redshift=4.5, specz_redshift_err=0.001)]) == ["redshift_range"]
    assert reasons(cuts, [row(g_cmodel_mag=60.0)]) == ["magnitude_range"]
    # a row failing both a paper cut and an extra one records the paper's
    assert reasons(SampleCuts(max_mag={"i": 20}), [row(specz_redshift=9.9999)]) == ["redshift_missing"]


def test_presets_set_options_and_explicit_flags_win():
    opts = options(["--catalog", "x", "--output", "y", "--preset", "bright"])
    assert opts.preset == "bright" and opts.max_mag == "i=22.5" and "y=0.1" in opts.max_magsigma
    opts = options(["--preset=bright", "--max_mag", "i=21", "--catalog", "x"])
    assert opts.max_mag == "i=21"
    assert options(["--preset", "mini"]).mini_size == 10000
    assert options([]).preset == "paper" and options([]).mini_size == 0
    with pytest.raises(UserError, match="unknown preset 'huge'.*paper, bright, mini"):
        options(["--preset", "huge"])


def test_bad_cut_options_and_missing_required_column_are_clear_errors(tmp_path):
    cat = tmp_path / "c.csv"
    cat.write_bytes(hsc_csv(HEADER, [csv_line(row())]))
    with pytest.raises(UserError, match="--max_mag takes band=limit"):
        preflight(options(["--catalog", str(cat), "--output", str(tmp_path), "--max_mag", "q=3", "--cutout_source=none"]))
    with pytest.raises(UserError, match="missing required column.*is_galaxy"):
        preflight(options(["--catalog", str(cat), "--output", str(tmp_path), "--require_true", "is_galaxy", "--cutout_source=none"]))


def test_mini_selection_is_nested_deterministic_and_stratified():
    g = make_galaxies(30_000, seed=3)
    ids = g.column("object_id").to_numpy()
    z = g.column("specz_redshift").to_numpy()
    m1, m5 = select_mini(ids, z, 1000, 0), select_mini(ids, z, 5000, 0)
    assert m1.sum() == 1000 and m5.sum() == 5000
    assert np.all(m5[m1])  # N=1,000 is inside N=5,000
    perm = np.random.default_rng(0).permutation(len(ids))
    again = ids[perm][select_mini(ids[perm], z[perm], 1000, 0)]
    assert set(again) == set(ids[m1])  # input order does not matter
    assert ks_2samp(z[m1], z).pvalue > 0.01
    assert ks_2samp(z[m5], z).pvalue > 0.01
    assert set(ids[select_mini(ids, z, 1000, 1)]) != set(ids[m1])  # the seed matters


@pytest.mark.parametrize("seed", [0, 5])
def test_a_mini_sample_keeps_the_split_fractions(seed):
    """The mini choice and the split are independent draws, also for equal seeds: a subset chosen
    by the split's own hash was all training."""
    g = make_galaxies(30_000, seed=3)
    ids = g.column("object_id").to_numpy()
    chosen = ids[select_mini(ids, g.column("specz_redshift").to_numpy(), 2000, seed)]
    splits = assign_splits(chosen, seed)
    share = {s: float(np.mean(splits == s)) for s in ("training", "validation", "testing")}
    # 2,000 draws: one standard deviation is ~0.011 for 0.6, ~0.009 for 0.2
    assert abs(share["training"] - 0.6) < 0.05 and abs(share["validation"] - 0.2) < 0.04, share


@pytest.fixture(scope="module")
def mini_catalog(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("mini") / "cat.csv"
    write_catalog(make_catalog(20_000, seed=4)[0], path)
    return path


def mini_build(catalog: Path, out: Path, n: int, *flags: str) -> tuple[set, dict]:
    run_pipeline(options(["--catalog", str(catalog), "--output", str(out), "--mini_size", str(n), "--cutout_source=none", *flags]))
    kept = pq.read_table(sorted((out / "catalog").glob("kept-*.parquet")))
    return set(kept.column("object_id").to_pylist()), json.loads((out / "summary.json").read_text())


def test_mini_build_in_the_pipeline(mini_catalog, tmp_path):
    full_ids, full = mini_build(mini_catalog, tmp_path / "full", 0, "--runner=FnApiRunner")
    ids_1k, s1 = mini_build(mini_catalog, tmp_path / "a", 1000, "--runner=FnApiRunner")
    ids_1k_mp, _ = mini_build(
        mini_catalog, tmp_path / "b", 1000,
        "--runner=DirectRunner", "--direct_running_mode=multi_processing", "--direct_num_workers=2",
    )
    ids_5k, _ = mini_build(mini_catalog, tmp_path / "c", 5000, "--runner=FnApiRunner")
    assert len(ids_1k) == 1000 and len(ids_5k) == 5000
    assert ids_1k == ids_1k_mp  # same N, same galaxies, on two runners
    assert ids_1k <= ids_5k <= full_ids
    f = s1["funnel"]
    assert f["rejected_by_reason"]["mini_sample"] == len(full_ids) - 1000
    assert f["kept"] + f["rejected"] + f["duplicates"] == f["rows_read"]
    assert s1["run"]["mini_size"] == 1000
    assert abs(f["kept_by_split"]["training"] - 600) < 60 and abs(f["kept_by_split"]["testing"] - 200) < 50, f["kept_by_split"]
    z = pq.read_table(sorted((tmp_path / "full" / "catalog").glob("kept-*.parquet"))).to_pandas()
    assert ks_2samp(z[z.object_id.isin(ids_1k)].specz_redshift, z.specz_redshift).pvalue > 0.01
