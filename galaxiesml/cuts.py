"""The paper's quality cuts (sections 3.1-3.2), vectorised over an Arrow batch.

Rules are checked in the paper's order and each rejected row keeps the first rule it failed.
z = 9.9999 (the archive's "no redshift" value) is checked before the redshift range, which
would otherwise always claim it first and hide it from the funnel.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from galaxiesml.catalog import rejects_table
from galaxiesml.schema import BANDS, CATALOG_SCHEMA, FLAG_COLUMNS

NO_REDSHIFT = 9.9999


@dataclass(frozen=True)
class Rule:
    """One cut: `passes` maps column arrays to a boolean mask of rows that survive it."""

    name: str
    description: str
    passes: Callable[[dict[str, np.ndarray]], np.ndarray]


def _flags_clear(cols: dict[str, np.ndarray]) -> np.ndarray:
    ok = np.ones(len(cols["specz_redshift"]), bool)
    for flag in FLAG_COLUMNS:
        if flag in cols:
            ok &= cols[flag] == 0  # null flags count as set: nothing certifies the row
    return ok


def _mags_in_range(cols: dict[str, np.ndarray]) -> np.ndarray:
    ok = np.ones(len(cols["specz_redshift"]), bool)
    for band in BANDS:
        mag = cols[f"{band}_cmodel_mag"]
        ok &= (mag > 0) & (mag < 50)
    return ok


PAPER_RULES: tuple[Rule, ...] = (
    Rule("catalog_flags", "no section 3.1 pixel/centroid/cmodel flag set (where present)", _flags_clear),
    Rule("redshift_missing", f"z != {NO_REDSHIFT}", lambda c: c["specz_redshift"] != NO_REDSHIFT),
    Rule(
        "redshift_err_range",
        "0 < z_err < 1",
        lambda c: (c["specz_redshift_err"] > 0) & (c["specz_redshift_err"] < 1),
    ),
    Rule("specz_not_homogeneous", "specz_flag_homogeneous is true", lambda c: c["specz_flag_homogeneous"] == 1),
    Rule(
        "redshift_range", "0.01 < z < 4", lambda c: (c["specz_redshift"] > 0.01) & (c["specz_redshift"] < 4)
    ),
    Rule(
        "redshift_err_relative",
        "z_err < 0.005 (1 + z)",
        lambda c: c["specz_redshift_err"] < 0.005 * (1 + c["specz_redshift"]),
    ),
    Rule("magnitude_range", "0 < mag < 50 in g, r, i, z, y", _mags_in_range),
)


def _column_values(batch: pa.RecordBatch | pa.Table) -> dict[str, np.ndarray]:
    """Float columns with null -> NaN, booleans as 0/1/-1 (null), for the rule functions."""
    cols = {}
    for name in batch.schema.names:
        col = batch.column(name)
        if pa.types.is_floating(col.type):
            cols[name] = np.asarray(pc.fill_null(col, np.nan), dtype=np.float64)
        elif pa.types.is_boolean(col.type):
            cols[name] = np.asarray(pc.fill_null(pc.cast(col, pa.int8()), -1), dtype=np.int8)
    return cols


def apply_cuts(
    batch: pa.RecordBatch, rules: tuple[Rule, ...] = PAPER_RULES
) -> tuple[pa.Table, pa.Table]:
    """Split a typed batch into (kept rows in CATALOG_SCHEMA, rejected rows with the first rule failed)."""
    table = pa.Table.from_batches([batch])
    cols = _column_values(table)
    n = table.num_rows
    first_failed = np.full(n, -1, dtype=np.int64)
    for i, rule in enumerate(rules):
        with np.errstate(invalid="ignore"):
            failed = ~np.asarray(rule.passes(cols), dtype=bool)
        first_failed[(first_failed < 0) & failed] = i
    kept = table.filter(pa.array(first_failed < 0)).select(CATALOG_SCHEMA.names)
    idx = np.flatnonzero(first_failed >= 0)
    rejected = rejects_table(
        table.take(pa.array(idx, pa.int64())),
        [rules[i].name for i in first_failed[idx]],
        [rules[i].description for i in first_failed[idx]],
    )
    return kept, rejected
