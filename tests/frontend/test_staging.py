"""frontend.staging: the staging pool and the removal of dead runs' segments."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from frontend import staging
from frontend.staging import PREFIX, StagingPool, remove_dead_runs_segments
from shared import segments
from shared.segments import SHM_DIR, SegmentRef

MIB = 1 << 20


def own_token() -> str:
    me = psutil.Process()
    return f"{me.pid}.{int(me.create_time() * 1000)}"


def pool_segments(pool_model: str) -> list[str]:
    prefix = f"{PREFIX}{own_token()}.{pool_model}-"
    return sorted(n for n in os.listdir(SHM_DIR) if n.startswith(prefix))


@pytest.fixture
def model() -> Iterator[str]:
    """A model name unique to the test; its staging segments are removed."""
    name = f"unit-{os.urandom(4).hex()}"
    yield name
    for leftover in pool_segments(name):
        os.unlink(os.path.join(SHM_DIR, leftover))


def test_segment_names_carry_the_run_token(model: str) -> None:
    pool = StagingPool(model, limit=2)
    segment = pool.acquire(100)
    try:
        assert segment.name == f"edge-agent.{own_token()}.{model}-1"
        assert pool_segments(model) == [segment.name]
    finally:
        pool.release(segment)
        pool.close()


def test_capacity_is_rounded_to_mib_and_reserved(model: str) -> None:
    pool = StagingPool(model, limit=4)
    small = pool.acquire(100)
    exact = pool.acquire(MIB)
    big = pool.acquire(MIB + 1)
    try:
        assert [small.capacity, exact.capacity, big.capacity] == [MIB, MIB, 2 * MIB]
        for segment in (small, exact, big):
            st = os.stat(os.path.join(SHM_DIR, segment.name))
            assert st.st_size == segment.capacity
            assert st.st_blocks * 512 >= segment.capacity  # posix_fallocate
            assert st.st_mode & 0o777 == 0o600
            assert len(segment.region) == segment.capacity
    finally:
        for segment in (small, exact, big):
            pool.release(segment)
        pool.close()
    assert pool_segments(model) == []


def test_write_fills_the_segment_and_returns_its_ref(model: str) -> None:
    pool = StagingPool(model, limit=1)
    segment = pool.acquire(6)
    try:
        ref = segment.write(b"abcdef")
        assert ref == SegmentRef(name=segment.name, offset=0, size=6)
        with open(os.path.join(SHM_DIR, segment.name), "rb") as f:
            assert f.read(6) == b"abcdef"
    finally:
        pool.release(segment)
        pool.close()


def test_released_segments_are_reused(model: str) -> None:
    pool = StagingPool(model, limit=2)
    first = pool.acquire(1000)
    pool.release(first)
    again = pool.acquire(MIB)
    assert again is first
    pool.release(again)
    assert pool_segments(model) == [first.name]
    pool.close()
    assert pool_segments(model) == []


def test_the_smallest_fitting_segment_is_reused(model: str) -> None:
    pool = StagingPool(model, limit=4)
    big = pool.acquire(3 * MIB)
    small = pool.acquire(MIB)
    middle = pool.acquire(2 * MIB)
    for segment in (big, small, middle):
        pool.release(segment)
    assert pool.acquire(10) is small
    assert pool.acquire(MIB + 1) is middle
    assert pool.acquire(10) is big
    assert len(pool_segments(model)) == 3
    for segment in (big, small, middle):
        pool.release(segment)
    pool.close()
    assert pool_segments(model) == []


def test_a_full_pool_replaces_a_free_segment_that_is_too_small(model: str) -> None:
    pool = StagingPool(model, limit=2)
    a = pool.acquire(MIB)
    b = pool.acquire(2 * MIB)
    pool.release(a)
    pool.release(b)
    c = pool.acquire(3 * MIB)  # nothing fits; the largest free one goes
    assert c.capacity == 3 * MIB
    assert pool_segments(model) == sorted([a.name, c.name])
    assert not os.path.exists(os.path.join(SHM_DIR, b.name))
    pool.release(c)
    pool.close()
    assert pool_segments(model) == []


def test_below_the_limit_a_new_segment_is_added(model: str) -> None:
    pool = StagingPool(model, limit=3)
    a = pool.acquire(MIB)
    pool.release(a)
    b = pool.acquire(2 * MIB)
    assert b is not a
    assert pool_segments(model) == sorted([a.name, b.name])
    pool.release(b)
    pool.close()
    assert pool_segments(model) == []


def test_close_removes_every_free_segment(model: str) -> None:
    pool = StagingPool(model, limit=3)
    held = [pool.acquire(MIB) for _ in range(3)]
    for segment in held:
        pool.release(segment)
    assert len(pool_segments(model)) == 3
    pool.close()
    assert pool_segments(model) == []
    for segment in held:
        assert segment.region.closed


def test_a_segment_released_after_close_is_removed(model: str) -> None:
    """A request still holding a segment when its model stops must not leak
    it: nothing else removes a live run's segment."""
    pool = StagingPool(model, limit=2)
    in_flight = pool.acquire(MIB)
    pool.close()
    pool.release(in_flight)
    assert pool_segments(model) == []


# remove_dead_runs_segments ------------------------------------------------


@pytest.fixture
def shm_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private stand-in for /dev/shm: other agents' segments are not ours."""
    monkeypatch.setattr(staging, "SHM_DIR", str(tmp_path))
    monkeypatch.setattr(segments, "SHM_DIR", str(tmp_path))
    return tmp_path


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    with contextlib.suppress(psutil.NoSuchProcess):
        psutil.Process(child.pid)
        pytest.skip("the dead child's pid was reused at once")
    return child.pid


def test_remove_dead_runs_segments(shm_dir: Path) -> None:
    pid = dead_pid()
    me = psutil.Process()
    start_ms = int(me.create_time() * 1000)
    names = {
        "dead": f"edge-agent.{pid}.1700000000000.red-mean-1",
        "dead-dotted": f"edge-agent.{pid}.1700000000000.brick.v2-3",
        "reused-pid": f"edge-agent.{me.pid}.{start_ms - 1}.red-mean-1",
        "live": f"edge-agent.{me.pid}.{start_ms}.red-mean-1",
        "live-2": f"edge-agent.{me.pid}.{start_ms}.color-seg-7",
        "client": f"edge-agent-client-{pid}-0a1b2c3d",
        "not-a-token": "edge-agent.x.y.z",
        "short": f"edge-agent.{pid}.1700000000000",
        "foreign": f"cam-{pid}",
    }
    for name in names.values():
        (shm_dir / name).write_bytes(b"x")
    assert remove_dead_runs_segments() == 3
    assert sorted(os.listdir(shm_dir)) == sorted(
        names[k]
        for k in ("live", "live-2", "client", "not-a-token", "short", "foreign")
    )


def test_remove_dead_runs_segments_keeps_a_live_pool(shm_dir: Path, model: str) -> None:
    pool = StagingPool(model, limit=1)
    segment = pool.acquire(10)
    try:
        assert remove_dead_runs_segments() == 0
        assert os.listdir(shm_dir) == [segment.name]
    finally:
        pool.release(segment)
        pool.close()
    assert os.listdir(shm_dir) == []


def test_remove_dead_runs_segments_with_nothing_to_do(shm_dir: Path) -> None:
    assert remove_dead_runs_segments() == 0
