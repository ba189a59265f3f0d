"""Keeping large buffers in the heap instead of fresh mappings.

glibc serves every allocation above its mmap threshold (128 KiB to 32 MiB,
adjusting itself) with a new mapping and unmaps it on free, so a process
that handles a multi-megabyte image per request faults every page of each
buffer in again: about half of the frontend's CPU for a 1080p inline image
(docs/benchmarks.md). Raising the thresholds keeps such buffers in the
heap for reuse. The cost would be that a process keeps its peak heap
(after 4096x4096 inline traffic at concurrency 8, about 0.8 GB in the
frontend), so an idle process gives free heap pages back with
``release_free_memory`` (glibc's ``malloc_trim``).

For the same reason of steady per-request cost, the garbage collector's
view of the heap is trimmed once at start (``freeze_startup_objects``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 128 * 1024 * 1024
TRIM_THRESHOLD_BYTES = 256 * 1024 * 1024


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return ctypes.CDLL(name)
    except OSError:
        return None


def release_free_memory() -> bool:
    """Give free heap pages back to the system; False where not possible."""
    libc = _libc()
    trim = getattr(libc, "malloc_trim", None)
    if trim is None:
        return False
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return bool(trim(0))


def keep_large_buffers() -> bool:
    """Raise glibc's mmap and trim thresholds; False where there is no glibc."""
    mallopt = getattr(_libc(), "mallopt", None)
    if mallopt is None:
        return False  # not glibc (musl has no mallopt)
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    done = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
    )
    if not done:
        log.warning("mallopt refused the thresholds; large buffers stay mmapped")
    return done


def freeze_startup_objects() -> None:
    """Move every object alive now out of the cyclic garbage collector's view.

    A full collection walks every tracked object: in the frontend, with
    grpc, protobuf and the generated code loaded, about 40,000 at start and
    5 to 10 ms per pass (timed with ``gc.collect()`` after importing
    frontend.server), which lands on whichever request runs then, in the
    latency's tail. Startup objects (modules, classes, the server, the model
    session) live as long as the process, so after start they are frozen
    (``gc.freeze``): later passes walk only what requests allocate. Nothing
    is leaked; frozen objects are merely never collected, as they would not
    be anyway.
    """
    gc.collect()
    gc.freeze()
