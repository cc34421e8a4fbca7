"""Stage 4 (paper section 3.5): each kept galaxy's split, from its object_id and a seed."""
from __future__ import annotations

import apache_beam as beam
import numpy as np
import pyarrow as pa

from galaxiesml.funnel import count_by
from galaxiesml.splits import DEFAULT_FRACTIONS, assign_splits, check_fractions
from transforms import arrow  # noqa: F401
from transforms.metrics import increment


def _with_split(table: pa.Table, seed: int, fractions: tuple[float, float, float]) -> pa.Table:
    ids = np.asarray(table.column("object_id").to_numpy(), dtype=np.int64)
    out = table.append_column("split", pa.array(assign_splits(ids, seed, fractions), pa.string()))
    increment(count_by(out, "split", "catalog_kept"))
    return out


class AssignSplits(beam.PTransform):
    """Kept rows -> the same rows with a `split` column (training / validation / testing)."""

    def __init__(self, seed: int = 0, fractions: tuple[float, float, float] = DEFAULT_FRACTIONS):
        super().__init__()
        self.seed = seed
        self.fractions = check_fractions(fractions)

    def expand(self, rows):
        return rows | "AddSplitColumn" >> beam.Map(
            _with_split, self.seed, self.fractions
        ).with_output_types(pa.Table)
