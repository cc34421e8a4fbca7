"""Column names and Arrow types of the catalog, as the paper's Appendix A query returns them."""
from __future__ import annotations

import pyarrow as pa

BANDS: tuple[str, ...] = ("g", "r", "i", "z", "y")

#: Appendix A SELECT list, in its order, with the type each column is parsed to.
CATALOG_FIELDS: tuple[pa.Field, ...] = (
    pa.field("object_id", pa.int64()),
    pa.field("specz_redshift_err", pa.float64()),
    pa.field("specz_redshift", pa.float64()),
    pa.field("specz_mag_i", pa.float64()),
    pa.field("specz_name", pa.string()),
    pa.field("specz_ra", pa.float64()),
    pa.field("specz_dec", pa.float64()),
    pa.field("specz_flag_homogeneous", pa.bool_()),
    pa.field("ra", pa.float64()),
    pa.field("dec", pa.float64()),
    pa.field("coord", pa.string()),
    pa.field("skymap_id", pa.int64()),
    *(pa.field(f"{b}_cmodel_mag", pa.float64()) for b in BANDS),
    *(pa.field(f"{b}_cmodel_magsigma", pa.float64()) for b in BANDS),
)

#: Columns without which a row cannot be cut, deduplicated or imaged; a file lacking one is an error.
REQUIRED_COLUMNS: tuple[str, ...] = (
    "object_id",
    "specz_redshift_err",
    "specz_redshift",
    "specz_name",
    "specz_flag_homogeneous",
    "ra",
    "dec",
    *(f"{b}_cmodel_mag" for b in BANDS),
)

#: Section 3.1 flag columns: applied as cuts when a catalog carries them (the Appendix A query
#: already applied them in the database, so an export of it usually does not).
FLAG_COLUMNS: tuple[str, ...] = tuple(
    f"{b}_{flag}"
    for flag in (
        "cmodel_flag",
        "pixelflags_edge",
        "pixelflags_interpolatedcenter",
        "pixelflags_saturatedcenter",
        "pixelflags_crcenter",
        "pixelflags_bad",
        "sdsscentroid_flag",
    )
    for b in BANDS
)

#: Where each row came from: the catalog file and the 1-based line (text) or row (table) in it.
PROVENANCE_FIELDS: tuple[pa.Field, ...] = (
    pa.field("source", pa.string()),
    pa.field("line", pa.int64()),
)

CATALOG_SCHEMA = pa.schema([*CATALOG_FIELDS, *PROVENANCE_FIELDS])
KEPT_SCHEMA = CATALOG_SCHEMA.append(pa.field("split", pa.string()))

#: A rejected row keeps every column that could be typed (null where a value was bad), the rule it
#: failed, and for rows that could not be parsed the original values as text (`raw`).
REJECTED_SCHEMA = CATALOG_SCHEMA.append(pa.field("reason", pa.string())).append(
    pa.field("detail", pa.string())
).append(pa.field("raw", pa.string()))

DUPLICATE_SCHEMA = pa.schema(
    [
        *PROVENANCE_FIELDS,
        pa.field("object_id", pa.int64()),
        pa.field("specz_name", pa.string()),
        pa.field("duplicate_key", pa.string()),
        pa.field("kept_source", pa.string()),
        pa.field("kept_line", pa.int64()),
        pa.field("kept_object_id", pa.int64()),
    ]
)

SPLITS: tuple[str, ...] = ("training", "validation", "testing")


def appendix_a_sql() -> str:
    """The paper's Appendix A catalog query, as kept in galaxiesml/sql/."""
    from importlib.resources import files

    return files("galaxiesml").joinpath("sql/appendix_a_pdr2.sql").read_text()

#: A galaxy kept by the catalog stages that a later stage could not complete.
FAILED_SCHEMA = pa.schema(
    [
        *PROVENANCE_FIELDS,
        pa.field("object_id", pa.int64()),
        pa.field("specz_name", pa.string()),
        pa.field("stage", pa.string()),
        pa.field("reason", pa.string()),
        pa.field("detail", pa.string()),
    ]
)
