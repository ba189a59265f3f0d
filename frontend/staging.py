"""Frontend-owned staging segments for images sent inline.

An inline image is copied once, from the gRPC message into a staging
segment, and the worker maps that segment as it maps a client's. Segments
are reused: a pool keeps the free ones, so steady traffic costs no
allocation and no page faults.

Names carry a per-run prefix ``edge-agent.<pid>.<start time>.``; at start
the frontend removes segments whose run is dead, so a crash leaks nothing
past the next start. These are the only segments the agent ever unlinks.
"""

from __future__ import annotations

import logging
import mmap
import os
from dataclasses import dataclass

from frontend.runs import is_live_run, run_token
from shared.segments import (
    AGENT_PREFIX,
    SHM_DIR,
    SegmentRef,
    create_segment,
    unlink_segment,
)

log = logging.getLogger(__name__)

PREFIX = AGENT_PREFIX
_ALIGN = 1 << 20


def remove_dead_runs_segments() -> int:
    """Unlink staging segments left by agents that are no longer running."""
    removed = 0
    for name in os.listdir(SHM_DIR):
        if not name.startswith(PREFIX):
            continue
        parts = name.split(".", 3)
        if len(parts) != 4 or not (parts[1].isdigit() and parts[2].isdigit()):
            continue
        if not is_live_run(parts[1], parts[2]):
            unlink_segment(name)
            removed += 1
    if removed:
        log.warning("Removed %d staging segment(s) of dead agent runs", removed)
    return removed


@dataclass
class StagingSegment:
    name: str
    capacity: int
    region: mmap.mmap

    def write(self, data: bytes) -> SegmentRef:
        self.region[: len(data)] = data
        return SegmentRef(name=self.name, offset=0, size=len(data))


class StagingPool:
    """Staging segments for one model, at most ``limit`` of them."""

    def __init__(self, model: str, limit: int) -> None:
        self._prefix = f"{PREFIX}{run_token()}.{model}-"
        self._limit = limit
        self._free: list[StagingSegment] = []
        self._count = 0
        self._serial = 0
        self._closed = False

    def acquire(self, size: int) -> StagingSegment:
        """A segment of at least ``size`` bytes; release it after the reply."""
        fits = [s for s in self._free if s.capacity >= size]
        if fits:
            segment = min(fits, key=lambda s: s.capacity)
            self._free.remove(segment)
            return segment
        if self._count >= self._limit and self._free:
            # Full pool: replace the largest free segment that is too small.
            self._destroy(self._free.pop())
        capacity = -(-size // _ALIGN) * _ALIGN
        self._serial += 1
        name = f"{self._prefix}{self._serial}"
        fd = create_segment(name, capacity)
        try:
            region = mmap.mmap(fd, capacity)
        finally:
            os.close(fd)
        self._count += 1
        return StagingSegment(name=name, capacity=capacity, region=region)

    def release(self, segment: StagingSegment) -> None:
        if self._closed:
            # The model stopped while this request held the segment.
            self._destroy(segment)
            return
        self._free.append(segment)
        self._free.sort(key=lambda s: s.capacity)

    def close(self) -> None:
        self._closed = True
        while self._free:
            self._destroy(self._free.pop())

    def _destroy(self, segment: StagingSegment) -> None:
        segment.region.close()
        unlink_segment(segment.name)
        self._count -= 1
