"""Freed memory goes back to the OS when a stage says its work is done."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

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


def test_a_process_that_runs_the_jobs_transforms_allocates_arrow_memory_from_jemalloc():
    """Every worker imports `transforms` to run a stage; from then on its Arrow buffers come from
    jemalloc, which hands freed pages back within JEMALLOC_DECAY_MS."""
    try:
        pa.jemalloc_memory_pool()
    except NotImplementedError:
        pytest.skip("this pyarrow wheel has no jemalloc")
    code = "import pyarrow as pa, transforms; print(pa.default_memory_pool().backend_name)"
    env = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.split()[-1] == "jemalloc"
