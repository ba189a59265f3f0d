"""The agent's settings, in one place, with their defaults and units."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_SOCKET = "unix:///tmp/aws.iot.lookoutvision.EdgeAgent.sock"
MIB = 1024 * 1024

# Inline images go to the worker through a frontend-owned staging segment
# ("staging") or as a ZeroMQ frame ("frame"); docs/latency.md
# has the measurement behind the default.
INLINE_TRANSPORTS = ("staging", "frame")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def parse_tcp_address(address: str) -> tuple[str, int]:
    """``PORT`` alone means loopback; ``HOST:PORT`` (``[v6]:PORT``) as given."""
    host, _, port_text = address.rpartition(":")
    if not host:
        host = "127.0.0.1"
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(
            f"tcp_address {address!r} needs a port from 1 to 65535, as PORT or "
            "HOST:PORT"
        )
    return host, int(port_text)


@dataclass(frozen=True)
class AgentConfig:
    socket: str = DEFAULT_SOCKET
    tcp_address: str | None = None
    socket_mode: int = 0o660
    model_dir: Path = field(default_factory=lambda: Path("models"))
    autostart: tuple[str, ...] = ()
    # Time SIGTERM gives accepted requests to finish.
    grace_s: float = 10.0
    # Requests admitted per model (queued in the worker or running); one
    # more is answered RESOURCE_EXHAUSTED at once.
    backlog: int = 8
    request_timeout_s: float = 30.0
    max_concurrent_rpcs: int = 1024
    heartbeat_interval_s: float = 1.0
    heartbeat_timeout_s: float = 10.0
    start_timeout_s: float = 180.0
    stop_timeout_s: float = 10.0
    restart_backoff_s: float = 0.5
    restart_backoff_max_s: float = 30.0
    # A model crashing this often within the window is marked FAILED.
    max_restarts: int = 5
    restart_window_s: float = 60.0
    max_message_bytes: int = 64 * MIB + MIB
    inline_transport: str = "staging"
    log_level: str = "INFO"

    def __post_init__(self) -> None:
        """Refuse settings that would leave the agent useless, naming them."""
        if self.inline_transport not in INLINE_TRANSPORTS:
            raise ValueError(
                f"inline_transport {self.inline_transport!r} is not one of "
                f"{', '.join(INLINE_TRANSPORTS)}"
            )
        if self.log_level.upper() not in LOG_LEVELS:
            raise ValueError(
                f"log_level {self.log_level!r} is not one of {', '.join(LOG_LEVELS)}"
            )
        for name in ("backlog", "max_restarts", "max_concurrent_rpcs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        for name in (
            "request_timeout_s",
            "heartbeat_interval_s",
            "start_timeout_s",
            "stop_timeout_s",
            "restart_backoff_s",
            "restart_window_s",
        ):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be more than 0 seconds")
        if self.grace_s < 0:
            raise ValueError("grace_s must not be negative")
        if self.heartbeat_timeout_s < 2 * self.heartbeat_interval_s:
            raise ValueError(
                f"heartbeat_timeout_s must be at least twice the heartbeat "
                f"interval ({self.heartbeat_interval_s:g} s)"
            )
        if not 0 <= self.socket_mode <= 0o777 or self.socket_mode & 0o600 != 0o600:
            raise ValueError(
                f"socket_mode {self.socket_mode:o} must be an octal mode that lets "
                "the owner read and write, such as 0660 or 0600"
            )
        if self.max_message_bytes < 64 * MIB:
            raise ValueError("max_message_bytes must be at least 64 MiB")
        if self.tcp_address is not None:
            parse_tcp_address(self.tcp_address)

    @property
    def socket_path(self) -> Path | None:
        """The Unix socket's file, when the address is a unix:// one."""
        for prefix in ("unix://", "unix:"):
            if self.socket.startswith(prefix):
                return Path(self.socket[len(prefix) :])
        return None
