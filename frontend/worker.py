"""One worker process as the supervisor sees it: spawn, talk, watch, end.

The frontend binds a ZeroMQ DEALER socket on an ``ipc://`` path in its
private run directory and the worker connects to it; requests and replies
are matched by id. A receiver task reads everything the worker sends; a
watchdog task kills the worker when its heartbeats stop; a third task waits
for the process to exit and then fails every request still pending with
the exit's cause, at once.

Workers are plain subprocesses (``python -m workers``), never forked from
this process: gRPC does not survive a fork.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import zmq

from shared import messages

log = logging.getLogger(__name__)

# Exit codes of workers/main.py.
EXIT_MODEL_ERROR = 3
_DRAIN_S = 0.05


class WorkerLostError(Exception):
    """The worker exited or was killed while a request was pending."""


class WorkerStartError(Exception):
    """The worker did not become ready; ``permanent`` means do not retry."""

    def __init__(self, message: str, *, permanent: bool) -> None:
        super().__init__(message)
        self.permanent = permanent


@dataclass(frozen=True)
class WorkerSettings:
    heartbeat_interval_s: float
    heartbeat_timeout_s: float
    start_timeout_s: float
    request_timeout_s: float
    log_level: str
    log_format: str


def describe_exit(returncode: int) -> str:
    """The cause of a worker's exit, in an operator's words."""
    if returncode >= 0:
        return f"exited with status {returncode}"
    signum = -returncode
    try:
        name = signal.Signals(signum).name
    except ValueError:
        name = f"signal {signum}"
    hints = {
        int(signal.SIGKILL): " (out of memory, or killed by an operator)",
        int(signal.SIGBUS): " (a client's segment shrank while it was read?)",
        int(signal.SIGSEGV): " (a crash in the runtime)",
    }
    return f"was killed by {name}{hints.get(signum, '')}"


class WorkerProcess:
    """One incarnation of a model's worker."""

    def __init__(
        self,
        model: str,
        component_dir: Path,
        *,
        cores: list[int],
        run_dir: Path,
        context: zmq.Context[zmq.Socket[bytes]],
        settings: WorkerSettings,
        incarnation: int,
    ) -> None:
        self.model = model
        self.component_dir = component_dir
        self.cores = cores
        self.settings = settings
        self.endpoint = f"ipc://{run_dir}/{model}.{incarnation}.zmq"
        self.socket = context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        # Admission bounds what is in flight; the HWM is never the limit.
        self.socket.setsockopt(zmq.SNDHWM, 0)
        self.socket.setsockopt(zmq.RCVHWM, 0)
        try:
            self.socket.bind(self.endpoint)
        except zmq.ZMQError as exc:
            # An open socket would hold the context's term() at shutdown.
            self.socket.close(linger=0)
            raise WorkerStartError(
                f"cannot open the worker's endpoint {self.endpoint}: {exc}",
                permanent=False,
            ) from exc
        # Replies are read by a reader callback on the socket's descriptor,
        # not by zmq.asyncio's awaitables: one wake-up and no task switch
        # per message (measured about 30 to 60 us less per round trip).
        self._loop = asyncio.get_running_loop()
        self._fd = cast(int, self.socket.getsockopt(zmq.FD))
        self._loop.add_reader(self._fd, self._drain)
        self.process: asyncio.subprocess.Process | None = None
        self.pid = 0
        self.ready: asyncio.Future[messages.Ready] = (
            asyncio.get_running_loop().create_future()
        )
        self.exited: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.last_heartbeat: messages.Heartbeat | None = None
        self._last_seen = time.monotonic()
        self._fatal: messages.Fatal | None = None
        self._kill_cause: str | None = None
        self.lost_requests = 0
        self._pending: dict[int, asyncio.Future[tuple[messages.Record, Any]]] = {}
        self._ids = itertools.count(1)
        self._tasks: list[asyncio.Task[None]] = []

    async def spawn(self) -> None:
        command = [
            sys.executable, "-m", "workers",
            "--model", self.model,
            "--component-dir", str(self.component_dir),
            "--endpoint", self.endpoint,
            "--cores", ",".join(map(str, self.cores)),
            "--parent-pid", str(os.getpid()),
            "--heartbeat-interval-s", str(self.settings.heartbeat_interval_s),
            "--log-level", self.settings.log_level,
            "--log-format", self.settings.log_format,
        ]  # fmt: skip
        # numpy's BLAS pool is never used by a worker; one thread is enough.
        env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
        self.process = await asyncio.create_subprocess_exec(
            *command, stdin=asyncio.subprocess.DEVNULL, env=env
        )
        self.pid = self.process.pid
        log.info(
            "Starting worker model=%s pid=%d cores=%s", self.model, self.pid, self.cores
        )
        self._tasks = [
            asyncio.create_task(self._watch_exit(), name=f"exit-{self.model}"),
        ]

    async def wait_ready(self) -> messages.Ready:
        """Wait for the worker's Ready, or raise WorkerStartError."""
        waiting: list[asyncio.Future[Any]] = [self.ready, self.exited]
        done, _ = await asyncio.wait(
            waiting,
            timeout=self.settings.start_timeout_s,
            return_when=asyncio.FIRST_COMPLETED,
        )
        if self.ready in done:
            self._tasks.append(
                asyncio.create_task(self._watchdog(), name=f"watchdog-{self.model}")
            )
            ready: messages.Ready = self.ready.result()
            return ready
        if self.exited in done:
            fatal = self._fatal
            if fatal is not None:
                raise WorkerStartError(
                    fatal.message, permanent=fatal.kind != "internal"
                )
            assert self.process is not None
            raise WorkerStartError(
                f"worker {self.exited.result()} while loading the model",
                permanent=self.process.returncode == EXIT_MODEL_ERROR,
            )
        self.kill(f"did not become ready within {self.settings.start_timeout_s:g} s")
        await asyncio.shield(self.exited)
        raise WorkerStartError(
            f"the model did not load within {self.settings.start_timeout_s:g} s",
            permanent=False,
        )

    def submit(
        self, request: messages.DetectRequest, payload: Any
    ) -> asyncio.Future[tuple[messages.Record, Any]]:
        """Send one request; the future ends with its reply or WorkerLostError.

        The future stays pending until the worker answers or dies, even when
        the caller stops waiting for it.
        """
        if self.exited.done():
            raise WorkerLostError(f"the worker {self.exited.result()}")
        future: asyncio.Future[tuple[messages.Record, Any]] = (
            asyncio.get_running_loop().create_future()
        )
        request_id = request.id
        self._pending[request_id] = future
        future.add_done_callback(lambda _: self._pending.pop(request_id, None))
        try:
            # Never blocks: there is no high-water mark, admission bounds it.
            self.socket.send_multipart(
                messages.encode(request, payload), flags=zmq.NOBLOCK, copy=False
            )
        except zmq.ZMQError as exc:
            future.cancel()
            raise WorkerLostError(f"cannot reach the worker: {exc}") from exc
        self._drain()  # A send can take the descriptor's signal (see _drain).
        return future

    def next_id(self) -> int:
        return next(self._ids)

    @property
    def pending(self) -> int:
        return len(self._pending)

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.returncode

    async def stop(self, timeout_s: float) -> str:
        """Ask the worker to finish and exit; kill it after ``timeout_s``."""
        if not self.exited.done():
            try:
                # Never blocks (no HWM), so no await can race the socket's
                # close by the lifecycle task.
                self.socket.send_multipart(
                    messages.encode(messages.Stop()), flags=zmq.NOBLOCK
                )
            except zmq.ZMQError as exc:
                log.warning(
                    "Could not send stop model=%s pid=%d: %s", self.model, self.pid, exc
                )
            try:
                await asyncio.wait_for(asyncio.shield(self.exited), timeout_s)
            except asyncio.TimeoutError:
                self.kill(f"did not stop within {timeout_s:g} s")
        return await asyncio.shield(self.exited)

    def kill(self, cause: str) -> None:
        if self.process is None or self.exited.done():
            return
        if self._kill_cause is None:
            self._kill_cause = cause
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()

    async def close(self) -> None:
        """Release the socket and tasks once the process has exited."""
        for task in self._tasks:
            if task is not asyncio.current_task():
                task.cancel()
        try:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        finally:
            self._loop.remove_reader(self._fd)
            self.socket.close(linger=0)
            # ZeroMQ leaves a bound ipc endpoint's file behind; one per
            # worker incarnation would pile up in the run directory.
            with contextlib.suppress(OSError):
                os.unlink(self.endpoint.removeprefix("ipc://"))

    def _drain(self) -> None:
        """Handle every message waiting on the socket.

        ZeroMQ's descriptor signals edges, not levels: readable means the
        socket's state changed. So this reads until ZMQ_EVENTS says nothing
        is left, and runs after each send too, since a send may consume
        the signal of a message that arrived meanwhile.
        """
        if self.socket.closed:
            return
        while cast(int, self.socket.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
            try:
                frames = self.socket.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            self._handle(frames)

    def _handle(self, frames: list[zmq.Frame]) -> None:
        self._last_seen = time.monotonic()
        try:
            record, payload = messages.decode(frames)
        except messages.ProtocolError as exc:
            log.error(
                "Malformed message model=%s pid=%d: %s", self.model, self.pid, exc
            )
            return
        if isinstance(record, messages.Heartbeat):
            self.last_heartbeat = record
        elif isinstance(record, messages.Ready):
            if not self.ready.done():
                self.ready.set_result(record)
        elif isinstance(record, messages.Fatal):
            self._fatal = record
        elif isinstance(record, (messages.DetectReply, messages.ErrorReply)):
            future = self._pending.get(record.id)
            if future is not None and not future.done():
                future.set_result((record, payload))
        else:
            log.error(
                "Unexpected %s model=%s pid=%d",
                type(record).__name__,
                self.model,
                self.pid,
            )

    async def _watchdog(self) -> None:
        timeout_s = self.settings.heartbeat_timeout_s
        while True:
            await asyncio.sleep(min(self.settings.heartbeat_interval_s, timeout_s / 4))
            silent_s = time.monotonic() - self._last_seen
            # Heartbeats come between requests, so a worker in the middle of
            # a long one is silent; it gets as long as a request may take.
            limit_s = timeout_s
            if self._pending:
                limit_s = max(timeout_s, self.settings.request_timeout_s + 1.0)
            if silent_s > limit_s:
                log.error(
                    "Worker model=%s pid=%d sent no heartbeat for %.1f s; killing it",
                    self.model, self.pid, silent_s,
                )  # fmt: skip
                self.kill(f"stopped sending heartbeats for {silent_s:.1f} s")
                return

    async def _watch_exit(self) -> None:
        assert self.process is not None
        returncode = await self.process.wait()
        if not self.ready.done():
            # A Fatal sent just before the exit may still be on its way
            # through ZeroMQ's I/O thread; it says why the model cannot load.
            await asyncio.sleep(_DRAIN_S)
            self._drain()
        cause = describe_exit(returncode)
        if self._kill_cause is not None:
            cause = f"{self._kill_cause} and was killed"
        elif self._fatal is not None:
            cause = f"{cause}: {self._fatal.message}"
        lost = WorkerLostError(f"the worker of model {self.model} {cause}")
        for future in self._pending.values():
            if not future.done():
                future.set_exception(lost)
                self.lost_requests += 1
        self.exited.set_result(cause)
