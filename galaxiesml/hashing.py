"""Deterministic hashes for bucketing and sampling: the same on every machine, process and runner
(Python's own `hash()` is salted per process)."""
from __future__ import annotations

import zlib

import numpy as np
import pyarrow as pa

_MASK = np.uint64(0xFFFFFFFFFFFFFFFF)


def splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser over uint64 (wrapping arithmetic): a well-mixed 64-bit hash."""
    z = np.asarray(x).astype(np.uint64, copy=True)
    with np.errstate(over="ignore"):
        z += np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


#: Independent streams of hashes: draws of different purposes must not be the same draw, or
#: choosing the galaxies of lowest hash (the mini sample) would also choose their split.
BASE_STREAM = 0  # splits, dedup buckets
MINI_STREAM = 1


def hash_ids(ids: np.ndarray, seed: int, stream: int = BASE_STREAM) -> np.ndarray:
    """Hash int64 ids with a seed into uint64; `stream` makes the hashes of one purpose independent
    of another's for the same seed (stream 0 keeps the hashes every release used so far)."""
    salt = splitmix64(np.array([seed & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))[0]
    if stream:
        salt = splitmix64(np.array([salt ^ np.uint64(stream)], dtype=np.uint64))[0]
    return splitmix64(np.asarray(ids).view(np.uint64) ^ salt)


def unit_interval(ids: np.ndarray, seed: int, stream: int = BASE_STREAM) -> np.ndarray:
    """Map ids to [0, 1) uniformly and deterministically (53-bit resolution)."""
    return (hash_ids(ids, seed, stream) >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def hash_strings(values: pa.Array) -> np.ndarray:
    """CRC-32 of each UTF-8 string (null hashes as the empty string)."""
    return np.fromiter(
        (zlib.crc32((v or "").encode("utf-8")) for v in values.to_pylist()),
        dtype=np.uint64,
        count=len(values),
    )
