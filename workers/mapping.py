"""Client segments mapped into the worker, kept mapped between requests.

A camera client writes every frame into the same segment, so mapping it
once and keeping the mapping saves the page faults of a fresh mapping on
every request (about 1 ms per 6 MB). Each request still opens and fstats
the segment: a segment replaced under the same name (new inode) or resized
gets a new mapping, and the extent is checked against the real size.

Mappings of segments the client has since unlinked are dropped at the next
``prune``, so the worker does not keep their memory alive. The client owns
every segment mapped here: nothing in this module unlinks one.

A client that truncates a segment while the worker reads it kills the
worker with SIGBUS; the supervisor fails that request and restarts the
worker. That is why client memory is only ever touched in a worker.
"""

from __future__ import annotations

import mmap
import os
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from shared.segments import SegmentError, SegmentRef, check_extent, open_segment


@dataclass
class _Mapping:
    key: tuple[int, int, int]
    region: mmap.mmap


class SegmentCache:
    """At most ``capacity`` mappings, least recently used evicted first."""

    def __init__(self, capacity: int, *, writable: bool) -> None:
        self._capacity = capacity
        self._writable = writable
        self._maps: OrderedDict[str, _Mapping] = OrderedDict()

    def view(self, ref: SegmentRef, shape: tuple[int, ...], role: str) -> np.ndarray:
        """A numpy view of ``prod(shape)`` bytes at ``ref.offset``, no copy."""
        needed = int(np.prod(shape))
        mapping = self._mapping(ref, role)
        check_extent(role, ref.name, ref.offset, needed, len(mapping.region))
        array = np.frombuffer(
            mapping.region, dtype=np.uint8, count=needed, offset=ref.offset
        )
        return array.reshape(shape)

    def _mapping(self, ref: SegmentRef, role: str) -> _Mapping:
        fd = open_segment(ref.name, role, writable=self._writable)
        try:
            st = os.fstat(fd)
            key = (st.st_dev, st.st_ino, st.st_size)
            current = self._maps.get(ref.name)
            if current is not None and current.key == key:
                self._maps.move_to_end(ref.name)
                return current
            check_extent(role, ref.name, ref.offset, ref.size, st.st_size)
            if st.st_size == 0:
                raise SegmentError(f"{role}: segment {ref.name!r} is empty")
            prot = mmap.PROT_READ | (mmap.PROT_WRITE if self._writable else 0)
            region = mmap.mmap(fd, st.st_size, flags=mmap.MAP_SHARED, prot=prot)
        finally:
            os.close(fd)
        if current is not None:
            self._drop(ref.name)
        mapping = _Mapping(key=key, region=region)
        self._maps[ref.name] = mapping
        while len(self._maps) > self._capacity:
            self._drop(next(iter(self._maps)))
        return mapping

    def prune(self) -> None:
        """Drop mappings of segments that were unlinked or replaced."""
        for name in list(self._maps):
            try:
                st = os.stat(os.path.join("/dev/shm", name))
            except FileNotFoundError:
                self._drop(name)
                continue
            if (st.st_dev, st.st_ino, st.st_size) != self._maps[name].key:
                self._drop(name)

    def close(self) -> None:
        for name in list(self._maps):
            self._drop(name)

    def __len__(self) -> int:
        return len(self._maps)

    def _drop(self, name: str) -> None:
        mapping = self._maps.pop(name)
        # Views are dropped before the cache is touched again; a view still
        # alive here would make close() raise BufferError.
        mapping.region.close()
