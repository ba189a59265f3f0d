"""The frontend process: the gRPC server, its socket, and its shutdown.

Threads: the asyncio event loop runs the gRPC server (the Edge Agent API,
health and reflection), the supervisor, every worker's ZeroMQ traffic and
the systemd watchdog pings; gRPC adds its own polling threads. Signal
handlers only set an event; the loop does the work. SIGHUP rescans the
model directory. SIGTERM or SIGINT stops the agent:

1. health NOT_SERVING for all and ``STOPPING=1`` to systemd;
2. stop accepting RPCs, give accepted ones ``grace_s`` to finish;
3. stop every worker (each finishes what it received, or is killed);
4. remove the socket file and the run directory; exit 0.

``READY=1`` goes to systemd once the socket accepts and every autostart
model has settled (RUNNING, FAILED or STOPPED), or ``start_timeout_s``
after the start at the latest, so that a model that cannot start never
keeps the agent from being ready (``frontend/systemd.py``).

Exit codes: 0 after a clean stop, 2 for a configuration error (a bad
setting, an address another live agent serves), 1 for a runtime failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import signal
import socket
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import grpc

from frontend.config import AgentConfig, parse_tcp_address
from frontend.decoding import add_edge_agent_service
from frontend.errors import RequestError
from frontend.health import HealthService, enable_reflection
from frontend.metrics import MetricsEndpoint, start_metrics
from frontend.runs import remove_dead_run_dirs
from frontend.servicer import EdgeAgentServicer
from frontend.staging import remove_dead_runs_segments
from frontend.supervisor import RescanResult, Supervisor
from frontend.systemd import Notifier, announce_ready
from shared.malloc import freeze_startup_objects

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_RUNTIME_FAILURE = 1
EXIT_CONFIG_ERROR = 2


class StartupError(Exception):
    """The agent cannot start with this configuration; exit code 2."""


def _tcp_target(address: str) -> str:
    host, port = parse_tcp_address(address)
    return f"{host}:{port}"


def claim_socket(path: Path) -> IO[str]:
    """Lock ``<path>.lock`` and clear a stale socket file, or raise.

    The lock makes two agents racing for one path safe; the connect probe
    also catches a live server that is not ours (such as the original
    agent), whose socket we must not take over.
    """
    if not path.parent.is_dir():
        # Deployments rely on this; a typo in the path shows up here.
        log.warning(
            "Creating the socket's directory %s, which did not exist", path.parent
        )
        path.parent.mkdir(parents=True, exist_ok=True)
    lock = open(f"{path}.lock", "a+")  # noqa: SIM115 -- held for the run
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise StartupError(
            f"another edge-agent holds {path}.lock and serves {path}"
        ) from None
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return lock
    if not stat.S_ISSOCK(mode):
        lock.close()
        raise StartupError(f"{path} exists and is not a socket; refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except ConnectionRefusedError:
        log.warning("Removing stale socket %s left by a dead agent", path)
        path.unlink()
        return lock
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            lock.close()
            raise StartupError(f"cannot probe {path}: {exc.strerror}") from exc
        return lock
    finally:
        probe.close()
    lock.close()
    raise StartupError(f"a live server already answers on {path}; refusing to start")


def build_server(
    config: AgentConfig, servicer: EdgeAgentServicer, health: HealthService
) -> grpc.aio.Server:
    limit = config.max_message_bytes
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
            ("grpc.so_reuseport", 0),
        ],
        maximum_concurrent_rpcs=config.max_concurrent_rpcs,
    )
    add_edge_agent_service(servicer, server)
    health.add_to_server(server)
    enable_reflection(server)
    return server


def _bind(server: grpc.aio.Server, address: str) -> None:
    try:
        port = server.add_insecure_port(address)
    except RuntimeError as exc:
        raise StartupError(f"cannot listen on {address}: {exc}") from exc
    if port == 0:
        raise StartupError(f"cannot listen on {address}")


async def serve(config: AgentConfig) -> int:
    """Run the agent until SIGTERM or SIGINT; return the exit code."""
    socket_path = config.socket_path
    lock = claim_socket(socket_path) if socket_path is not None else None
    started = True
    try:
        return await _serve(config)
    except StartupError:
        # The caller says why; an agent that never started never stopped.
        started = False
        raise
    finally:
        if socket_path is not None:
            socket_path.unlink(missing_ok=True)
        if lock is not None:
            lock.close()
        if started:
            log.info("Agent stopped")


async def _serve(config: AgentConfig) -> int:
    remove_dead_runs_segments()
    remove_dead_run_dirs()
    notifier = Notifier.from_environ(os.environ)
    supervisor = Supervisor(config)
    metrics: MetricsEndpoint | None = None
    watchdog = asyncio.create_task(notifier.feed_watchdog(), name="watchdog")
    trimmer = asyncio.create_task(
        supervisor.release_memory_when_idle(), name="release-memory"
    )
    try:
        with _rescan_on_hangup(config, supervisor):
            _check_model_dir(config, supervisor)
            health = HealthService(supervisor)
            servicer = EdgeAgentServicer(supervisor)
            # Metrics first: a taken port is a configuration error, to be
            # refused before the socket accepts and the agent says ready.
            metrics = start_metrics(config, servicer)
            server = await _start_server(config, servicer, health)
            _autostart(config, supervisor)
            freeze_startup_objects()
            readiness = asyncio.create_task(
                announce_ready(config, supervisor, notifier), name="readiness"
            )
            try:
                await _wait_for_stop_signal()
            finally:
                readiness.cancel()
                await asyncio.gather(readiness, return_exceptions=True)
            await _drain(
                config, servicer, supervisor, server, health=health, notifier=notifier
            )
        return EXIT_OK
    finally:
        try:
            await supervisor.shutdown(config.grace_s)
        finally:
            if metrics is not None:
                metrics.close()
            watchdog.cancel()
            trimmer.cancel()
            await asyncio.gather(watchdog, trimmer, return_exceptions=True)
            notifier.close()


async def _start_server(
    config: AgentConfig, servicer: EdgeAgentServicer, health: HealthService
) -> grpc.aio.Server:
    """Listen on the socket (and TCP); the agent is SERVING from here on."""
    server = build_server(config, servicer, health)
    _bind(server, config.socket)
    if config.tcp_address:
        _bind(server, _tcp_target(config.tcp_address))
    await server.start()
    if config.socket_path is not None:
        os.chmod(config.socket_path, config.socket_mode)
    health.serving()
    log.info(
        "Agent ready on %s%s, %d model component(s) in %s",
        config.socket,
        f" and {_tcp_target(config.tcp_address)}" if config.tcp_address else "",
        len(servicer.supervisor.models),
        config.model_dir,
    )
    return server


async def _drain(
    config: AgentConfig,
    servicer: EdgeAgentServicer,
    supervisor: Supervisor,
    server: grpc.aio.Server,
    *,
    health: HealthService,
    notifier: Notifier,
) -> None:
    """Finish accepted requests within the grace period, refusing new ones.

    Health says NOT_SERVING first, so that a load balancer or monitor
    learns of the stop before any call is refused. New work is refused
    with UNAVAILABLE while the socket still accepts, so a client learns
    why; then gRPC stops, and the workers after it.
    """
    log.info("Stopping agent: grace %g s for accepted requests", config.grace_s)
    health.stopping()
    notifier.stopping(f"Stopping: grace {config.grace_s:g} s for accepted requests")
    deadline = time.monotonic() + config.grace_s
    servicer.draining = True
    if not await supervisor.drain(config.grace_s):
        log.error(
            "Requests still unfinished after the grace period of %g s: %s",
            config.grace_s,
            supervisor.describe_admitted(),
        )
    health.close()
    await server.stop(max(deadline - time.monotonic(), 0.5))


def _check_model_dir(config: AgentConfig, supervisor: Supervisor) -> None:
    if not config.model_dir.is_dir():
        log.warning(
            "Model directory %s does not exist; no components until it does",
            config.model_dir,
        )
    unknown = [n for n in config.autostart_models if n not in supervisor.models]
    known = ", ".join(sorted(supervisor.models)) or "none"
    if unknown:
        raise StartupError(
            f"cannot start {', '.join(unknown)}: no such component in "
            f"{config.model_dir} (found: {known})"
        )
    for name in sorted(set(config.models) - set(supervisor.models)):
        # Likely a typo; not an error, since the component may be added
        # later (SIGHUP rescans), when these settings apply.
        log.warning(
            "The configuration has settings for model=%s, but %s has no such "
            "component (found: %s); they apply if it is added",
            name,
            config.model_dir,
            known,
        )


def _autostart(config: AgentConfig, supervisor: Supervisor) -> None:
    for name in config.autostart_models:
        try:
            supervisor.get(name).start()
        except RequestError as exc:
            log.error("Cannot autostart model=%s: %s", name, exc.details)
        else:
            log.info("Starting model model=%s (autostart)", name)


async def _wait_for_stop_signal() -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)


@contextlib.contextmanager
def _rescan_on_hangup(config: AgentConfig, supervisor: Supervisor) -> Iterator[None]:
    """While inside, SIGHUP rescans the model directory (on the loop)."""
    loop = asyncio.get_running_loop()
    hangup = asyncio.Event()

    async def rescan_each_time() -> None:
        while True:
            await hangup.wait()
            hangup.clear()
            _log_rescan(config, supervisor.rescan())

    task = asyncio.create_task(rescan_each_time(), name="rescan")
    loop.add_signal_handler(signal.SIGHUP, hangup.set)
    try:
        yield
    finally:
        loop.remove_signal_handler(signal.SIGHUP)
        # Ignored, not fatal, while the workers stop.
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        task.cancel()


def _log_rescan(config: AgentConfig, result: RescanResult) -> None:
    changes = [
        f"{what} {', '.join(names)}"
        for what, names in (("added", result.added), ("removed", result.removed))
        if names
    ]
    if len(result.kept) == 1:
        changes.append(
            f"kept {result.kept[0]}: its folder is gone but the model is running; "
            "it is dropped at the first rescan after it stops"
        )
    elif result.kept:
        changes.append(
            f"kept {', '.join(result.kept)}: their folders are gone but the models "
            "are running; each is dropped at the first rescan after it stops"
        )
    log.info(
        "Rescanned model directory %s on SIGHUP: %s",
        config.model_dir,
        "; ".join(changes) or "no change",
    )
