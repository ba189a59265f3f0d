"""systemd's notify protocol against a real agent.

The test binds the datagram socket systemd would and hands its path to
the agent as ``$NOTIFY_SOCKET``, with ``$WATCHDOG_USEC`` set, then reads
what arrives: watchdog pings, ``READY=1`` once the autostart models have
settled (one RUNNING, one broken and FAILED), ``STOPPING=1`` on SIGTERM.
Every receive is bounded.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.agent import Agent, agent_context


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[socket.socket]:
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(str(tmp_path / "notify.sock"))
    try:
        yield receiver
    finally:
        receiver.close()


def receive_until(
    receiver: socket.socket, wanted: str, timeout_s: float
) -> list[dict[str, str]]:
    """Datagrams as KEY=VALUE dicts, up to and including one with ``wanted``."""
    deadline = time.monotonic() + timeout_s
    received: list[dict[str, str]] = []
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"no {wanted} within {timeout_s:g} s: {received}")
        receiver.settimeout(remaining)
        data = receiver.recv(4096).decode()
        fields = dict(line.split("=", 1) for line in data.splitlines())
        received.append(fields)
        key, value = wanted.split("=", 1)
        if fields.get(key) == value:
            return received


def test_ready_watchdog_and_stopping(
    model_dir: Path, notify_socket: socket.socket
) -> None:
    env = {
        "NOTIFY_SOCKET": notify_socket.getsockname(),
        "WATCHDOG_USEC": "200000",
    }
    with agent_context(
        model_dir, "--start", "red-mean", "--start", "broken", env=env
    ) as agent:
        before = receive_until(notify_socket, "READY=1", 30)
        # READY only once red-mean is RUNNING and broken has FAILED.
        log = agent.log()
        assert "Model ready model=red-mean" in log
        assert "Model model=broken cannot start" in log
        ready = before[-1]
        assert "RUNNING red-mean" in ready["STATUS"]
        assert "FAILED broken (the component is broken" in ready["STATUS"]
        assert agent.status("red-mean") == "RUNNING"
        assert all("READY" not in fields for fields in before[:-1])

        # Pings every 0.1 s, from the agent itself.
        started = time.monotonic()
        for _ in range(5):
            receive_until(notify_socket, "WATCHDOG=1", 5)
        assert time.monotonic() - started < 2
        assert _worker_environ(agent).isdisjoint(
            {"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"}
        )

        agent.process.send_signal(signal.SIGTERM)
        stopping = receive_until(notify_socket, "STOPPING=1", 10)[-1]
        assert stopping["STATUS"].startswith("Stopping")
        assert agent.process.wait(timeout=30) == 0
        # While the models stop, STATUS= no longer claims the agent serves.
        notify_socket.setblocking(False)
        after = []
        with contextlib.suppress(BlockingIOError):
            while True:
                after.append(notify_socket.recv(4096).decode())
        assert set(after) <= {"WATCHDOG=1"}


def _worker_environ(agent: Agent) -> set[str]:
    """Names in the environment of red-mean's worker."""
    pid = agent.worker("red-mean").pid
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return {entry.split(b"=", 1)[0].decode() for entry in raw.split(b"\0") if entry}


def test_ready_at_once_without_autostart_no_watchdog_for_another_pid(
    model_dir: Path, notify_socket: socket.socket
) -> None:
    env = {
        "NOTIFY_SOCKET": notify_socket.getsockname(),
        "WATCHDOG_USEC": "100000",
        # The watchdog watches some other process: not ours to feed.
        "WATCHDOG_PID": str(os.getpid()),
    }
    with agent_context(model_dir, env=env) as agent:
        received = receive_until(notify_socket, "READY=1", 30)
        assert received[-1]["STATUS"].startswith(f"Serving on {agent.address}")
        notify_socket.settimeout(0.5)
        with pytest.raises(TimeoutError):
            notify_socket.recv(4096)
