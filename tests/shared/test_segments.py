"""shared.segments: name rules, extent arithmetic, opening and creating."""

from __future__ import annotations

import errno
import fcntl
import os
import secrets
import stat
from collections.abc import Callable, Iterator

import pytest

from shared.segments import (
    SHM_DIR,
    SegmentError,
    SegmentRef,
    check_extent,
    check_segment,
    create_segment,
    normalise_name,
    open_segment,
    segment_size,
    unlink_segment,
)

U64 = 2**64


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


@pytest.fixture
def shm_path() -> Iterator[Callable[[], str]]:
    """Fresh names in /dev/shm; whatever exists under them is removed after."""
    names: list[str] = []

    def make() -> str:
        names.append(f"ea-unit-{os.getpid()}-{secrets.token_hex(4)}")
        return names[-1]

    yield make
    for name in names:
        path = os.path.join(SHM_DIR, name)
        if os.path.isdir(path) and not os.path.islink(path):
            os.rmdir(path)
        elif os.path.lexists(path):
            os.unlink(path)


def write_file(name: str, data: bytes) -> None:
    fd = os.open(os.path.join(SHM_DIR, name), os.O_CREAT | os.O_EXCL | os.O_RDWR)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


# normalise_name ------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("cam0", "cam0"),
        ("/cam0", "cam0"),
        ("a..b", "a..b"),
        ("...", "..."),
        (".hidden", ".hidden"),
        ("a" * 255, "a" * 255),
        ("/" + "a" * 255, "a" * 255),
        ("é" * 127 + "a", "é" * 127 + "a"),  # 255 bytes in UTF-8
    ],
)
def test_normalise_name_accepts(raw: str, expected: str) -> None:
    assert normalise_name(raw, "bitmap") == expected


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("", "bitmap: the shared memory name is empty"),
        ("/", "bitmap: the shared memory name is empty"),
        ("a\0b", "bitmap: the shared memory name contains NUL"),
        ("/\0", "bitmap: the shared memory name contains NUL"),
        (
            "a/b",
            "bitmap: shared memory name 'a/b' contains '/'; a name is one '/' "
            "at most, at its start",
        ),
        (
            "//cam0",
            "bitmap: shared memory name '//cam0' contains '/'; a name is one '/' "
            "at most, at its start",
        ),
        (
            "../etc/passwd",
            "bitmap: shared memory name '../etc/passwd' contains '/'; a name is "
            "one '/' at most, at its start",
        ),
        ("..", "bitmap: shared memory name '..' is not allowed"),
        ("/..", "bitmap: shared memory name '/..' is not allowed"),
        (".", "bitmap: shared memory name '.' is not allowed"),
        (
            "a" * 256,
            "bitmap: the shared memory name is longer than 255 bytes",
        ),
        (
            "é" * 128,  # 128 characters, 256 bytes
            "bitmap: the shared memory name is longer than 255 bytes",
        ),
    ],
)
def test_normalise_name_rejects(raw: str, message: str) -> None:
    with pytest.raises(SegmentError) as info:
        normalise_name(raw, "bitmap")
    assert str(info.value) == message


def test_normalise_name_names_the_role() -> None:
    with pytest.raises(SegmentError) as info:
        normalise_name("", "anomaly_mask_params")
    assert str(info.value) == "anomaly_mask_params: the shared memory name is empty"


def test_normalise_name_quotes_at_most_80_characters_of_a_long_name() -> None:
    raw = "x/" + "y" * 300
    with pytest.raises(SegmentError) as info:
        normalise_name(raw, "bitmap")
    assert repr(raw[:80]) in str(info.value)
    assert "y" * 79 not in str(info.value)


def test_segment_error_is_a_value_error() -> None:
    assert issubclass(SegmentError, ValueError)


def test_segment_ref_path() -> None:
    assert SegmentRef(name="cam0", offset=0, size=3).path == "/dev/shm/cam0"


# check_extent --------------------------------------------------------------


@pytest.mark.parametrize(
    ("offset", "size", "segment"),
    [(0, 100, 100), (40, 60, 100), (100, 0, 100), (0, 0, 0), (99, 1, 100)],
)
def test_check_extent_accepts_extents_within_the_segment(
    offset: int, size: int, segment: int
) -> None:
    check_extent("bitmap", "cam0", offset, size, segment)


