"""The agent's settings, in one place, with their defaults and units.

``frontend/settings.py`` reads them from a TOML file, the environment and
the command line; this module holds what they mean and checks them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_SOCKET = "unix:///tmp/aws.iot.lookoutvision.EdgeAgent.sock"
MIB = 1024 * 1024

# Inline images go to the worker through a frontend-owned staging segment
# ("staging") or as a ZeroMQ frame ("frame"); docs/latency.md
# has the measurement behind the default.
INLINE_TRANSPORTS = ("staging", "frame")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_FORMATS = ("text", "json")


@dataclass(frozen=True)
class ModelSettings:
    """Settings of one model component; None means the agent-wide value."""

    autostart: bool = False
    cores: int | None = None
    backlog: int | None = None
    request_timeout_s: float | None = None

    def __post_init__(self) -> None:
        for name in ("cores", "backlog"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.request_timeout_s is not None and not self.request_timeout_s > 0:
            raise ValueError("request_timeout_s must be more than 0 seconds")


def parse_tcp_address(address: str, setting: str = "tcp_address") -> tuple[str, int]:
    """``PORT`` alone means loopback; ``HOST:PORT`` (``[v6]:PORT``) as given."""
    host, _, port_text = address.rpartition(":")
    if not host:
        host = "127.0.0.1"
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(
            f"{setting} {address!r} needs a port from 1 to 65535, as PORT or HOST:PORT"
        )
    return host, int(port_text)


def socket_address(value: str, setting: str = "socket") -> str:
    """``value`` as a gRPC address, or ValueError saying what to write.

    ``unix:PATH`` (``unix:///abs/path``) and ``HOST:PORT`` are gRPC's own;
    an absolute path means ``unix://PATH``.
    """
    if value.startswith("/"):
        value = f"unix://{value}"
    if value.startswith("unix:") and value.endswith("/"):
        raise ValueError(
            f"{setting} {value!r} names a directory; a Unix socket address names "
            "the socket file, such as unix:///run/edge-agent/agent.sock"
        )
    if value.startswith("unix://"):
        # gRPC takes no host here: unix://tmp/a.sock is a mistake.
        usable = value[len("unix://") :].startswith("/")
    elif value.startswith(("unix:", "unix-abstract:")):
        usable = bool(value.partition(":")[2])
    else:
        host, _, port = value.rpartition(":")
        usable = bool(host) and port.isdigit() and 1 <= int(port) <= 65535
    if usable:
        return value
    raise ValueError(
        f"{setting} {value!r} is not an address the agent can use; write "
        "unix:///path (or /path) for a Unix socket, or host:port for TCP"
    )


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
    log_format: str = "text"
    # Prometheus metrics on HOST:PORT (a bare port binds loopback); off if None.
    metrics_address: str | None = None
    models: Mapping[str, ModelSettings] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Refuse settings that would leave the agent useless, naming them."""
        # A bare absolute path stands for unix://PATH.
        object.__setattr__(self, "socket", socket_address(self.socket))
        self._check_choices()
        self._check_numbers()
        self._check_addresses()

    def _check_choices(self) -> None:
        for name, allowed in (
            ("inline_transport", INLINE_TRANSPORTS),
            ("log_format", LOG_FORMATS),
            ("log_level", LOG_LEVELS),
        ):
            value = getattr(self, name)
            if str(value).upper() not in (a.upper() for a in allowed):
                raise ValueError(f"{name} {value!r} is not one of {', '.join(allowed)}")

    def _check_numbers(self) -> None:
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
        if self.max_message_bytes < 64 * MIB:
            raise ValueError("max_message_bytes must be at least 64 MiB")

    def _check_addresses(self) -> None:
        if not 0 <= self.socket_mode <= 0o777 or self.socket_mode & 0o600 != 0o600:
            raise ValueError(
                f"socket_mode {self.socket_mode:o} must be an octal mode that lets "
                "the owner read and write, such as 0660 or 0600"
            )
        for name in ("tcp_address", "metrics_address"):
            value = getattr(self, name)
            if value is not None:
                parse_tcp_address(value, name)

    def model(self, name: str) -> ModelSettings:
        """The settings of model ``name``, agent-wide values filled in."""
        own = self.models.get(name, ModelSettings())
        return ModelSettings(
            autostart=own.autostart or name in self.autostart,
            cores=own.cores,
            backlog=own.backlog if own.backlog is not None else self.backlog,
            request_timeout_s=(
                own.request_timeout_s
                if own.request_timeout_s is not None
                else self.request_timeout_s
            ),
        )

    @property
    def autostart_models(self) -> tuple[str, ...]:
        """Models to start at launch: from ``autostart`` and per-model flags."""
        flagged = [name for name, own in self.models.items() if own.autostart]
        return tuple(dict.fromkeys([*self.autostart, *sorted(flagged)]))

    @property
    def socket_path(self) -> Path | None:
        """The Unix socket's file, when the address is a unix:// one."""
        for prefix in ("unix://", "unix:"):
            if self.socket.startswith(prefix):
                return Path(self.socket[len(prefix) :])
        return None
