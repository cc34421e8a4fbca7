"""A synthetic HSC PDR2 catalog: what the paper's Appendix A query returns, at any size.

Unique galaxies get redshifts peaking near z = 1.5, magnitudes that fade with redshift, colours
set by the 4000 A break moving through g, r, i, z, y (so a photo-z model has something to learn),
and errors from the HSC Wide depths. Catalog rows repeat them in the paper's two duplicate
patterns (one spectrum matched to several object ids; one object matched to several spectra),
and a share of rows is made to fail each quality cut. Everything is deterministic from the seed.
"""
from __future__ import annotations

import argparse
import gzip
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from galaxiesml.schema import BANDS, CATALOG_FIELDS

#: HSC Wide 5-sigma point-source depths (g, r, i, z, y), PDR2.
WIDE_DEPTH = dict(zip(BANDS, (26.5, 26.1, 25.9, 25.1, 24.4)))
#: Effective wavelengths of the HSC filters in Angstrom.
BAND_WAVELENGTH = dict(zip(BANDS, (4754.0, 6175.0, 7711.0, 8898.0, 9762.0)))
SURVEYS = ("SDSS-DR15", "DEEP3", "VVDS", "PRIMUS", "GAMA-DR3", "zCOSMOS", "VIPERS", "UDSz")

#: Share of unique sources made to fail each cut, in the order of galaxiesml.cuts.PAPER_RULES.
CUT_FAILURES = {
    "redshift_missing": 0.01,
    "redshift_err_range": 0.01,
    "specz_not_homogeneous": 0.03,
    "redshift_range": 0.02,
    "redshift_err_relative": 0.02,
    "magnitude_range": 0.01,
}


@dataclass(frozen=True)
class Region:
    """An RA/Dec box in degrees."""

    ra_min: float = 149.0
    ra_max: float = 151.0
    dec_min: float = 1.0
    dec_max: float = 3.0


def redshifts(rng: np.random.Generator, n: int) -> np.ndarray:
    """Spectroscopic redshifts: a low-z population and a main one peaking near 1.5, to z < 4."""
    low = rng.gamma(2.0, 0.2, n) + 0.02
    main = rng.normal(1.5, 0.45, n)
    z = np.where(rng.random(n) < 0.3, low, main)
    bad = (z <= 0.02) | (z >= 3.9)
    while bad.any():
        z[bad] = rng.normal(1.5, 0.45, bad.sum())
        bad = (z <= 0.02) | (z >= 3.9)
    return z


def magnitudes(rng: np.random.Generator, z: np.ndarray) -> dict[str, np.ndarray]:
    """True AB magnitudes per band: an i-band brightness falling with distance, and colours from a
    red fraction and the 4000 A break, which sits blueward of a band until (1+z) 4000 A passes it."""
    n = len(z)
    i_mag = 19.0 + 5.0 * np.log10(1.0 + 2.2 * z) + rng.normal(0.0, 0.6, n)
    redness = rng.beta(2.0, 2.0, n)
    break_amp = 0.4 + 1.4 * redness
    slope = 0.15 + 0.25 * redness
    mags = {}
    for band in BANDS:
        lam = BAND_WAVELENGTH[band]
        blueward = 1.0 / (1.0 + np.exp((lam - 4000.0 * (1.0 + z)) / 250.0))
        cont = slope * (BAND_WAVELENGTH["i"] - lam) / 3000.0
        mags[band] = i_mag + break_amp * blueward + cont
    shift = mags["i"] - i_mag
    return {b: np.minimum(m - shift, 27.5) for b, m in mags.items()}


