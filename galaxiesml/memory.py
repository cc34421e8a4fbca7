"""Arrow's memory pool, and giving memory that a stage has freed back to the operating system."""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os

import pyarrow as pa


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    """glibc's malloc_trim, or None (musl, macOS, Windows)."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def release_free_memory() -> None:
    """Return what is freed but still held to the OS: the free pages of Arrow's memory pool
    (mimalloc keeps a thread's freed pages for that thread, so pages the catalog stage freed stayed
    in the worker through the image stage) and of glibc's malloc arenas (malloc_trim(0), where the
    C library has it). Call it after a unit of work, on the thread that did it. Parsing the
    benchmark's 55,000-row catalog left ~65 MB of freed pages in the pool until this was called."""
    pa.default_memory_pool().release_unused()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


#: How long jemalloc keeps freed pages before handing them back to the OS. Arrow's 1 s let an HDF5
#: consolidation's peak rise with its length (127 x 127: +3% to +12% from 2,000 to 20,000
#: galaxies, the short run ending before the pool filled); 300 ms kept it within ~1%, for ~10% more
#: CPU. 0 (hand back at once) cost twice the CPU.
JEMALLOC_DECAY_MS = 300


def use_jemalloc() -> None:
    """Make jemalloc this process's Arrow memory pool where the pyarrow wheel has it (Linux, macOS),
    its freed pages handed back after JEMALLOC_DECAY_MS. Against Arrow's default, mimalloc: an HDF5
    consolidation spent ~20% less CPU (~35% less in the kernel; mimalloc handed each decoded
    batch's buffers back and faulted them in again for the next), and the build's workers peaked
    40-100 MB lower in four paired runs of the memory benchmark's builds. Buffers already made
    keep their pool, so switching at any time is safe."""
    try:
        pool = pa.jemalloc_memory_pool()
    except NotImplementedError:
        return
    pa.jemalloc_set_decay_ms(JEMALLOC_DECAY_MS)
    pa.set_memory_pool(pool)


#: glibc malloc arenas per worker process. glibc gives threads arenas of their own (up to 8 per
#: core), and what one arena frees only the threads on it reuse. A worker runs the catalog stages
#: and the image stage on different threads, so what the catalog stages freed stayed beside the
#: image stage's memory. In paired 2-worker builds (their first 170 s), 2 arenas took the larger
#: worker's peak from 780 to 708 MB at 20,000 galaxies (55,555 catalog rows) and left it at ~660 MB
#: at 2,000. Threads share arenas' locks now: an interleaved A/B put the CPU cost within the
#: host's noise, a few percent at most (benchmarks/results/scaling.md).
MALLOC_ARENAS = 2


def limit_malloc_arenas_in_workers() -> None:
    """Have the worker processes this process starts (DirectRunner multi_processing, the portable
    runner's subprocess workers) use at most MALLOC_ARENAS malloc arenas, unless MALLOC_ARENA_MAX is
    set already. glibc reads it only when a process starts (set later, with mallopt, the arenas a
    worker made before importing our code stay), so containers get it from the Dockerfile."""
    os.environ.setdefault("MALLOC_ARENA_MAX", str(MALLOC_ARENAS))
