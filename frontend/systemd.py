"""Telling systemd how the agent is doing: the sd_notify protocol, by hand.

A ``Type=notify`` service sends datagrams to the AF_UNIX socket named by
``$NOTIFY_SOCKET`` (a path, or an abstract name written with a leading
``@``): ``READY=1`` once it serves, ``STATUS=...`` for ``systemctl
status``, ``STOPPING=1`` when a stop begins, and ``WATCHDOG=1`` at least
every ``$WATCHDOG_USEC`` microseconds when the unit sets ``WatchdogSec=``.
Without ``$NOTIFY_SOCKET`` every call does nothing, so the agent runs the
same outside systemd.

What the agent says: ``READY=1`` once every autostart model has settled
(RUNNING, FAILED or STOPPED), or ``start_timeout_s`` after the start at
the latest, so that a model that cannot start never keeps the agent from
being ready; ``STATUS=`` names the models by state, then and after each
change.

Threads: none of its own. Sends never block: a datagram systemd has no
room for is dropped with a warning. Watchdog pings come from a task on the
event loop every half of ``$WATCHDOG_USEC``, so a loop that hangs stops
them, and systemd kills and restarts the agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import MutableMapping

from frontend.config import AgentConfig
from frontend.supervisor import ModelState, Supervisor

log = logging.getLogger(__name__)

NOTIFY_SOCKET = "NOTIFY_SOCKET"
WATCHDOG_USEC = "WATCHDOG_USEC"
WATCHDOG_PID = "WATCHDOG_PID"


def _address(name: str) -> bytes:
    """The socket address for sendto; ``@name`` is in the abstract namespace."""
    if name.startswith("@"):
        return b"\0" + os.fsencode(name[1:])
    return os.fsencode(name)


def _watchdog_interval_s(usec: str | None, pid: str | None) -> float | None:
    """Seconds between pings, or None when the watchdog is not ours to feed."""
    if not usec:
        return None
    if pid and pid != str(os.getpid()):
        log.info("Not feeding the systemd watchdog: it watches pid=%s, not ours", pid)
        return None
    try:
        limit_us = int(usec)
    except ValueError:
        limit_us = 0
    if limit_us <= 0:
        log.warning("Ignoring %s=%r: not a positive integer", WATCHDOG_USEC, usec)
        return None
    return limit_us / 2 / 1e6


class Notifier:
    """The agent's messages to its service manager; inert without one."""

    def __init__(self, socket_name: str | None, watchdog_s: float | None) -> None:
        self.socket_name = socket_name
        # Seconds between watchdog pings; None when no watchdog is armed.
        self.watchdog_s = watchdog_s if socket_name else None
        self._address = _address(socket_name) if socket_name else b""
        self._socket: socket.socket | None = None
        self._failing = False
        # Set by STOPPING=1: from then on STATUS= says only that.
        self.stop_announced = False
        if socket_name:
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._socket.setblocking(False)

    @classmethod
    def from_environ(cls, environ: MutableMapping[str, str]) -> Notifier:
        """Read the service manager's variables and unset them.

        Unset, as sd_notify's ``unset_environment`` does, so that the
        workers the agent spawns do not inherit them.
        """
        socket_name = environ.pop(NOTIFY_SOCKET, "") or None
        watchdog_s = _watchdog_interval_s(
            environ.pop(WATCHDOG_USEC, None), environ.pop(WATCHDOG_PID, None)
        )
        return cls(socket_name, watchdog_s)

    @property
    def enabled(self) -> bool:
        return self._socket is not None

    def notify(self, *assignments: str) -> None:
        """Send ``KEY=VALUE`` assignments in one datagram."""
        if self._socket is None:
            return
        data = "\n".join(a.replace("\n", " ") for a in assignments).encode()
        try:
            self._socket.sendto(data, self._address)
        except OSError as exc:
            # Said once per run of failures, as the watchdog would repeat it.
            if not self._failing:
                log.warning(
                    "Cannot notify systemd on %s: %s", self.socket_name, exc.strerror
                )
            self._failing = True
            return
        if self._failing:
            log.info("Notifying systemd on %s works again", self.socket_name)
        self._failing = False

    def ready(self, status: str) -> None:
        self.notify("READY=1", f"STATUS={status}")

    def status(self, status: str) -> None:
        self.notify(f"STATUS={status}")

    def stopping(self, status: str) -> None:
        self.stop_announced = True
        self.notify("STOPPING=1", f"STATUS={status}")

    async def feed_watchdog(self) -> None:
        """Ping the watchdog from the event loop until cancelled."""
        if self.watchdog_s is None:
            return
        log.info("Feeding the systemd watchdog every %.3g s", self.watchdog_s)
        while True:
            self.notify("WATCHDOG=1")
            await asyncio.sleep(self.watchdog_s)

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


_SETTLED = (ModelState.RUNNING, ModelState.FAILED, ModelState.STOPPED)


async def announce_ready(
    config: AgentConfig, supervisor: Supervisor, notifier: Notifier
) -> None:
    """Send READY=1 once the autostart models settled, then keep STATUS fresh.

    A model settles as RUNNING, FAILED or STOPPED; one still STARTING
    ``start_timeout_s`` after the start (a worker that crashes while
    loading and is restarted) does not hold READY any longer, and STATUS
    says it is still starting.
    """
    if not notifier.enabled:
        return
    names = config.autostart_models
    settled = asyncio.Event()

    def check(*_: object) -> None:
        if all(
            name not in supervisor.models or supervisor.models[name].state in _SETTLED
            for name in names
        ):
            settled.set()

    supervisor.state_listeners.append(check)
    try:
        check()
        if not settled.is_set():
            notifier.status(f"Starting {', '.join(names)}")
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(settled.wait(), config.start_timeout_s)
    finally:
        supervisor.state_listeners.remove(check)

    def report(*_: object) -> None:
        if not notifier.stop_announced:
            notifier.status(status_line(config, supervisor))

    status = status_line(config, supervisor)
    notifier.ready(status)
    log.info("Told systemd READY=1: %s", status)
    supervisor.state_listeners.append(report)
    supervisor.rescan_listeners.append(report)


def status_line(config: AgentConfig, supervisor: Supervisor) -> str:
    """Which models run and which do not, for ``systemctl status``."""
    parts = []
    for state in ModelState:
        models = [m for _, m in sorted(supervisor.models.items()) if m.state == state]
        if not models:
            continue
        if state == ModelState.STOPPED:
            parts.append(f"{len(models)} STOPPED")
        elif state == ModelState.FAILED:
            failed = ", ".join(f"{m.name} ({m.status_message[:80]})" for m in models)
            parts.append(f"FAILED {failed}")
        else:
            parts.append(f"{state.name} {', '.join(m.name for m in models)}")
    return f"Serving on {config.socket}; models: {'; '.join(parts) or 'none'}"
