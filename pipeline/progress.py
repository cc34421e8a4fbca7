"""Live progress of a build: a line every few seconds with each stage's counts and rates.

It reads the counters the stages increment (transforms.metrics); runners that execute the job in
this process (DirectRunner, FnApiRunner) show them live, others only the final summary."""
from __future__ import annotations

import sys
import threading
import time
from typing import TextIO

from transforms.metrics import reset_tally, tally

#: (label, counter prefix) per stage, in the order of the paper's flow.
STAGES = (
    ("read", "read"),
    ("rejected", "rejected."),
    ("duplicates", "duplicates."),
    ("selected", "catalog_kept."),
    ("fetched", "cutouts.fetched"),
    ("cached", "cutouts.cached"),
    ("measured", "morphology.measured"),
    ("failed", "failed."),
)


def stage_totals(counts: dict[str, int]) -> dict[str, int]:
    """Counter values summed per stage label."""
    return {label: sum(v for k, v in counts.items() if k == prefix or (prefix.endswith(".") and k.startswith(prefix))) for label, prefix in STAGES}


class Progress:
    """Prints stage counts and rates every `every` seconds while the job runs (a context manager)."""

    def __init__(self, every: float = 5.0, stream: TextIO = sys.stderr):
        self.every = every
        self.stream = stream
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="progress", daemon=True)

    def __enter__(self) -> "Progress":
        reset_tally()
        self._start = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def line(self, totals: dict[str, int], previous: dict[str, int], seconds: float) -> str:
        parts = []
        for label, value in totals.items():
            if value:
                rate = (value - previous.get(label, 0)) / max(seconds, 1e-9)
                parts.append(f"{label} {value:,}" + (f" ({rate:,.0f}/s)" if rate and label in ("read", "fetched", "measured") else ""))
        return f"[{time.monotonic() - self._start:6.0f} s] " + " | ".join(parts)

    def _loop(self) -> None:
        previous: dict[str, int] = {}
        last = time.monotonic()
        while not self._stop.wait(self.every):
            totals = stage_totals(tally())
            now = time.monotonic()
            if totals != previous:
                print(self.line(totals, previous, now - last), file=self.stream, flush=True)
            previous, last = totals, now
