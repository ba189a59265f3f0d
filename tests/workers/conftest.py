"""Fixtures for worker tests: client-owned segments, removed after each test."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator

import pytest

from tests.workers.shm import SHM_DIR, new_name, write_segment


@pytest.fixture
def client_segment() -> Iterator[Callable[[bytes], str]]:
    """Create a client segment holding the given bytes; returns its name."""
    names: list[str] = []

    def make(data: bytes) -> str:
        name = new_name()
        names.append(name)
        write_segment(name, data)
        return name

    yield make
    for name in names:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(SHM_DIR, name))
