"""The released dataset's rows: every catalog and morphology column plus the image cubes, as Arrow.

Images are nested fixed-size lists (5 x 127 x 127 and the central 5 x 64 x 64 crop, float32, bands
g, r, i, z, y), so pyarrow, pandas, DuckDB, Hugging Face `datasets` and Spark load them without
custom code. `image_flags` holds the flagged pixels, padded (1) and non-finite (2), run-length
encoded along x as (band, y, x, length, flags) structs (pixels x .. x + length - 1 of row y), as
COCO does masks: a padded frame is ~1,200 runs instead of a 5 x 127 x 127 cube of mostly zeros,
which cost the HDF5 consolidation ~70% as much to decode as the image itself (Parquet decodes
nested lists value by value). `cube_numpy` gives back the dense (N, 5, 127, 127) uint8 cubes the
HDF5 files hold. Parquet shards live under <output>/galaxies/<split>/part-*.parquet.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pyarrow as pa

from galaxiesml.cutouts import CROP, SIZE, central_crop
from galaxiesml.morphology import BAND_COLUMNS, COLUMN_DTYPES
from galaxiesml.schema import BANDS, CATALOG_FIELDS, PROVENANCE_FIELDS

GALAXIES_DIR = "galaxies"


def _fixed_list(value_type: pa.DataType, size: int) -> pa.DataType:
    """A fixed-size list of non-null elements (a pixel may be NaN, never missing; non-null levels
    also make Parquet's nesting levels cheaper to decode)."""
    return pa.list_(pa.field("element", value_type, nullable=False), size)


def cube_type(value_type: pa.DataType, size: int, bands: int = len(BANDS)) -> pa.DataType:
    """(bands, size, size) as nested fixed-size lists of non-null elements."""
    return _fixed_list(_fixed_list(_fixed_list(value_type, size), size), bands)


#: One run of `image_flags`: pixels x .. x + length - 1 of row y of a band, all with these flags.
FLAG_RUN = pa.struct(
    [
        pa.field(name, t, nullable=False)
        for name, t in (("band", pa.uint8()), ("y", pa.uint16()), ("x", pa.uint16()), ("length", pa.uint16()), ("flags", pa.uint8()))
    ]
)
FLAGS_TYPE = pa.list_(pa.field("element", FLAG_RUN, nullable=False))


def morphology_fields(bands: Sequence[str] = BANDS) -> list[pa.Field]:
    types = {np.float64: pa.float64(), np.bool_: pa.bool_()}
    return [pa.field(f"{b}_{c}", types[COLUMN_DTYPES[c]]) for b in bands for c in BAND_COLUMNS]


GALAXY_SCHEMA = pa.schema(
    [
        *CATALOG_FIELDS,
        *PROVENANCE_FIELDS,
        pa.field("split", pa.string()),
        pa.field("filters", pa.list_(pa.string(), len(BANDS))),
        *morphology_fields(),
        pa.field("image", cube_type(pa.float32(), SIZE)),
        pa.field("image_64", cube_type(pa.float32(), CROP)),
        pa.field("image_flags", FLAGS_TYPE, nullable=False),
    ]
)
TABULAR_COLUMNS: tuple[str, ...] = tuple(
    f.name for f in GALAXY_SCHEMA if f.name not in ("image", "image_64", "image_flags")
)
#: The HSC planes kept beside the image when asked for (--cutout_planes), on the same 127 grid.
PLANE_FIELDS = {
    "hsc_mask": pa.field("hsc_mask", cube_type(pa.int32(), SIZE)),
    "variance": pa.field("variance", cube_type(pa.float32(), SIZE)),
}


def numpy_dtype(t: pa.DataType) -> np.dtype:
    """The numpy dtype of an Arrow primitive type (pyarrow's own `to_pandas_dtype` needs pandas,
    which the job does not install)."""
    return pa.array([], type=t).to_numpy(zero_copy_only=False).dtype


def cube_array(cubes: np.ndarray, value_type: pa.DataType) -> pa.Array:
    """(N, B, S, S) numpy -> Arrow nested fixed-size lists (cube_type), without copying the pixels twice."""
    n, b, s, _ = cubes.shape
    array: pa.Array = pa.array(np.ascontiguousarray(cubes, dtype=numpy_dtype(value_type)).ravel(), value_type)
    for k in (s, s, b):
        array = pa.FixedSizeListArray.from_arrays(array, type=_fixed_list(array.type, k))
    return array


#: Pixel columns: noise-dominated floats that neither a dictionary nor snappy shrinks; both only slow
#: every reader down (the HDF5 consolidation ~2x), so these are stored plain and uncompressed.
PIXEL_COLUMNS = ("image", "image_64", "variance")


def _leaf_paths(path: str, t: pa.DataType) -> list[str]:
    """The Parquet column paths of a field's values, e.g. image.list.element.list.element.list.element."""
    if pa.types.is_list(t) or pa.types.is_fixed_size_list(t):
        return _leaf_paths(path + ".list.element", t.value_type)
    if pa.types.is_struct(t):
        return [leaf for f in t for leaf in _leaf_paths(f"{path}.{f.name}", f.type)]
    return [path]


def parquet_options(schema: pa.Schema) -> dict:
    """pq.write_table / pq.ParquetWriter options for galaxy shards: PIXEL_COLUMNS plain and
    uncompressed, everything else dictionary-encoded where it pays and snappy-compressed."""
    plain = {leaf: f.name in PIXEL_COLUMNS for f in schema for leaf in _leaf_paths(f.name, f.type)}
    return {
        "compression": {leaf: "none" if is_pixel else "snappy" for leaf, is_pixel in plain.items()},
        "use_dictionary": [leaf for leaf, is_pixel in plain.items() if not is_pixel],
    }


def flags_array(flags: np.ndarray) -> pa.Array:
    """(N, B, S, S) uint8 flag cubes -> `image_flags` (FLAGS_TYPE): each galaxy's runs of equal,
    non-zero flags along x, in (band, y, x) order."""
    n, _, _, s = flags.shape
    framed = np.zeros((*flags.shape[:3], s + 2), np.uint8)  # a zero before and after every row
    framed[..., 1:-1] = flags
    galaxy, band, y, x = np.nonzero(framed[..., 1:] != framed[..., :-1])  # where a run (flagged or not) starts
    value = framed[galaxy, band, y, x + 1]
    length = np.diff(x, append=x[-1:])  # a flagged run ends where the row's next change is
    keep = value != 0
    galaxy, band, y, x, length, value = galaxy[keep], band[keep], y[keep], x[keep], length[keep], value[keep]
    offsets = np.searchsorted(galaxy, np.arange(n + 1)).astype(np.int32)
    columns = [band.astype(np.uint8), y.astype(np.uint16), x.astype(np.uint16), length.astype(np.uint16), value]
    runs = pa.StructArray.from_arrays([pa.array(c) for c in columns], fields=list(FLAG_RUN))
    return pa.ListArray.from_arrays(pa.array(offsets), runs, type=FLAGS_TYPE)


def flag_cubes(column: pa.ListArray, size: int = SIZE) -> np.ndarray:
    """`image_flags` -> (N, B, size, size) uint8 cubes: the central size x size pixels of the
    127 x 127 flags, as central_crop takes them (the runs are clipped, not a full cube cropped)."""
    cubes = np.zeros((len(column), len(BANDS), size, size), np.uint8)
    offsets = column.offsets.to_numpy()
    galaxy = np.repeat(np.arange(len(column)), np.diff(offsets))
    runs = column.values.slice(offsets[0], offsets[-1] - offsets[0]).flatten()
    band, y, x, length, value = (r.to_numpy().astype(np.int64) for r in runs)
    start = SIZE // 2 - size // 2
    y, first, last = y - start, np.maximum(x - start, 0), np.minimum(x + length - start, size)
    keep = (y >= 0) & (y < size) & (last > first)
    galaxy, band, y, first, value, length = galaxy[keep], band[keep], y[keep], first[keep], value[keep], (last - first)[keep]
    begin = ((galaxy * len(BANDS) + band) * size + y) * size + first
    within = np.arange(length.sum()) - np.repeat(np.cumsum(length) - length, length)
    cubes.reshape(-1)[np.repeat(begin, length) + within] = np.repeat(value, length)
    return cubes


def cube_numpy(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """An image cube column (nested fixed-size lists, or `image_flags`) -> (N, B, S, S) numpy."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if column.type == FLAGS_TYPE:
        return flag_cubes(column)
    b = column.type.list_size
    s = column.type.value_type.list_size
    flat = column.flatten().flatten().flatten().to_numpy(zero_copy_only=False)
    return flat.reshape(len(column), b, s, s)


def records_to_table(records: Sequence[dict]) -> pa.Table:
    """Galaxy records ({"row", "image", "flags", "filters", "morphology"}, and "hsc_mask" and
    "variance" when those planes were kept) -> GALAXY_SCHEMA (+ PLANE_FIELDS)."""
    columns: dict[str, list] = {name: [] for name in TABULAR_COLUMNS}
    for r in records:
        values = {**r["row"], **r.get("morphology", {}), "filters": list(r["filters"])}
        for name in TABULAR_COLUMNS:
            columns[name].append(values.get(name))
    images = np.stack([r["image"] for r in records]) if records else np.zeros((0, len(BANDS), SIZE, SIZE), np.float32)
    flags = np.stack([r["flags"] for r in records]) if records else np.zeros((0, len(BANDS), SIZE, SIZE), np.uint8)
    arrays = [pa.array(columns[f.name], f.type) for f in GALAXY_SCHEMA if f.name in columns]
    arrays += [
        cube_array(images, pa.float32()),
        cube_array(central_crop(images), pa.float32()),
        flags_array(flags),
    ]
    schema = GALAXY_SCHEMA
    for key, plane in PLANE_FIELDS.items():
        if records and key in records[0]:
            arrays.append(cube_array(np.stack([r[key] for r in records]), plane.type.value_type.value_type.value_type))
            schema = schema.append(plane)
    return pa.Table.from_arrays(arrays, schema=schema)

