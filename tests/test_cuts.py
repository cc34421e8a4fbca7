"""The paper's quality cuts, at and around every bound."""
from __future__ import annotations

import math

import pyarrow as pa
import pytest

from galaxiesml.cuts import PAPER_RULES, apply_cuts
from tests.catalog_rows import row, typed_table


def first_rule(**changes) -> str | None:
    kept, rejected = apply_cuts(typed_table([row(**changes)]).to_batches()[0])
    assert kept.num_rows + rejected.num_rows == 1
    return rejected.column("reason")[0].as_py() if rejected.num_rows else None


@pytest.mark.parametrize(
    "changes, reason",
    [
        ({}, None),
        ({"specz_redshift": 0.01}, "redshift_range"),
        ({"specz_redshift": 0.010001}, None),
        ({"specz_redshift": 4.0}, "redshift_range"),
        ({"specz_redshift": 3.9999, "specz_redshift_err": 0.001}, None),
        ({"specz_redshift": 9.9999}, "redshift_missing"),
        ({"specz_redshift": math.nan}, "redshift_range"),
        ({"specz_redshift": None}, "redshift_range"),
        ({"specz_redshift_err": 0.0}, "redshift_err_range"),
        ({"specz_redshift_err": 1.0}, "redshift_err_range"),
        ({"specz_redshift_err": -0.1}, "redshift_err_range"),
        # z_err < 0.005 (1 + z): at z = 0.5 the bound is 0.0075, strict.
        ({"specz_redshift_err": 0.0075}, "redshift_err_relative"),
        ({"specz_redshift_err": 0.00749}, None),
        ({"specz_flag_homogeneous": False}, "specz_not_homogeneous"),
        ({"specz_flag_homogeneous": None}, "specz_not_homogeneous"),
        ({"g_cmodel_mag": math.nan}, "magnitude_range"),
        ({"y_cmodel_mag": math.inf}, "magnitude_range"),
        ({"r_cmodel_mag": 0.0}, "magnitude_range"),
        ({"i_cmodel_mag": 50.0}, "magnitude_range"),
        ({"z_cmodel_mag": -99.0}, "magnitude_range"),
        ({"z_cmodel_mag": 49.99}, None),
    ],
)
def test_each_bound(changes, reason):
    assert first_rule(**changes) == reason


def test_first_failed_rule_is_the_one_kept():
    # fails the homogeneous flag and the magnitude range: the flag comes first in the paper
    assert first_rule(specz_flag_homogeneous=False, g_cmodel_mag=99.0) == "specz_not_homogeneous"
    assert [r.name for r in PAPER_RULES][0] == "catalog_flags"


def test_section_3_1_flag_columns_apply_when_present():
    table = typed_table([row(object_id=1), row(object_id=2), row(object_id=3)])
    table = table.append_column("g_pixelflags_edge", pa.array([False, True, None]))
    kept, rejected = apply_cuts(table.to_batches()[0])
    assert kept.column("object_id").to_pylist() == [1]
    assert rejected.column("reason").to_pylist() == ["catalog_flags", "catalog_flags"]
    assert "g_pixelflags_edge" not in kept.column_names
