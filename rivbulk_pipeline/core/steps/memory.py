"""Keeping a long process's memory at what it holds, not at the most it ever held.

The steps stream millions of rows a batch at a time, but freed memory stays resident unless it is
handed back: Arrow's allocator and the C library's keep freed pages for reuse, and an SQLite
connection of a finished worker thread sits in a reference cycle until Python's next full
collection. Measured on a 10M-object daily run, each of these held tens of MB into the next step.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
from typing import Callable, Optional

import pyarrow as pa


def _c_heap_trimmer() -> Optional[Callable[[int], int]]:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to trim
        return None


_malloc_trim = _c_heap_trimmer()


def release_memory(collect: bool = False) -> None:
    """Give freed memory back to the OS: Arrow's pool, then the C heap (numpy's arrays, SQLite's
    pages, Python's large objects). `collect` first runs a full garbage collection (tens of ms
    in a Dagster process), for the end of a step, not for every batch."""
    if collect:
        gc.collect()
    pa.default_memory_pool().release_unused()
    if _malloc_trim is not None:
        _malloc_trim(0)
