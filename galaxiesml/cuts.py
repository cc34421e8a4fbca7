"""The paper's quality cuts (sections 3.1-3.2), and the extra cuts users may add on top, vectorised
over an Arrow batch.

Rules are checked in the paper's order and each rejected row keeps the first rule it failed; extra
cuts come after the paper's, so they can only remove more rows, never bring one back.
z = 9.9999 (the archive's "no redshift" value) is checked before the redshift range, which
would otherwise always claim it first and hide it from the funnel.
"""
from __future__ import annotations

from dataclasses import dataclass, field
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


@dataclass(frozen=True)
class SampleCuts:
    """Extra cuts a user chooses on top of the paper's; each becomes its own rejection reason."""

    max_mag: dict[str, float] = field(default_factory=dict)  # band -> keep mag < limit
    max_magsigma: dict[str, float] = field(default_factory=dict)  # band -> keep magsigma < limit
    redshift_window: tuple[float, float] | None = None  # keep lo < z < hi
    sky_box: tuple[float, float, float, float] | None = None  # ra_min, ra_max, dec_min, dec_max
    tracts: tuple[int, ...] = ()  # keep skymap_id // 10000 in these
    require_true: tuple[str, ...] = ()  # boolean catalog columns that must be true

    def rules(self) -> tuple[Rule, ...]:
        """The extra cuts as rules, in a fixed order."""
        rules: list[Rule] = []
        for band, limit in sorted(self.max_mag.items()):
            col = f"{band}_cmodel_mag"
            rules.append(Rule(f"mag_limit_{band}", f"{col} < {limit}", _below(col, limit)))
        for band, limit in sorted(self.max_magsigma.items()):
            col = f"{band}_cmodel_magsigma"
            rules.append(Rule(f"magsigma_limit_{band}", f"{col} < {limit}", _below(col, limit)))
        if self.redshift_window:
            lo, hi = self.redshift_window
            rules.append(
                Rule(
                    "redshift_window",
                    f"{lo} < z < {hi}",
                    lambda c: (c["specz_redshift"] > lo) & (c["specz_redshift"] < hi),
                )
            )
        if self.sky_box:
            r0, r1, d0, d1 = self.sky_box
            rules.append(
                Rule(
                    "sky_box",
                    f"{r0} <= ra <= {r1} and {d0} <= dec <= {d1}",
                    lambda c: (c["ra"] >= r0) & (c["ra"] <= r1) & (c["dec"] >= d0) & (c["dec"] <= d1),
                )
            )
        if self.tracts:
            tracts = np.asarray(self.tracts, dtype=np.int64)
            rules.append(
                Rule(
                    "tracts",
                    f"tract in {list(self.tracts)}",
                    lambda c: np.isin(c["skymap_id"] // 10000, tracts),
                )
            )
        for col in self.require_true:
            rules.append(Rule(f"require_{col}", f"{col} is true", lambda c, col=col: c[col] == 1))
        return tuple(rules)


def _below(column: str, limit: float) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
    return lambda c: c[column] < limit


def _column_values(batch: pa.RecordBatch | pa.Table) -> dict[str, np.ndarray]:
    """Float columns with null -> NaN, booleans as 0/1/-1 (null), for the rule functions."""
    cols = {}
    for name in batch.schema.names:
        col = batch.column(name)
        if pa.types.is_floating(col.type):
            cols[name] = np.asarray(pc.fill_null(col, np.nan), dtype=np.float64)
        elif pa.types.is_boolean(col.type):
            cols[name] = np.asarray(pc.fill_null(pc.cast(col, pa.int8()), -1), dtype=np.int8)
        elif pa.types.is_integer(col.type):
            cols[name] = np.asarray(pc.fill_null(col, -1), dtype=np.int64)
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
