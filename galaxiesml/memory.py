"""Giving memory that a stage has freed back to the operating system."""
from __future__ import annotations

import ctypes
import ctypes.util
import functools

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