@pytest.mark.parametrize(
    ("offset", "size"),
    [
        (1, 100),
        (0, 101),
        (101, 0),
        (U64 - 1, 1),  # uint64 arithmetic: 0
        (U64 - 8, 16),  # uint64 arithmetic: 8, inside the segment
        (8, U64 - 8),  # uint64 arithmetic: 0
        (U64 - 1, U64 - 1),
        (U64 - 1, 0),
    ],
)
def test_check_extent_rejects_extents_past_the_end_without_wrapping(
    offset: int, size: int
) -> None:
    with pytest.raises(SegmentError) as info:
        check_extent("bitmap", "cam0", offset, size, 100)
    assert str(info.value) == (
        f"bitmap: offset {offset} + size {size} = {offset + size} runs past the "
        "end of segment 'cam0', which holds 100 bytes"
    )


def test_check_extent_message_of_a_wrapping_offset() -> None:
    with pytest.raises(SegmentError) as info:
        check_extent("anomaly_mask_params", "m", U64 - 8, 16, 4096)
    assert str(info.value) == (
        "anomaly_mask_params: offset 18446744073709551608 + size 16 = "
        "18446744073709551624 runs past the end of segment 'm', which holds "
        "4096 bytes"
    )


# open_segment --------------------------------------------------------------


def test_open_segment_opens_a_regular_segment_read_only(
    shm_path: Callable[[], str],
) -> None:
    name = shm_path()
    write_file(name, b"abcdef")
    fd = open_segment(name, "bitmap")
    try:
        assert fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY
        assert not os.get_inheritable(fd)
        assert segment_size(fd) == 6
        assert os.pread(fd, 6, 0) == b"abcdef"
        with pytest.raises(OSError) as info:
            os.pwrite(fd, b"x", 0)
        assert info.value.errno == errno.EBADF
    finally:
        os.close(fd)


def test_open_segment_writable_opens_read_write(shm_path: Callable[[], str]) -> None:
    name = shm_path()
    write_file(name, b"abcdef")
    fd = open_segment(name, "anomaly_mask_params", writable=True)
    try:
        assert fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDWR
        assert not os.get_inheritable(fd)
        os.pwrite(fd, b"X", 0)
    finally:
        os.close(fd)
    with open(os.path.join(SHM_DIR, name), "rb") as f:
        assert f.read() == b"Xbcdef"


@pytest.mark.parametrize("writable", [False, True])
def test_open_segment_missing(shm_path: Callable[[], str], writable: bool) -> None:
    name = shm_path()
    with pytest.raises(SegmentError) as info:
        open_segment(name, "bitmap", writable=writable)
    assert str(info.value) == (
        f"bitmap: shared memory segment {name!r} does not exist; create it with "
        "shm_open before the call"
    )


@pytest.mark.parametrize("writable", [False, True])
@pytest.mark.parametrize("dangling", [False, True])
def test_open_segment_refuses_a_symlink(
    shm_path: Callable[[], str], writable: bool, dangling: bool
) -> None:
    target, link = shm_path(), shm_path()
    if not dangling:
        write_file(target, b"secret")
    os.symlink(os.path.join(SHM_DIR, target), os.path.join(SHM_DIR, link))
    before = open_fds()
    with pytest.raises(SegmentError) as info:
        open_segment(link, "bitmap", writable=writable)
    assert str(info.value) == f"bitmap: {link!r} is a symbolic link, not a segment"
    assert open_fds() == before


def test_open_segment_refuses_a_directory_read_only(
    shm_path: Callable[[], str],
) -> None:
    name = shm_path()
    os.mkdir(os.path.join(SHM_DIR, name))
    before = open_fds()
    with pytest.raises(SegmentError) as info:
        open_segment(name, "bitmap")
    assert str(info.value) == f"bitmap: {name!r} is not a shared memory segment"
    assert open_fds() == before, "the fd of a refused file must be closed"


def test_open_segment_refuses_a_directory_writable(
    shm_path: Callable[[], str],
) -> None:
    name = shm_path()
    os.mkdir(os.path.join(SHM_DIR, name))
    with pytest.raises(SegmentError) as info:
        open_segment(name, "anomaly_mask_params", writable=True)
    assert str(info.value) == (
        f"anomaly_mask_params: cannot open shared memory segment {name!r}: "
        "Is a directory"
    )


@pytest.mark.parametrize("writable", [False, True])
def test_open_segment_refuses_a_fifo_without_blocking(
    shm_path: Callable[[], str], writable: bool
) -> None:
    name = shm_path()
    os.mkfifo(os.path.join(SHM_DIR, name))
    before = open_fds()
    with pytest.raises(SegmentError) as info:
        open_segment(name, "bitmap", writable=writable)
    assert str(info.value) == f"bitmap: {name!r} is not a shared memory segment"
    assert open_fds() == before, "the fd of a refused file must be closed"


