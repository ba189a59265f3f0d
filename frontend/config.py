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
        if self.inline_transport not in INLINE_TRANSPORTS:
            raise ValueError(
                f"inline_transport {self.inline_transport!r} is not one of "
                f"{', '.join(INLINE_TRANSPORTS)}"
            )
        if self.backlog < 1:
            raise ValueError("backlog must be at least 1")

    @property
    def socket_path(self) -> Path | None:
        """The Unix socket's file, when the address is a unix:// one."""
        for prefix in ("unix://", "unix:"):
            if self.socket.startswith(prefix):
                return Path(self.socket[len(prefix) :])
        return None
