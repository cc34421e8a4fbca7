"""Freed memory goes back to the OS when a stage says its work is done."""
from __future__ import annotations

import os
import sys
import threading

import numpy as np
import pyarrow as pa
import pytest

from galaxiesml.memory import release_free_memory


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/statm")
def test_arrow_pages_freed_by_a_stage_are_returned():
    """Many small Arrow buffers (as parsing a catalog makes), freed: the pool keeps their pages
    until release_free_memory, which returns them. Run on a thread of its own, as a Beam bundle is."""
    seen = {}

    def stage():
        arrays = [pa.array(np.arange(i, i + 20_000, dtype=np.int64)) for i in range(1_500)]  # ~240 MB
        assert sum(a.nbytes for a in arrays) > 200e6
        del arrays
        seen["freed"] = _rss_mb()
        release_free_memory()
        seen["released"] = _rss_mb()

    thread = threading.Thread(target=stage)
    thread.start()
    thread.join()
    assert seen["released"] < seen["freed"] - 100, seen
