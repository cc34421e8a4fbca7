"""Mini builds: a deterministic subset of N galaxies, stratified in redshift.

Every galaxy gets a fixed priority: within its redshift bin (fixed 0.1-wide bins, so strata do not
depend on the sample), its rank by a seeded hash of object_id, as a fraction of the bin's size.
The hash is of its own stream (galaxiesml.hashing.MINI_STREAM): the split's hash of the same seed
would put every chosen galaxy, those of lowest hash, in the training split. The N galaxies of
lowest priority form the subset. Because priorities do not depend on N, the same N always gives
the same galaxies and a larger N contains a smaller one; because each bin is taken at the same
fraction, the redshift distribution follows the full sample's.
"""
from __future__ import annotations

import numpy as np

from galaxiesml.hashing import MINI_STREAM, unit_interval

Z_BIN_EDGES = np.round(np.arange(0.0, 4.0 + 1e-9, 0.1), 10)


def mini_hash(object_ids: np.ndarray, seed: int) -> np.ndarray:
    """Each galaxy's seeded hash in [0, 1), from the mini sample's own stream."""
    return unit_interval(np.asarray(object_ids, dtype=np.int64), seed, MINI_STREAM)


def mini_priority(u: np.ndarray, redshifts: np.ndarray) -> np.ndarray:
    """Each galaxy's priority in [0, 1) from its mini_hash `u` and redshift: lower is chosen first."""
    bins = np.digitize(np.asarray(redshifts, dtype=np.float64), Z_BIN_EDGES)
    order = np.lexsort((u, bins))
    sorted_bins = bins[order]
    first_of_bin = np.searchsorted(sorted_bins, sorted_bins, side="left")
    count_of_bin = np.searchsorted(sorted_bins, sorted_bins, side="right") - first_of_bin
    priority = np.empty(len(u))
    priority[order] = (np.arange(len(u)) - first_of_bin + u[order]) / count_of_bin
    return priority


def select_mini(object_ids: np.ndarray, redshifts: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Boolean mask of the `n` galaxies of the mini build (all of them if there are fewer)."""
    u = mini_hash(object_ids, seed)
    priority = mini_priority(u, redshifts)
    chosen = np.lexsort((u, priority))[:n]
    mask = np.zeros(len(priority), bool)
    mask[chosen] = True
    return mask
