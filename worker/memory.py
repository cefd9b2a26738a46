"""Keeping freed memory for its next use, so decoding doesn't fault its pages in afresh.

CTranslate2 allocates each encoder layer's attention scores for a batch of windows and
frees them after the layer: for tiny.en, 6 heads × 1500² floats, 54 MB per 30-s window,
216 MB for a batch of 4. glibc serves a block that big with mmap (its decoding thread's
arena can't hold it) and returns it to the kernel on free, so every layer of every batch
touches fresh pages: about 250,000 page faults and 0.5 s of system time per batch of 4
on this project's 2-core machine, 1.6-1.9 of a worker's 12 CPU-seconds on the sample
episode. With one arena that may grow without mmap and never trims its top, the freed
blocks are reused: 0.1 s of system time, and the decode's wall 8-15 % shorter
(scripts/bench_local.py, README).

A worker's memory then stays at its peak, which it reaches on its first batch anyway.
glibc only (Linux); elsewhere nothing changes. ``keep_freed_memory`` must run before
CTranslate2 starts its threads (a worker calls it first thing, before its model loads): a
thread keeps the arena it first allocated from. Calling it before numpy's import (whose
BLAS starts threads) measured the same: system time 0.2-0.3 s per worker either way.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform
from typing import Any

# mallopt parameters, from glibc's malloc.h
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8

SETTINGS = (
    (M_ARENA_MAX, 1),  # every thread allocates from the main arena, which grows by brk
    (M_MMAP_MAX, 0),  # no block is served (and given back) by mmap
    (M_TRIM_THRESHOLD, 2**31 - 1),  # the heap's free top is kept, not returned
)


def keep_freed_memory(libc: Any = None) -> bool:
    """Tell glibc's malloc to keep freed memory for reuse; False where this process's C
    library isn't glibc (or refused a setting), and nothing changed."""
    if libc is None:
        if platform.libc_ver()[0] != "glibc":
            return False
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    return all(libc.mallopt(param, value) == 1 for param, value in SETTINGS)