@pytest.mark.parametrize(
    ("writable", "access"), [(False, "read"), (True, "read and write")]
)
def test_open_segment_permission_message(
    monkeypatch: pytest.MonkeyPatch, writable: bool, access: str
) -> None:
    # These tests run as root, which no file mode stops; simulate EACCES.
    def refuse(path: str, flags: int, mode: int = 0o777) -> int:
        raise PermissionError(errno.EACCES, "Permission denied", path)

    monkeypatch.setattr("shared.segments.os.open", refuse)
    with pytest.raises(SegmentError) as info:
        open_segment("cam0", "bitmap", writable=writable)
    assert str(info.value) == (
        f"bitmap: the agent may not {access} shared memory segment 'cam0'; give "
        "the agent's user access to it"
    )


# check_segment -------------------------------------------------------------


def test_check_segment(shm_path: Callable[[], str]) -> None:
    name = shm_path()
    write_file(name, bytes(100))
    before = open_fds()
    check_segment(SegmentRef(name, 40, 60), "bitmap")
    check_segment(SegmentRef(name, 0, 100), "m", writable=True)
    with pytest.raises(SegmentError) as info:
        check_segment(SegmentRef(name, U64 - 8, 16), "bitmap")
    assert str(info.value) == (
        f"bitmap: offset {U64 - 8} + size 16 = {U64 + 8} runs past the end of "
        f"segment {name!r}, which holds 100 bytes"
    )
    assert open_fds() == before
    assert os.path.exists(os.path.join(SHM_DIR, name))


# create_segment ------------------------------------------------------------


def test_create_segment_reserves_the_memory(shm_path: Callable[[], str]) -> None:
    name = shm_path()
    size = 3 * 1024 * 1024 + 5
    fd = create_segment(name, size)
    try:
        st = os.fstat(fd)
        assert stat.S_ISREG(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == 0o600
        assert st.st_size == size
        # ftruncate alone leaves the file sparse (no blocks); fallocate
        # reserves every page.
        assert st.st_blocks * 512 >= size
        assert fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDWR
        assert not os.get_inheritable(fd)
        assert os.pread(fd, 16, size - 16) == bytes(16)
    finally:
        os.close(fd)
    assert os.path.getsize(os.path.join(SHM_DIR, name)) == size


def test_create_segment_of_size_zero(shm_path: Callable[[], str]) -> None:
    name = shm_path()
    os.close(create_segment(name, 0))
    assert os.path.getsize(os.path.join(SHM_DIR, name)) == 0


def test_create_segment_never_takes_over_an_existing_one(
    shm_path: Callable[[], str],
) -> None:
    name = shm_path()
    write_file(name, b"client data")
    with pytest.raises(FileExistsError):
        create_segment(name, 4096)
    with open(os.path.join(SHM_DIR, name), "rb") as f:
        assert f.read() == b"client data"


def test_create_segment_full_tmpfs_raises_segment_error_and_leaves_nothing(
    shm_path: Callable[[], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[int, int]] = []

    def full(fd: int, offset: int, length: int) -> None:
        calls.append((offset, length))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("shared.segments.os.posix_fallocate", full)
    name = shm_path()
    before = open_fds()
    with pytest.raises(SegmentError) as info:
        create_segment(name, 4096)
    assert str(info.value) == "no room in /dev/shm for a segment of 4096 bytes"
    assert calls == [(0, 4096)]
    assert not os.path.lexists(os.path.join(SHM_DIR, name))
    assert open_fds() == before


def test_create_segment_other_errors_propagate_and_leave_nothing(
    shm_path: Callable[[], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr("shared.segments.os.posix_fallocate", broken)
    name = shm_path()
    before = open_fds()
    with pytest.raises(OSError) as info:
        create_segment(name, 4096)
    assert not isinstance(info.value, SegmentError)
    assert info.value.errno == errno.EIO
    assert not os.path.lexists(os.path.join(SHM_DIR, name))
    assert open_fds() == before


def test_unlink_segment(shm_path: Callable[[], str]) -> None:
    name = shm_path()
    write_file(name, b"x")
    unlink_segment(name)
    assert not os.path.lexists(os.path.join(SHM_DIR, name))
    unlink_segment(name)  # a missing one is fine


def test_create_segment_sets_the_mode_whatever_the_umask() -> None:
    name = f"ea-unit-mode-{os.getpid()}"
    old = os.umask(0o077)
    try:
        fd = create_segment(name, 4096, mode=0o660)
    finally:
        os.umask(old)
    try:
        assert os.fstat(fd).st_mode & 0o777 == 0o660
    finally:
        os.close(fd)
        unlink_segment(name)
