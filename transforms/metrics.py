"""Beam counters named like the funnel keys of summary.json (namespace "galaxiesml"), mirrored in
a per-process tally that the launcher reads for live progress: its own, and, for worker processes
it started on this machine (DirectRunner multi_processing), theirs, which they write about once a
second to the folder PROGRESS_ENV names."""
from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Mapping

from apache_beam.metrics import Metrics

NAMESPACE = "galaxiesml"

#: "<folder>:<launcher pid>": where the worker processes of a local build share their tallies.
PROGRESS_ENV = "GALAXIESML_PROGRESS"
#: Seconds between a worker's writes of its tally.
SHARE_EVERY = 1.0

_lock = threading.Lock()
_tally: Counter = Counter()
_shared_at = 0.0


def increment(counts: Mapping[str, int]) -> None:
    """Add each count to the counter of the same name."""
    with _lock:
        for name, value in counts.items():
            if value:
                Metrics.counter(NAMESPACE, name).inc(value)
                _tally[name] += value
        _share()


def _share() -> None:
    """In a worker process of a local build, write this process's tally for the launcher (at most
    every SHARE_EVERY seconds; under _lock)."""
    global _shared_at
    folder, _, launcher = os.environ.get(PROGRESS_ENV, "").rpartition(":")
    now = time.monotonic()
    if not folder or launcher == str(os.getpid()) or now - _shared_at < SHARE_EVERY:
        return
    _shared_at = now
    path = Path(folder) / f"{os.getpid()}.json"
    tmp = path.with_suffix(".tmp")
    try:
        tmp.write_text(json.dumps(_tally))
        tmp.replace(path)
    except OSError:  # progress is a nicety: never a reason to fail a bundle
        pass


def tally() -> dict[str, int]:
    """The counts so far: this process's, plus those its local worker processes last shared."""
    with _lock:
        total = Counter(_tally)
    folder = os.environ.get(PROGRESS_ENV, "").rpartition(":")[0]
    for path in Path(folder).glob("*.json") if folder else ():
        try:
            total.update(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return dict(total)


def reset_tally() -> None:
    with _lock:
        _tally.clear()
