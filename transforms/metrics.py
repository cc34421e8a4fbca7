"""Beam counters named like the funnel keys of summary.json (namespace "galaxiesml"), mirrored in
a per-process tally that the launcher reads for live progress when the job runs in its process."""
from __future__ import annotations

import threading
from collections import Counter
from typing import Mapping

from apache_beam.metrics import Metrics

NAMESPACE = "galaxiesml"

_lock = threading.Lock()
_tally: Counter = Counter()


def increment(counts: Mapping[str, int]) -> None:
    """Add each count to the counter of the same name."""
    with _lock:
        for name, value in counts.items():
            if value:
                Metrics.counter(NAMESPACE, name).inc(value)
                _tally[name] += value


def tally() -> dict[str, int]:
    """This process's counts so far (complete only for runners that run the job in-process)."""
    with _lock:
        return dict(_tally)


def reset_tally() -> None:
    with _lock:
        _tally.clear()
