"""Training / validation / testing assignment, deterministic from object_id and a seed."""
from __future__ import annotations

import numpy as np

from galaxiesml.hashing import unit_interval
from galaxiesml.schema import SPLITS

DEFAULT_FRACTIONS = (0.6, 0.2, 0.2)


def check_fractions(fractions: tuple[float, float, float]) -> tuple[float, float, float]:
    """Validate split fractions: three non-negative numbers adding up to 1."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-9:
        raise ValueError(
            f"split fractions must be three non-negative numbers adding up to 1, got {fractions}"
        )
    return tuple(float(f) for f in fractions)  # type: ignore[return-value]


def assign_splits(
    object_ids: np.ndarray, seed: int, fractions: tuple[float, float, float] = DEFAULT_FRACTIONS
) -> np.ndarray:
    """The split name of each object id: a hash of (id, seed) mapped to [0, 1) and cut at the
    cumulative fractions, so a galaxy keeps its split whatever else is in the catalog."""
    u = unit_interval(object_ids, seed)
    edges = np.cumsum(check_fractions(fractions))[:2]
    return np.asarray(SPLITS, dtype=object)[np.searchsorted(edges, u, side="right")]
