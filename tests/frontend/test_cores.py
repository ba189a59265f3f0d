"""frontend.cores.CoreAllocator: spread, share with a warning, release."""

from __future__ import annotations

import logging
import os

import pytest

from frontend.cores import CoreAllocator

LOGGER = "frontend.cores"


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == LOGGER and r.levelno == logging.WARNING
    ]


def test_default_cpus_are_the_process_affinity() -> None:
    assert CoreAllocator().cpus == sorted(os.sched_getaffinity(0))


def test_cpus_are_sorted_and_a_copy() -> None:
    allocator = CoreAllocator([3, 1, 2])
    assert allocator.cpus == [1, 2, 3]
    allocator.cpus.append(9)
    assert allocator.cpus == [1, 2, 3]


def test_one_core_models_are_spread(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, LOGGER)
    allocator = CoreAllocator([0, 1])
    assert allocator.assign("a", 1) == [0]
    assert allocator.assign("b", 1) == [1]
    assert warnings_of(caplog) == []


def test_spread_over_four_cores() -> None:
    allocator = CoreAllocator([4, 5, 6, 7])
    assert allocator.assign("a", 2) == [4, 5]
    assert allocator.assign("b", 1) == [6]
    assert allocator.assign("c", 1) == [7]
    assert allocator.assign("d", 2) == [4, 5]  # all loaded once: lowest first


def test_sharing_warns(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, LOGGER)
    allocator = CoreAllocator([0, 1])
    allocator.assign("a", 1)
    allocator.assign("b", 1)
    assert allocator.assign("c", 1) == [0]
    assert warnings_of(caplog) == ["Model model=c shares cores [0] with another model"]


def test_more_cores_than_there_are(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, LOGGER)
    allocator = CoreAllocator([0, 1])
    assert allocator.assign("big", 3) == [0, 1]
    assert warnings_of(caplog) == ["Model model=big wants 3 cores; the agent has 2"]
    caplog.clear()
    assert allocator.assign("small", 1) == [0]
    assert warnings_of(caplog) == [
        "Model model=small shares cores [0] with another model"
    ]


def test_a_partly_loaded_machine_prefers_free_cores() -> None:
    allocator = CoreAllocator([0, 1, 2])
    allocator.assign("a", 1)  # [0]
    assert allocator.assign("b", 2) == [1, 2]
    allocator.release("a")
    assert allocator.assign("c", 2) == [0, 1]  # 0 free, then 1 over 2


def test_release_frees_the_cores(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, LOGGER)
    allocator = CoreAllocator([0, 1])
    allocator.assign("a", 1)
    allocator.assign("b", 1)
    allocator.release("a")
    assert allocator.assign("c", 1) == [0]
    assert warnings_of(caplog) == []


def test_release_is_idempotent_and_ignores_unknown_models() -> None:
    allocator = CoreAllocator([0, 1])
    allocator.assign("a", 1)
    allocator.release("a")
    allocator.release("a")
    allocator.release("never")
    assert allocator.assign("b", 2) == [0, 1]
    assert allocator.assign("c", 2) == [0, 1]


def test_reassigning_a_model_does_not_share_with_itself(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A restarted worker gets cores again: its old ones are not 'shared'."""
    caplog.set_level(logging.DEBUG, LOGGER)
    allocator = CoreAllocator([0, 1])
    assert allocator.assign("a", 1) == [0]
    assert allocator.assign("a", 1) == [0]
    assert allocator.assign("a", 2) == [0, 1]
    assert warnings_of(caplog) == []
    assert allocator.assign("b", 1) == [0]
    assert warnings_of(caplog) == ["Model model=b shares cores [0] with another model"]
