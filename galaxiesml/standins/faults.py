"""Seeded fault injection for the stand-in servers: which request fails, and how."""
from __future__ import annotations

import threading
import zlib
from dataclasses import dataclass, fields

import numpy as np

#: Every kind of fault, in the order shares are drawn.
FAULT_KINDS: tuple[str, ...] = (
    "http_502",  # a proxy error (the client retries)
    "http_503",  # too busy (the client retries later)
    "slow",  # the reply is delayed by slow_seconds, then served normally
    "drop",  # the connection is closed without a reply
    "truncate",  # the reply body stops part way (tar cut short)
    "corrupt_member",  # one FITS member's header is overwritten with garbage
    "wrong_size_member",  # one FITS member is shorter than a whole FITS file
)


@dataclass(frozen=True)
class Faults:
    """Share of requests (0..1) given each fault; at most one fault per request."""

    http_502: float = 0.0
    http_503: float = 0.0
    slow: float = 0.0
    drop: float = 0.0
    truncate: float = 0.0
    corrupt_member: float = 0.0
    wrong_size_member: float = 0.0
    slow_seconds: float = 1.0
    seed: int = 0

    @classmethod
    def spread(
        cls, rate: float, seed: int = 0, kinds: tuple[str, ...] = FAULT_KINDS, slow_seconds: float = 1.0
    ) -> "Faults":
        """`rate` of all requests faulty, split evenly over `kinds`."""
        unknown = set(kinds) - set(FAULT_KINDS)
        if unknown:
            raise ValueError(f"unknown fault kinds: {sorted(unknown)}")
        share = rate / len(kinds) if kinds else 0.0
        return cls(**{k: share for k in kinds}, slow_seconds=slow_seconds, seed=seed)

    @property
    def total(self) -> float:
        return sum(getattr(self, k) for k in FAULT_KINDS)

    def __post_init__(self) -> None:
        for f in fields(self):
            if f.name in FAULT_KINDS and not 0.0 <= getattr(self, f.name) <= 1.0:
                raise ValueError(f"fault share {f.name} must be in [0, 1]")
        if self.total > 1.0 + 1e-9:
            raise ValueError("fault shares add up to more than 1")


class FaultPlan:
    """Draws the fault of each request from seeded generators (thread-safe), and counts them.

    Each `stream` (a catalog endpoint, say, or where a damaged reply is cut) has its own generator, so
    the faults one stream sees do not depend on how often, or in which order across threads, another
    was drawn from (status polls vary with timing; downloads must not).
    """

    def __init__(self, faults: Faults = Faults()):
        self.faults = faults
        self._rngs: dict[str, np.random.Generator] = {}
        self._lock = threading.Lock()
        self.counts: dict[str, int] = {k: 0 for k in FAULT_KINDS}

    def _rng(self, stream: str) -> np.random.Generator:
        if stream not in self._rngs:
            self._rngs[stream] = np.random.default_rng([self.faults.seed, 11, zlib.crc32(stream.encode())])
        return self._rngs[stream]

    def draw(self, allowed: tuple[str, ...] = FAULT_KINDS, stream: str = "") -> str | None:
        """The fault for the next request (None for a clean reply); kinds not in `allowed` count as clean."""
        with self._lock:
            u = float(self._rng(stream).random())
            edge = 0.0
            for kind in FAULT_KINDS:
                edge += getattr(self.faults, kind)
                if u < edge:
                    if kind in allowed:
                        self.counts[kind] += 1
                        return kind
                    return None
            return None

    def rng_value(self, stream: str = "") -> float:
        """A uniform number from the stream's generator (where in a reply a fault strikes)."""
        with self._lock:
            return float(self._rng(stream).random())
