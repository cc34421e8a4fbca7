"""Parquet shards of GALAXY_SCHEMA rows, as the pipeline writes them: random images, unsorted unique
ids, every split in several shards under <root>/galaxies/<split>/part-*.parquet."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from galaxiesml.cutouts import NONFINITE, PADDED, SIZE
from galaxiesml.dataset import GALAXIES_DIR, parquet_options, records_to_table
from galaxiesml.morphology import COLUMN_DTYPES, BAND_COLUMNS
from galaxiesml.schema import BANDS

FILTERS = ("HSC-G", "HSC-R", "HSC-I", "HSC-Z", "HSC-Y")
#: ~64 MB row groups, as WriteToParquet's default row_group_buffer_size gives.
ROW_GROUP_ROWS = 128


def records(ids: np.ndarray, split: str, rng: np.random.Generator) -> list[dict]:
    """Galaxy records for `ids` with random finite images; one in ten has a padded strip, one in
    thirteen a few non-finite pixels (as real cutouts: most have no flagged pixel)."""
    out = []
    for k, object_id in enumerate(ids.tolist()):
        image = rng.normal(0, 1, (len(BANDS), SIZE, SIZE)).astype(np.float32)
        flags = np.zeros((len(BANDS), SIZE, SIZE), np.uint8)
        if k % 10 == 3:  # at a survey edge: a strip padded in every band
            flags[:, :, : rng.integers(1, 40)] = PADDED
        if k % 13 == 5:  # a few masked pixels in one band
            flags[rng.integers(0, len(BANDS)), rng.integers(0, SIZE, 5), rng.integers(0, SIZE, 5)] |= NONFINITE
        morphology = {
            f"{b}_{c}": (bool(rng.random() < 0.1) if COLUMN_DTYPES[c] is np.bool_ else float(rng.gamma(2, 3)))
            for b in BANDS
            for c in BAND_COLUMNS
        }
        row = {
            "object_id": object_id,
            "specz_redshift_err": float(rng.random() * 1e-3),
            "specz_redshift": float(rng.uniform(0.01, 4)),
            "specz_mag_i": float(rng.uniform(17, 25)),
            "specz_name": f"SPEC-{object_id % 100000}-{'é' if k % 7 == 0 else 'x' * (k % 5)}",
            "specz_ra": float(rng.uniform(149, 151)),
            "specz_dec": float(rng.uniform(1, 3)),
            "specz_flag_homogeneous": True,
            "ra": float(rng.uniform(149, 151)),
            "dec": float(rng.uniform(1, 3)),
            "coord": f"({rng.uniform(149, 151):.6f},{rng.uniform(1, 3):.6f})",
            "skymap_id": int(rng.integers(0, 10**9)) if k % 11 else None,
            **{f"{b}_cmodel_mag": float(rng.uniform(18, 26)) for b in BANDS},
            **{f"{b}_cmodel_magsigma": float(rng.uniform(0.001, 0.2)) for b in BANDS},
            "source": "catalog.csv",
            "line": int(object_id % 1000003),
            "split": split,
        }
        filters = FILTERS if k % 9 else ("HSC-G", "HSC-R2", "HSC-I2", "HSC-Z", "HSC-Y")
        out.append({"row": row, "image": image, "flags": flags, "filters": filters, "morphology": morphology})
    return out


def write_shards(root: Path, counts: dict[str, int], shards: int = 3, seed: int = 0) -> dict[str, list[str]]:
    """`counts[split]` galaxies per split, each split in `shards` Parquet files; ids are random
    unique 17-digit numbers (unsorted within and across shards). Returns the paths per split."""
    rng = np.random.default_rng(seed)
    total = sum(counts.values())
    ids = rng.choice(np.arange(36_000_000_000_000_000, 36_000_000_000_000_000 + 50 * total), total, replace=False)
    paths: dict[str, list[str]] = {}
    start = 0
    for split, n in counts.items():
        folder = root / GALAXIES_DIR / split
        folder.mkdir(parents=True, exist_ok=True)
        paths[split] = []
        for k, part in enumerate(np.array_split(ids[start : start + n], shards)):
            path = folder / f"part-{k:05d}-of-{shards:05d}.parquet"
            for g, group in enumerate(np.array_split(part, max(1, -(-len(part) // ROW_GROUP_ROWS)))):
                table = records_to_table(records(group, split, rng))
                if g == 0:
                    writer = pq.ParquetWriter(path, table.schema, **parquet_options(table.schema))
                writer.write_table(table, row_group_size=ROW_GROUP_ROWS)
            writer.close()
            paths[split].append(str(path))
        start += n
    return paths