def mag_errors(mags: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """1-sigma magnitude errors of HSC Wide photometry for these magnitudes (floor 0.003)."""
    errs = {}
    for band, m in mags.items():
        snr = 5.0 * 10 ** (-0.4 * (m - WIDE_DEPTH[band]))
        errs[band] = np.hypot(1.0857 / snr, 0.003)
    return errs


def skymap_ids(ra: np.ndarray, dec: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(tract, skymap_id) in the HSC style tract*10000 + patch_x*100 + patch_y, on a simple grid
    of 1.7-degree tracts split into 9 x 9 patches."""
    tx = np.floor(ra / 1.7).astype(np.int64)
    ty = np.floor((dec + 90.0) / 1.7).astype(np.int64)
    tract = 9000 + (tx * 107 + ty) % 1000
    px = np.floor((ra / 1.7 - tx) * 9).astype(np.int64)
    py = np.floor(((dec + 90.0) / 1.7 - ty) * 9).astype(np.int64)
    return tract, tract * 10000 + px * 100 + py


def make_galaxies(n: int, seed: int = 0, region: Region = Region()) -> pa.Table:
    """`n` unique galaxies with every catalog column (one row each, no duplicates, no cut failures)."""
    rng = np.random.default_rng([seed, 1])
    ra = rng.uniform(region.ra_min, region.ra_max, n)
    sin_dec = rng.uniform(np.sin(np.radians(region.dec_min)), np.sin(np.radians(region.dec_max)), n)
    dec = np.degrees(np.arcsin(sin_dec))
    z = redshifts(rng, n)
    true = magnitudes(rng, z)
    errs = mag_errors(true)
    tract, skymap = skymap_ids(ra, dec)
    object_id = (tract << 42) + (np.arange(n, dtype=np.int64) + 1) * 7 + rng.integers(0, 7, n)
    survey = rng.integers(0, len(SURVEYS), n)
    names = [f"{SURVEYS[s]}-{seed % 1000:03d}{i:09d}" for i, s in enumerate(survey)]
    offset = rng.normal(0, 0.1 / 3600, (2, n))
    cols = {
        "object_id": object_id,
        "specz_redshift_err": np.exp(rng.normal(np.log(2e-4), 0.6, n)) * (1 + z),
        "specz_redshift": np.round(z, 5),
        "specz_mag_i": np.round(true["i"] + rng.normal(0, 0.05, n), 3),
        "specz_name": names,
        "specz_ra": ra + offset[0],
        "specz_dec": dec + offset[1],
        "specz_flag_homogeneous": np.ones(n, bool),
        "ra": ra,
        "dec": dec,
        "coord": _coord_strings(ra, dec),
        "skymap_id": skymap,
    }
    for b in BANDS:
        cols[f"{b}_cmodel_mag"] = np.round(true[b] + rng.normal(0, 1, n) * errs[b], 4)
    for b in BANDS:
        cols[f"{b}_cmodel_magsigma"] = np.round(errs[b], 5)
    return pa.table(cols, schema=pa.schema(CATALOG_FIELDS))


def _coord_strings(ra: np.ndarray, dec: np.ndarray) -> list[str]:
    r, d = np.radians(ra), np.radians(dec)
    xyz = np.stack([np.cos(d) * np.cos(r), np.cos(d) * np.sin(r), np.sin(d)], axis=1)
    return [f"({x:.9f},{y:.9f},{w:.9f})" for x, y, w in xyz]


def make_catalog(
    n_rows: int, seed: int = 0, region: Region = Region(), duplicate_share: float = 0.64
) -> tuple[pa.Table, pa.Table]:
    """(catalog rows in export order, the unique galaxies behind them).

    About `duplicate_share` of the rows repeat a galaxy: 80% of repeats keep the spectrum and get a
    new object id (pattern 1, a source measured twice), 20% keep the object id and get another
    spectrum name (pattern 2). Some galaxies are altered to fail each cut (CUT_FAILURES)."""
    rng = np.random.default_rng([seed, 2])
    n_unique = max(1, int(round(n_rows * (1 - duplicate_share))))
    galaxies = make_galaxies(n_unique, seed, region)
    galaxies = _spoil_for_cuts(galaxies, rng)
    n_dup = n_rows - n_unique
    parent = rng.integers(0, n_unique, n_dup)
    dups = galaxies.take(pa.array(parent))
    pattern2 = rng.random(n_dup) < 0.2
    names = np.asarray(dups.column("specz_name").to_pylist(), dtype=object)
    for i in np.flatnonzero(pattern2):
        names[i] = f"{names[i]}-m{i}"
    ids = dups.column("object_id").to_numpy().copy()
    k = np.arange(n_dup, dtype=np.int64)
    ids[~pattern2] += (np.int64(1) << np.int64(32)) * (1 + k[~pattern2] % 7) + k[~pattern2]
    dups = dups.set_column(dups.schema.get_field_index("specz_name"), "specz_name", pa.array(names, pa.string()))
    dups = dups.set_column(dups.schema.get_field_index("object_id"), "object_id", pa.array(ids))
    for b in BANDS:
        col = f"{b}_cmodel_mag"
        jitter = np.where(pattern2, 0.0, np.round(rng.normal(0, 0.02, n_dup), 4))
        mags = dups.column(col).to_numpy(zero_copy_only=False) + jitter
        dups = dups.set_column(dups.schema.get_field_index(col), col, pa.array(np.round(mags, 4)))
    rows = pa.concat_tables([galaxies, dups])
    order = rng.permutation(rows.num_rows)
    return rows.take(pa.array(order)), galaxies


def _spoil_for_cuts(galaxies: pa.Table, rng: np.random.Generator) -> pa.Table:
    cols = galaxies.to_pydict()
    n = galaxies.num_rows
    chosen = rng.permutation(n)
    at = 0
    for rule, share in CUT_FAILURES.items():
        k = int(round(share * n))
        for i in chosen[at : at + k]:
            z = cols["specz_redshift"][i]
            if rule == "redshift_missing":
                cols["specz_redshift"][i] = 9.9999
            elif rule == "redshift_err_range":
                cols["specz_redshift_err"][i] = float(rng.choice([-1.0, 0.0, 1.5]))
            elif rule == "specz_not_homogeneous":
                cols["specz_flag_homogeneous"][i] = False
            elif rule == "redshift_range":
                cols["specz_redshift"][i] = float(rng.choice([0.005, 4.3, 5.1]))
            elif rule == "redshift_err_relative":
                cols["specz_redshift_err"][i] = 0.0051 * (1 + z) + 0.01 * rng.random()
            elif rule == "magnitude_range":
                band = BANDS[int(rng.integers(0, 5))]
                cols[f"{band}_cmodel_mag"][i] = float(rng.choice([99.0, -99.0, np.nan, 0.0]))
        at += k
    return pa.table(cols, schema=galaxies.schema)


def hsc_csv_bytes(table: pa.Table, sql: str | None = None) -> bytes:
    """`table` as the HSC catalog service exports CSV: '#' metadata lines, then a header row
    that itself starts with '# ', then the rows."""
    out = io.BytesIO()
    out.write(b"# HSC-SSP PDR2 catalog job (synthetic)\n# release_version: pdr2\n")
    if sql:
        for line in sql.strip().splitlines():
            out.write(f"#   {line}\n".encode())
    out.write(("# " + ",".join(table.column_names) + "\n").encode())
    pacsv.write_csv(table, out, pacsv.WriteOptions(include_header=False))
    return out.getvalue()


def write_catalog(table: pa.Table, path: str | Path) -> Path:
    """Write the catalog in the HSC export format; gzip'd when the name ends in .gz."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = hsc_csv_bytes(table)
    if path.suffix == ".gz":
        with gzip.open(path, "wb", compresslevel=3) as f:
            f.write(data)
    else:
        path.write_bytes(data)
    return path


def main(argv: list[str] | None = None) -> int:
    """Command line: write a synthetic HSC export CSV."""
    parser = argparse.ArgumentParser(
        prog="python -m pipeline generate-catalog",
        description="Write a synthetic HSC PDR2 catalog export (CSV, gzip'd if the name ends in .gz).",
    )
    parser.add_argument("--rows", type=int, default=20000, help="number of catalog rows")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shards", type=int, default=1, help="split the rows over this many files")
    parser.add_argument("--out", required=True, help="output file (with --shards > 1, a prefix)")
    args = parser.parse_args(argv)
    rows, galaxies = make_catalog(args.rows, args.seed)
    if args.shards == 1:
        paths = [write_catalog(rows, args.out)]
    else:
        per = -(-rows.num_rows // args.shards)
        suffix = ".csv.gz" if args.out.endswith(".gz") else ".csv"
        base = args.out.removesuffix(".gz").removesuffix(".csv")
        paths = [
            write_catalog(rows.slice(k * per, per), f"{base}-{k:05d}-of-{args.shards:05d}{suffix}")
            for k in range(args.shards)
        ]
    print(f"wrote {rows.num_rows} rows ({galaxies.num_rows} unique sources) to {len(paths)} file(s):")
    for p in paths:
        print(f"  {p}")
    return 0
