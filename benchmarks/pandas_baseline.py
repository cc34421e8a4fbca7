"""The plain pandas pass the catalog stage is measured against: read the HSC export, apply the
paper's cuts, drop duplicates by specz_name then object_id, write Parquet."""
from __future__ import annotations

import sys

import numpy as np
import pandas as pd

from galaxiesml.schema import BANDS


def pandas_pass(catalog: str, out: str) -> int:
    with open(catalog) as f:
        for skip, line in enumerate(f):
            if line.startswith("# object_id"):
                names = line[2:].strip().split(",")
                break
    df = pd.read_csv(catalog, skiprows=skip + 1, names=names, engine="pyarrow")
    z, err = df.specz_redshift, df.specz_redshift_err
    ok = (
        (z != 9.9999) & (err > 0) & (err < 1) & df.specz_flag_homogeneous.astype(bool)
        & (z > 0.01) & (z < 4) & (err < 0.005 * (1 + z))
        & np.logical_and.reduce([(df[f"{b}_cmodel_mag"] > 0) & (df[f"{b}_cmodel_mag"] < 50) for b in BANDS])
    )
    kept = df[ok].drop_duplicates("specz_name").drop_duplicates("object_id")
    kept.to_parquet(out)
    return len(kept)


if __name__ == "__main__":
    print(pandas_pass(sys.argv[1], sys.argv[2]))
