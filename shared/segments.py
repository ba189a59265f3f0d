"""POSIX shared-memory segments: name rules, size checks, creation.

Clients name segments with or without the leading '/' that ``shm_open``
takes; both mean the file ``/dev/shm/<name>``. A segment the agent did not
create is never unlinked by it: the client owns it. All size arithmetic is
done on Python ints, so a uint64 offset near 2**64 cannot wrap.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from dataclasses import dataclass

SHM_DIR = "/dev/shm"
MAX_NAME_BYTES = 255
# Segments the agent creates for itself carry this prefix; a client may
# not name them, or it could read another client's image or write into one.
AGENT_PREFIX = "edge-agent."


class SegmentError(ValueError):
    """A shared-memory handle that cannot be used, with the reason."""


@dataclass(frozen=True)
class SegmentRef:
    """A checked reference to ``size`` bytes at ``offset`` of a segment."""

    name: str
    offset: int
    size: int

    @property
    def path(self) -> str:
        return os.path.join(SHM_DIR, self.name)


def normalise_name(raw: str, role: str) -> str:
    """Return the segment name without its leading '/', or raise."""
    name = raw[1:] if raw.startswith("/") else raw
    if not name:
        raise SegmentError(f"{role}: the shared memory name is empty")
    if "\0" in name:
        raise SegmentError(f"{role}: the shared memory name contains NUL")
    if "/" in name:
        raise SegmentError(
            f"{role}: shared memory name {raw[:80]!r} contains '/'; a name is "
            "one '/' at most, at its start"
        )
    if name in (".", ".."):
        raise SegmentError(f"{role}: shared memory name {raw!r} is not allowed")
    if name.startswith(AGENT_PREFIX):
        raise SegmentError(
            f"{role}: shared memory name {raw[:80]!r} names a segment the agent "
            f"owns (prefix {AGENT_PREFIX!r}); pass a segment your client created"
        )
    if len(name.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
        raise SegmentError(
            f"{role}: the shared memory name is longer than {MAX_NAME_BYTES} bytes"
        )
    return name


def check_extent(
    role: str, name: str, offset: int, size: int, segment_size: int
) -> None:
    """Require ``offset + size <= segment_size`` in unbounded ints."""
    if offset + size > segment_size:
        raise SegmentError(
            f"{role}: offset {offset} + size {size} = {offset + size} runs "
            f"past the end of segment {name!r}, which holds {segment_size} bytes"
        )


def open_segment(name: str, role: str, *, writable: bool = False) -> int:
    """Open ``/dev/shm/<name>`` and return the fd, raising SegmentError.

    Only regular files are accepted: a FIFO or device under /dev/shm would
    block or misbehave when mapped.
    """
    flags = (os.O_RDWR if writable else os.O_RDONLY) | os.O_CLOEXEC
    flags |= os.O_NOFOLLOW | os.O_NONBLOCK
    try:
        fd = os.open(os.path.join(SHM_DIR, name), flags)
    except FileNotFoundError:
        raise SegmentError(
            f"{role}: shared memory segment {name!r} does not exist; create "
            "it with shm_open before the call"
        ) from None
    except PermissionError:
        access = "read and write" if writable else "read"
        raise SegmentError(
            f"{role}: the agent may not {access} shared memory segment "
            f"{name!r}; give the agent's user access to it"
        ) from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise SegmentError(
                f"{role}: {name!r} is a symbolic link, not a segment"
            ) from None
        raise SegmentError(
            f"{role}: cannot open shared memory segment {name!r}: {exc.strerror}"
        ) from exc
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise SegmentError(f"{role}: {name!r} is not a shared memory segment")
    except BaseException:
        os.close(fd)
        raise
    return fd


def segment_size(fd: int) -> int:
    return os.fstat(fd).st_size


def check_segment(ref: SegmentRef, role: str, *, writable: bool = False) -> None:
    """Check that the segment exists, may be opened, and holds the extent."""
    fd = open_segment(ref.name, role, writable=writable)
    try:
        check_extent(role, ref.name, ref.offset, ref.size, segment_size(fd))
    finally:
        os.close(fd)


def create_segment(name: str, size: int, mode: int = 0o600) -> int:
    """Create a segment of ``size`` bytes, its memory reserved, and return fd.

    ``ftruncate`` alone succeeds on a full tmpfs and the first write then
    dies with SIGBUS; ``posix_fallocate`` fails with ENOSPC instead.
    ``mode`` is set exactly, whatever the umask: a client whose agent runs
    as another user gives the agent's group read access (0640), or read
    and write for a mask segment (0660).
    """
    path = os.path.join(SHM_DIR, name)
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, mode)
        if size > 0:
            os.posix_fallocate(fd, 0, size)
    except BaseException as exc:
        os.close(fd)
        os.unlink(path)
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            raise SegmentError(
                f"no room in {SHM_DIR} for a segment of {size} bytes"
            ) from exc
        raise
    return fd


def unlink_segment(name: str) -> None:
    """Remove a segment this process created; a missing one is fine."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(SHM_DIR, name))
