"""workers.mapping.SegmentCache: zero-copy views of client segments.

Every mapping is checked in /proc/self/maps, where this test process maps
nothing itself: a view's address must lie inside the cache's mapping.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Callable

import numpy as np
import pytest

from shared.segments import SegmentError, SegmentRef
from tests.workers.shm import (
    SHM_DIR,
    mapped_regions,
    read_segment,
    write_segment,
)
from workers.mapping import SegmentCache

PAGE = mmap.PAGESIZE
MakeSegment = Callable[[bytes], str]


def pattern(size: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, size, np.uint8).tobytes()


def only_region(name: str) -> tuple[int, int, str]:
    regions = mapped_regions(name)
    assert len(regions) == 1, regions
    region = regions[0]
    assert not region.deleted
    assert region.offset == 0
    return region.start, region.end - region.start, region.perms


def test_view_shares_memory_with_the_mapping(client_segment: MakeSegment) -> None:
    size = 3 * PAGE + 100
    data = pattern(size)
    name = client_segment(data)
    cache = SegmentCache(4, writable=False)
    offset = PAGE + 7
    shape = (16, 32, 3)
    nbytes = 16 * 32 * 3
    view = cache.view(SegmentRef(name, offset, nbytes), shape, "bitmap")
    assert view.shape == shape
    assert view.dtype == np.uint8
    assert view.flags.c_contiguous
    assert not view.flags.writeable
    start, length, perms = only_region(name)
    assert perms == "r--s"
    assert length == 4 * PAGE  # the whole segment, rounded to pages
    assert view.ctypes.data == start + offset
    assert view.tobytes() == data[offset : offset + nbytes]
    # The client writes; the view sees it: the same memory, no copy.
    fd = os.open(os.path.join(SHM_DIR, name), os.O_RDWR)
    try:
        os.pwrite(fd, b"\x01\x02\x03", offset)
    finally:
        os.close(fd)
    assert view[0, 0].tolist() == [1, 2, 3]
    assert len(cache) == 1
    del view
    cache.close()
    assert len(cache) == 0
    assert mapped_regions(name) == []


def test_view_at_offset_zero_of_a_name_with_a_slash(
    client_segment: MakeSegment,
) -> None:
    # The cache takes normalised names (without '/'); the frontend strips it.
    name = client_segment(bytes(range(192)))
    cache = SegmentCache(1, writable=False)
    view = cache.view(SegmentRef(name, 0, 192), (8, 8, 3), "bitmap")
    start, _, _ = only_region(name)
    assert view.ctypes.data == start
    assert view[0, 1].tolist() == [3, 4, 5]
    del view
    cache.close()


def test_the_same_segment_reuses_the_mapping(client_segment: MakeSegment) -> None:
    name = client_segment(pattern(2 * PAGE))
    cache = SegmentCache(4, writable=False)
    first = cache.view(SegmentRef(name, 0, 300), (10, 10, 3), "bitmap")
    start, _, _ = only_region(name)
    second = cache.view(SegmentRef(name, PAGE, 300), (10, 10, 3), "bitmap")
    third = cache.view(SegmentRef(name, 0, 300), (10, 10, 3), "bitmap")
    assert only_region(name)[0] == start
    assert first.ctypes.data == start
    assert second.ctypes.data == start + PAGE
    assert third.ctypes.data == start
    assert len(cache) == 1
    del first, second, third
    cache.close()


def test_a_segment_replaced_under_the_same_name_is_remapped(
    client_segment: MakeSegment,
) -> None:
    name = client_segment(b"A" * PAGE)
    cache = SegmentCache(4, writable=False)
    view = cache.view(SegmentRef(name, 0, 300), (10, 10, 3), "bitmap")
    assert view.tobytes() == b"A" * 300
    del view
    write_segment(name, b"B" * PAGE, replace=True)  # new inode, same size
    view = cache.view(SegmentRef(name, 0, 300), (10, 10, 3), "bitmap")
    assert view.tobytes() == b"B" * 300
    # Only the new file is mapped; the old one's mapping was closed.
    start, _, _ = only_region(name)
    assert view.ctypes.data == start
    assert len(cache) == 1
    del view
    cache.close()
    assert read_segment(name) == b"B" * PAGE


def test_a_grown_segment_is_remapped(client_segment: MakeSegment) -> None:
    name = client_segment(b"A" * PAGE)
    cache = SegmentCache(4, writable=False)
    view = cache.view(SegmentRef(name, 0, 300), (10, 10, 3), "bitmap")
    del view
    fd = os.open(os.path.join(SHM_DIR, name), os.O_RDWR)
    try:
        os.ftruncate(fd, 3 * PAGE)
        os.pwrite(fd, b"C" * 300, 2 * PAGE)
    finally:
        os.close(fd)
    view = cache.view(SegmentRef(name, 2 * PAGE, 300), (10, 10, 3), "bitmap")
    assert view.tobytes() == b"C" * 300
    start, length, _ = only_region(name)
    assert length == 3 * PAGE
    assert view.ctypes.data == start + 2 * PAGE
    del view
    cache.close()


def test_a_shrunk_segment_is_checked_against_its_new_size(
    client_segment: MakeSegment,
) -> None:
    name = client_segment(b"A" * (4 * PAGE))
    cache = SegmentCache(4, writable=False)
    view = cache.view(SegmentRef(name, 3 * PAGE, 300), (10, 10, 3), "bitmap")
    del view
    os.truncate(os.path.join(SHM_DIR, name), PAGE)
    with pytest.raises(SegmentError) as info:
        cache.view(SegmentRef(name, 3 * PAGE, 300), (10, 10, 3), "bitmap")
    assert str(info.value) == (
        f"bitmap: offset {3 * PAGE} + size 300 = {3 * PAGE + 300} runs past the "
        f"end of segment {name!r}, which holds {PAGE} bytes"
    )
    # What still fits is served from a fresh mapping of the new size.
    view = cache.view(SegmentRef(name, 0, 300), (10, 10, 3), "bitmap")
    assert view.tobytes() == b"A" * 300
    assert only_region(name)[1] == PAGE
    del view
    cache.close()


def test_prune_drops_unlinked_segments(client_segment: MakeSegment) -> None:
    gone = client_segment(b"G" * PAGE)
    kept = client_segment(b"K" * PAGE)
    cache = SegmentCache(4, writable=False)
    for name in (gone, kept):
        view = cache.view(SegmentRef(name, 0, 3), (1, 1, 3), "bitmap")
        del view
    os.unlink(os.path.join(SHM_DIR, gone))
    # Still mapped, so its memory is alive until pruned.
    assert [r.deleted for r in mapped_regions(gone)] == [True]
    cache.prune()
    assert len(cache) == 1
    assert mapped_regions(gone) == []
    assert len(mapped_regions(kept)) == 1
    cache.prune()
    assert len(cache) == 1
    cache.close()
    assert read_segment(kept) == b"K" * PAGE


def test_prune_drops_replaced_and_resized_segments(
    client_segment: MakeSegment,
) -> None:
    replaced = client_segment(b"R" * PAGE)
    resized = client_segment(b"S" * PAGE)
    cache = SegmentCache(4, writable=False)
    for name in (replaced, resized):
        view = cache.view(SegmentRef(name, 0, 3), (1, 1, 3), "bitmap")
        del view
    write_segment(replaced, b"N" * PAGE, replace=True)
    os.truncate(os.path.join(SHM_DIR, resized), 2 * PAGE)
    cache.prune()
    assert len(cache) == 0
    assert mapped_regions(replaced) == []
    assert mapped_regions(resized) == []
    assert read_segment(replaced) == b"N" * PAGE
    assert os.path.getsize(os.path.join(SHM_DIR, resized)) == 2 * PAGE


def test_least_recently_used_mapping_is_evicted(client_segment: MakeSegment) -> None:
    a, b, c = (client_segment(bytes([i]) * PAGE) for i in (1, 2, 3))
    cache = SegmentCache(2, writable=False)

    def touch(name: str) -> None:
        view = cache.view(SegmentRef(name, 0, 3), (1, 1, 3), "bitmap")
        del view

    touch(a)
    touch(b)
    touch(a)  # b is now the least recently used
    touch(c)
    assert len(cache) == 2
    assert [len(mapped_regions(n)) for n in (a, b, c)] == [1, 0, 1]
    touch(b)  # a is now the least recently used
    assert len(cache) == 2
    assert [len(mapped_regions(n)) for n in (a, b, c)] == [0, 1, 1]
    cache.close()
    assert [read_segment(n) for n in (a, b, c)] == [
        bytes([i]) * PAGE for i in (1, 2, 3)
    ]


def test_extent_past_the_end(client_segment: MakeSegment) -> None:
    name = client_segment(bytes(4096))
    cache = SegmentCache(4, writable=False)
    with pytest.raises(SegmentError) as info:
        cache.view(SegmentRef(name, 1, 4096), (1, 4096), "bitmap")
    assert str(info.value) == (
        f"bitmap: offset 1 + size 4096 = 4097 runs past the end of segment "
        f"{name!r}, which holds 4096 bytes"
    )
    assert len(cache) == 0
    assert mapped_regions(name) == []


def test_extent_past_the_end_of_a_mapped_segment(client_segment: MakeSegment) -> None:
    name = client_segment(bytes(4096))
    cache = SegmentCache(4, writable=False)
    view = cache.view(SegmentRef(name, 0, 3), (1, 1, 3), "bitmap")
    del view
    with pytest.raises(SegmentError) as info:
        cache.view(SegmentRef(name, 4000, 192), (8, 8, 3), "bitmap")
    assert str(info.value) == (
        f"bitmap: offset 4000 + size 192 = 4192 runs past the end of segment "
        f"{name!r}, which holds 4096 bytes"
    )
    cache.close()


@pytest.mark.parametrize("offset", [2**64 - 1, 2**64 - 8, 2**63])
def test_offset_near_2_to_the_64_does_not_wrap(
    client_segment: MakeSegment, offset: int
) -> None:
    name = client_segment(bytes(4096))
    cache = SegmentCache(4, writable=False)
    with pytest.raises(SegmentError) as info:
        cache.view(SegmentRef(name, offset, 16), (1, 16), "bitmap")
    assert str(info.value) == (
        f"bitmap: offset {offset} + size 16 = {offset + 16} runs past the end of "
        f"segment {name!r}, which holds 4096 bytes"
    )
    # Also with the segment already mapped.
    view = cache.view(SegmentRef(name, 0, 16), (1, 16), "bitmap")
    del view
    with pytest.raises(SegmentError):
        cache.view(SegmentRef(name, offset, 16), (1, 16), "bitmap")
    cache.close()


def test_empty_segment(client_segment: MakeSegment) -> None:
    name = client_segment(b"")
    cache = SegmentCache(4, writable=False)
    with pytest.raises(SegmentError) as info:
        cache.view(SegmentRef(name, 0, 0), (0, 0, 3), "bitmap")
    assert str(info.value) == f"bitmap: segment {name!r} is empty"
    assert len(cache) == 0


def test_missing_segment(client_segment: MakeSegment) -> None:
    name = client_segment(b"x")
    os.unlink(os.path.join(SHM_DIR, name))
    cache = SegmentCache(4, writable=False)
    with pytest.raises(SegmentError) as info:
        cache.view(SegmentRef(name, 0, 1), (1,), "bitmap")
    assert str(info.value) == (
        f"bitmap: shared memory segment {name!r} does not exist; create it with "
        "shm_open before the call"
    )


def test_symlink_is_refused(client_segment: MakeSegment) -> None:
    target = client_segment(bytes(4096))
    link = client_segment(b"")
    os.unlink(os.path.join(SHM_DIR, link))
    os.symlink(os.path.join(SHM_DIR, target), os.path.join(SHM_DIR, link))
    cache = SegmentCache(4, writable=False)
    with pytest.raises(SegmentError) as info:
        cache.view(SegmentRef(link, 0, 3), (1, 1, 3), "bitmap")
    assert str(info.value) == f"bitmap: {link!r} is a symbolic link, not a segment"
    assert len(cache) == 0


def test_writable_cache_writes_into_the_client_segment(
    client_segment: MakeSegment,
) -> None:
    name = client_segment(bytes(2 * PAGE))
    cache = SegmentCache(4, writable=True)
    target = cache.view(SegmentRef(name, 10, 12), (2, 2, 3), "mask")
    assert target.flags.writeable
    start, _, perms = only_region(name)
    assert perms == "rw-s"
    assert target.ctypes.data == start + 10
    target[...] = np.arange(12, dtype=np.uint8).reshape(2, 2, 3)
    del target
    cache.close()
    data = read_segment(name)
    assert data[10:22] == bytes(range(12))
    assert data[:10] == bytes(10)
    assert data[22:] == bytes(2 * PAGE - 22)


def test_read_only_cache_view_cannot_be_written(client_segment: MakeSegment) -> None:
    name = client_segment(bytes(PAGE))
    cache = SegmentCache(4, writable=False)
    view = cache.view(SegmentRef(name, 0, 3), (1, 1, 3), "bitmap")
    with pytest.raises(ValueError, match="read-only"):
        view[0, 0, 0] = 1
    del view
    cache.close()
    assert read_segment(name) == bytes(PAGE)


def test_the_cache_never_unlinks_a_client_segment(client_segment: MakeSegment) -> None:
    names = [client_segment(bytes([i]) * PAGE) for i in range(4)]
    cache = SegmentCache(2, writable=False)
    for name in names:  # two of them are evicted on the way
        view = cache.view(SegmentRef(name, 0, 3), (1, 1, 3), "bitmap")
        del view
    cache.prune()
    cache.close()
    cache.close()  # twice is fine
    for i, name in enumerate(names):
        assert os.path.exists(os.path.join(SHM_DIR, name))
        assert read_segment(name) == bytes([i]) * PAGE
        assert mapped_regions(name) == []
