"""Hand-made catalog rows for unit tests: one valid row, and variants of it."""
from __future__ import annotations

import pyarrow as pa

from galaxiesml.schema import BANDS, CATALOG_FIELDS

HEADER = [f.name for f in CATALOG_FIELDS]

GOOD = {
    "object_id": 36416246018753893,
    "specz_redshift_err": 0.0002,
    "specz_redshift": 0.5,
    "specz_mag_i": 20.1,
    "specz_name": "SDSS-1",
    "specz_ra": 150.2479,
    "specz_dec": 2.2314,
    "specz_flag_homogeneous": True,
    "ra": 150.2479,
    "dec": 2.2314,
    "coord": "(0.1,0.2,0.3)",
    "skymap_id": 98130304,
    **{f"{b}_cmodel_mag": 21.0 for b in BANDS},
    **{f"{b}_cmodel_magsigma": 0.01 for b in BANDS},
}


def row(**changes) -> dict:
    """GOOD with some columns changed."""
    return {**GOOD, **changes}


def csv_line(values: dict) -> str:
    """One CSV line of `values` in HEADER order (strings quoted when they hold commas)."""
    out = []
    for name in HEADER:
        v = values[name]
        text = "true" if v is True else "false" if v is False else str(v)
        out.append(f'"{text}"' if "," in text else text)
    return ",".join(out)


def typed_table(rows: list[dict], lines: list[int] | None = None, source: str = "cat.csv") -> pa.Table:
    """Rows typed to CATALOG_SCHEMA with provenance columns."""
    table = pa.Table.from_pylist(rows, schema=pa.schema(CATALOG_FIELDS))
    lines = lines or list(range(1, len(rows) + 1))
    return table.append_column("source", pa.array([source] * len(rows))).append_column(
        "line", pa.array(lines, pa.int64())
    )
