"""Freed memory goes back to the OS when a stage says its work is done, or is reused by the next."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest

from galaxiesml.memory import MALLOC_ARENAS, limit_malloc_arenas_in_workers


_FREE_THEN_RELEASE = """
import json, os, sys, threading
import numpy as np, pyarrow as pa
from galaxiesml.memory import release_free_memory
if sys.argv[1] == "jemalloc":
    pa.jemalloc_set_decay_ms(-1)  # never on its own: only release_free_memory hands pages back
    pa.set_memory_pool(pa.jemalloc_memory_pool())
else:
    pa.set_memory_pool(pa.mimalloc_memory_pool())
def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6
seen = {}
def stage():
    arrays = [pa.array(np.arange(i, i + 20_000, dtype=np.int64)) for i in range(1_500)]  # ~240 MB
    assert sum(a.nbytes for a in arrays) > 200e6
    del arrays
    seen["freed"] = rss_mb()
    release_free_memory()
    seen["released"] = rss_mb()
thread = threading.Thread(target=stage)  # on a thread of its own, as a Beam bundle is
thread.start()
thread.join()
print(json.dumps(seen))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/statm")
@pytest.mark.parametrize("pool", ["mimalloc", "jemalloc"])
def test_arrow_pages_freed_by_a_stage_are_returned(pool):
    """Many small Arrow buffers (as parsing a catalog makes), freed: the pool keeps their pages
    until release_free_memory, which returns them. In a fresh process: this one's pool (jemalloc,
    300 ms decay, once `transforms` is imported) may hand them back on its own before we look."""
    try:
        getattr(pa, f"{pool}_memory_pool")()
    except NotImplementedError:
        pytest.skip(f"this pyarrow wheel has no {pool}")
    out = subprocess.run([sys.executable, "-c", _FREE_THEN_RELEASE, pool], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parents[1])
    seen = json.loads(out.stdout.splitlines()[-1])
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


_COUNT_ARENAS = """
import ctypes, os, tempfile, threading
libc = ctypes.CDLL("libc.so.6")
libc.fopen.restype = ctypes.c_void_p
libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
libc.fclose.argtypes = [ctypes.c_void_p]
started, done = threading.Barrier(7), threading.Event()

def worker():
    libc.malloc(4096)  # a thread's first malloc gives it an arena
    started.wait()
    done.wait()

threads = [threading.Thread(target=worker) for _ in range(6)]
for t in threads:
    t.start()
started.wait()
path = os.path.join(tempfile.mkdtemp(), "malloc_info.xml")
f = libc.fopen(path.encode(), b"w")
libc.malloc_info(0, f)
libc.fclose(f)
done.set()
print(open(path).read().count("<heap nr="))
"""


def _arenas_of_a_child_with_six_threads() -> int:
    out = subprocess.run([sys.executable, "-c", _COUNT_ARENAS], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1])


@pytest.fixture
def no_arena_max(monkeypatch):
    """MALLOC_ARENA_MAX unset for the test, and as it was afterwards."""
    monkeypatch.setenv("MALLOC_ARENA_MAX", "")
    monkeypatch.delenv("MALLOC_ARENA_MAX")


@pytest.mark.skipif(not sys.platform.startswith("linux") or os.confstr("CS_GNU_LIBC_VERSION") is None,
                    reason="glibc's malloc arenas")
def test_processes_started_after_the_limit_share_few_malloc_arenas_between_threads(no_arena_max):
    """glibc gives each new thread an arena of its own (up to 8 per core), and what one arena frees
    only its threads reuse. A process started after limit_malloc_arenas_in_workers has at most
    MALLOC_ARENAS, however many threads allocate."""
    assert _arenas_of_a_child_with_six_threads() > MALLOC_ARENAS  # glibc's default: the check below can fail
    limit_malloc_arenas_in_workers()
    assert _arenas_of_a_child_with_six_threads() <= MALLOC_ARENAS


def test_a_users_malloc_arena_max_wins(monkeypatch):
    monkeypatch.setenv("MALLOC_ARENA_MAX", "6")
    limit_malloc_arenas_in_workers()
    assert os.environ["MALLOC_ARENA_MAX"] == "6"


def _two_worker_build(monkeypatch, tmp_path) -> list[dict]:
    """A catalog-only build on DirectRunner multi_processing with 2 workers; the environment each
    SDK worker process was started with."""
    from galaxiesml.synthetic_catalog import make_catalog, write_catalog
    from pipeline.cli import run_pipeline
    from pipeline.options import GalaxiesMLOptions

    workers = []

    class RecordingPopen(subprocess.Popen):
        def __init__(self, args, *rest, **kwargs):
            if "sdk_worker_main" in str(args):
                workers.append(dict(kwargs.get("env") or os.environ))
            super().__init__(args, *rest, **kwargs)

    monkeypatch.setattr(subprocess, "Popen", RecordingPopen)
    rows, _ = make_catalog(200, seed=3)
    write_catalog(rows, tmp_path / "catalog.csv")
    run_pipeline(GalaxiesMLOptions([
        "--catalog", str(tmp_path / "catalog.csv"), "--output", str(tmp_path / "out"), "--cutout_source=none",
        "--runner=DirectRunner", "--direct_running_mode=multi_processing", "--direct_num_workers=2",
    ]))
    assert (tmp_path / "out" / "summary.json").exists()
    return workers


def test_the_builds_worker_processes_start_with_few_malloc_arenas(no_arena_max, monkeypatch, tmp_path):
    """DirectRunner multi_processing starts each SDK worker with the launcher's environment; the
    build sets the limit before it starts them."""
    workers = _two_worker_build(monkeypatch, tmp_path)
    assert [env.get("MALLOC_ARENA_MAX") for env in workers] == [str(MALLOC_ARENAS)] * 2


def test_a_directrunner_build_runs_on_the_fnapirunner_never_prism(monkeypatch, tmp_path):
    """Beam's DirectRunner tries the Prism runner first wherever it can download it; a build asked
    of the DirectRunner runs on the FnApiRunner on every machine, with its worker processes."""
    from apache_beam.runners.portability import prism_runner

    tried = []

    def prism(self, pipeline, options):
        tried.append(options)
        raise RuntimeError("Prism is not reachable from the tests")

    monkeypatch.setattr(prism_runner.PrismRunner, "run_pipeline", prism)
    workers = _two_worker_build(monkeypatch, tmp_path)
    assert tried == [] and len(workers) == 2
