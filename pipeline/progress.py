"""Live progress of a build: a line every few seconds with each stage's counts and rates.

It reads the counters the stages increment (transforms.metrics); runners that execute the job in
this process (DirectRunner, FnApiRunner) show them live, others only the final summary."""
from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import threading
import time
from typing import Iterator, TextIO

from transforms.metrics import PROGRESS_ENV, reset_tally, tally

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
            if totals != previous and any(totals.values()):
                print(self.line(totals, previous, now - last), file=self.stream, flush=True)
            previous, last = totals, now


@contextlib.contextmanager
def worker_output_discarded() -> Iterator[TextIO]:
    """Send what worker processes started inside this block write to stderr (Beam's SDK workers
    print their logs and a failed bundle's traceback there, whatever the log level) to /dev/null;
    yields a stream to the real stderr for this process's own lines. Workers inherit file
    descriptor 2, so it is redirected, and restored on leaving."""
    sys.stderr.flush()
    saved = os.dup(2)
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    os.close(null)
    console = os.fdopen(os.dup(saved), "w", buffering=1)
    try:
        yield console
    finally:
        console.close()
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


@contextlib.contextmanager
def shared_progress() -> Iterator[str]:
    """A folder where the worker processes started inside this block share their counts with this
    process (transforms.metrics); removed on leaving."""
    folder = tempfile.mkdtemp(prefix="galaxiesml-progress-")
    saved = os.environ.get(PROGRESS_ENV)
    os.environ[PROGRESS_ENV] = f"{folder}:{os.getpid()}"
    try:
        yield folder
    finally:
        if saved is None:
            os.environ.pop(PROGRESS_ENV, None)
        else:
            os.environ[PROGRESS_ENV] = saved
        shutil.rmtree(folder, ignore_errors=True)
