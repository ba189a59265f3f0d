"""The sd_notify client: addresses, the environment, the watchdog interval."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from frontend.systemd import Notifier


@pytest.fixture
def abstract_receiver() -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket in the abstract namespace, and its ``@`` name."""
    name = f"edge-agent-test-{os.getpid()}"
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(f"\0{name}")
    receiver.settimeout(5)
    try:
        yield receiver, f"@{name}"
    finally:
        receiver.close()


def test_abstract_socket_and_environment_unset(
    abstract_receiver: tuple[socket.socket, str],
) -> None:
    receiver, name = abstract_receiver
    environ = {"NOTIFY_SOCKET": name, "WATCHDOG_USEC": "3000000", "HOME": "/x"}
    notifier = Notifier.from_environ(environ)
    try:
        assert environ == {"HOME": "/x"}
        assert notifier.watchdog_s == 1.5
        notifier.ready("Serving\nall")
        assert receiver.recv(4096) == b"READY=1\nSTATUS=Serving all"
        notifier.stopping("Stopping")
        assert receiver.recv(4096) == b"STOPPING=1\nSTATUS=Stopping"
    finally:
        notifier.close()


def test_watchdog_pings_from_the_loop(
    abstract_receiver: tuple[socket.socket, str],
) -> None:
    receiver, name = abstract_receiver
    notifier = Notifier(name, watchdog_s=0.01)

    async def feed_a_while() -> None:
        task = asyncio.create_task(notifier.feed_watchdog())
        await asyncio.sleep(0.1)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    try:
        asyncio.run(feed_a_while())
        assert receiver.recv(4096) == b"WATCHDOG=1"
        assert receiver.recv(4096) == b"WATCHDOG=1"
    finally:
        notifier.close()


@pytest.mark.parametrize(
    ("usec", "pid", "interval_s"),
    [
        ("500000", None, 0.25),
        ("500000", "self", 0.25),
        ("500000", "1", None),  # another process's watchdog
        ("0", None, None),
        ("soon", None, None),
        (None, None, None),
    ],
)
def test_watchdog_interval(
    usec: str | None, pid: str | None, interval_s: float | None
) -> None:
    environ = {"NOTIFY_SOCKET": "/run/systemd/notify"}
    if usec is not None:
        environ["WATCHDOG_USEC"] = usec
    if pid is not None:
        environ["WATCHDOG_PID"] = str(os.getpid()) if pid == "self" else pid
    notifier = Notifier.from_environ(environ)
    try:
        assert notifier.watchdog_s == interval_s
    finally:
        notifier.close()


def test_inert_without_notify_socket() -> None:
    notifier = Notifier.from_environ({"WATCHDOG_USEC": "1000000"})
    assert not notifier.enabled
    assert notifier.watchdog_s is None
    notifier.ready("Serving")  # nothing to send to, nothing raised
    asyncio.run(notifier.feed_watchdog())  # returns at once
    notifier.close()


def test_a_failing_socket_is_reported_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    notifier = Notifier(str(tmp_path / "gone.sock"), watchdog_s=None)
    try:
        with caplog.at_level(logging.WARNING, logger="frontend.systemd"):
            for _ in range(3):
                notifier.notify("WATCHDOG=1")
        warnings = [r.getMessage() for r in caplog.records]
        assert len(warnings) == 1
        assert "Cannot notify systemd on" in warnings[0]
    finally:
        notifier.close()
