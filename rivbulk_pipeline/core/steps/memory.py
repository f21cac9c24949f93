"""Keeping a long process's memory at what it holds, not at the most it ever held.

The steps stream millions of rows a batch at a time, but freed memory stays resident unless it is
handed back: Arrow's and the C library's allocators keep freed pages for reuse, glibc gives each
worker thread its own arena (fragmented, so hard to give back), and an SQLite connection of a
finished worker thread sits in a reference cycle until Python's next full collection. Measured on
a 10M-object daily run, each of these held tens of MB into the next step.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import gc
from typing import Any, Optional

import pyarrow as pa

_M_ARENA_MAX = -8  # glibc's mallopt parameter
_ARENAS = 2


def _glibc() -> Optional[Any]:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None
    except OSError:  # not glibc: nothing to tune or trim
        return None


_LIBC = _glibc()


def use_lean_allocators() -> None:
    """For the whole process, before the steps start threads: Arrow allocates on the C heap
    (so that `release_memory` gives its pages back too), and threads share two glibc arenas."""
    pa.set_memory_pool(pa.system_memory_pool())
    if _LIBC is not None:
        _LIBC.mallopt(_M_ARENA_MAX, _ARENAS)


def release_memory(collect: bool = False) -> None:
    """Give freed memory back to the OS: Arrow's pool, then the C heap (numpy's arrays, SQLite's
    pages, Python's large objects). `collect` first runs a full garbage collection (tens of ms
    in a Dagster process), for the end of a step, not for every batch."""
    if collect:
        gc.collect()
    pa.default_memory_pool().release_unused()
    if _LIBC is not None:
        _LIBC.malloc_trim(0)
