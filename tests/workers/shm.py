"""Client-side segments for worker tests, and where a process maps them.

Segments are written with plain file calls, never mapped here, so every
mapping of one in ``/proc/<pid>/maps`` is the code under test's.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass

SHM_DIR = "/dev/shm"


@dataclass(frozen=True)
class Region:
    start: int
    end: int
    perms: str
    offset: int
    deleted: bool


def new_name() -> str:
    return f"ea-unit-{os.getpid()}-{secrets.token_hex(4)}"


def write_segment(name: str, data: bytes, *, replace: bool = False) -> None:
    """Create ``/dev/shm/<name>`` holding ``data`` (a new inode if replace)."""
    path = os.path.join(SHM_DIR, name)
    if replace:
        os.unlink(path)
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    try:
        os.ftruncate(fd, len(data))
        os.pwrite(fd, data, 0)
    finally:
        os.close(fd)


def read_segment(name: str) -> bytes:
    with open(os.path.join(SHM_DIR, name), "rb") as f:
        return f.read()


def mapped_regions(name: str, pid: int | str = "self") -> list[Region]:
    """Mappings of ``/dev/shm/<name>`` in process ``pid``."""
    path = os.path.join(SHM_DIR, name)
    regions = []
    with open(f"/proc/{pid}/maps") as maps:
        for line in maps:
            fields = line.rstrip("\n").split(maxsplit=5)
            if len(fields) < 6:
                continue
            target = fields[5]
            deleted = target.endswith(" (deleted)")
            if deleted:
                target = target[: -len(" (deleted)")]
            if target != path:
                continue
            start, end = (int(v, 16) for v in fields[0].split("-"))
            regions.append(Region(start, end, fields[1], int(fields[2], 16), deleted))
    return regions
