"""Large buffers stay in the heap once the thresholds are raised; startup
objects leave the garbage collector's view."""

from __future__ import annotations

import gc
import subprocess
import sys
import textwrap

from shared.malloc import freeze_startup_objects


def test_large_buffers_are_reused_without_page_faults() -> None:
    """4096x4096 images (48 MiB) in turn: above glibc's largest automatic
    threshold (32 MiB) each one is a fresh mapping whose pages fault in."""
    script = textwrap.dedent(
        """
        import resource, sys
        from shared.malloc import keep_large_buffers
        if sys.argv[1] == "raised":
            assert keep_large_buffers()
        data = b"x" * (48 << 20)
        bytearray(data)  # warm the heap once
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(4):
            copy = bytearray(data)
            del copy
        print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
        """
    )
    faults = {}
    for mode in ("default", "raised"):
        done = subprocess.run(
            [sys.executable, "-c", script, mode],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        )
        faults[mode] = int(done.stdout)
    # 4 x 48 MiB of 4 KiB pages is about 49,000 faults by default.
    assert faults["default"] > 40_000, faults
    assert faults["raised"] < faults["default"] / 10, faults


def test_free_heap_is_given_back() -> None:
    script = textwrap.dedent(
        """
        import psutil
        from shared.malloc import keep_large_buffers, release_free_memory
        assert keep_large_buffers()
        held = [bytearray(b"x" * (48 << 20)) for _ in range(4)]
        keep = bytearray(1)  # a live chunk above them keeps the heap's top
        del held
        before = psutil.Process().memory_info().rss
        assert release_free_memory()
        after = psutil.Process().memory_info().rss
        print(before - after)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True,
        timeout=30,
    )  # fmt: skip
    # Most of the 192 MiB freed comes back, though it sat below a live chunk.
    assert int(done.stdout) > 150 << 20, done.stdout


def test_freezing_hides_startup_objects_from_the_collector() -> None:
    # Lists are always tracked (a dict of plain values may not be).
    before: list[list[int]] = [[1], [2]]
    try:
        freeze_startup_objects()
        frozen = gc.get_freeze_count()
        after: list[list[int]] = [[3]]
        tracked = {id(o) for o in gc.get_objects()}
        assert frozen > 0
        assert id(before) not in tracked and id(before[1]) not in tracked
        assert id(after) in tracked
    finally:
        gc.unfreeze()
    assert gc.get_freeze_count() == 0
