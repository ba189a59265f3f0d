"""Keeping large buffers in the heap instead of fresh mappings.

glibc serves every allocation above its mmap threshold (128 KiB to 32 MiB,
adjusting itself) with a new mapping and unmaps it on free, so a process
that handles a multi-megabyte image per request faults every page of each
buffer in again: about half of the frontend's CPU for a 1080p inline image
(docs/benchmarks.md). Raising the thresholds keeps such buffers in the
heap for reuse; the cost is that the process keeps its peak heap.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 128 * 1024 * 1024
TRIM_THRESHOLD_BYTES = 256 * 1024 * 1024


def keep_large_buffers() -> bool:
    """Raise glibc's mmap and trim thresholds; False where there is no glibc."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return False  # not glibc (musl has no mallopt)
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    done = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
    )
    if not done:
        log.warning("mallopt refused the thresholds; large buffers stay mmapped")
    return done
