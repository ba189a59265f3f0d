"""The supervisor: every model component the agent knows, and its worker.

Each model has a state (STOPPED, STARTING, RUNNING, FAILED, STOPPING) and,
while started, a lifecycle task that spawns its worker, waits for it to be
ready, and when the worker dies restarts it with exponential backoff. A
model that crashes ``max_restarts`` times within ``restart_window_s`` is
marked FAILED with the last cause; a model that cannot be loaded at all is
FAILED at once.

Requests are admitted per model up to its backlog; the admitted count is
what StopModel drains before it stops the worker. All of this runs on the
frontend's event loop: no locks, state changes happen between awaits.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import shutil
import signal
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import psutil
import zmq

from frontend.config import AgentConfig, ModelSettings
from frontend.cores import CoreAllocator
from frontend.errors import RequestError
from frontend.runs import make_run_dir, remove_snapshot, snapshot_component
from frontend.staging import StagingPool
from frontend.worker import WorkerProcess, WorkerSettings, WorkerStartError
from shared.component import (
    MANIFEST_FILE,
    MODEL_FILE,
    ComponentError,
    ModelComponent,
    check_component_name,
    load_component,
    scan_model_dir,
)
from shared.malloc import release_free_memory

log = logging.getLogger(__name__)

# How often an idle frontend gives free heap pages back.
_IDLE_TRIM_S = 5.0
# Loading a graph takes about this many times its file's size in memory.
_LOAD_MEMORY_FACTOR = 3


class ModelState(enum.IntEnum):
    """Numbered as the wire's ModelStatus."""

    STOPPED = 0
    STARTING = 1
    RUNNING = 2
    FAILED = 3
    STOPPING = 4


class Model:
    """One model component and, while it is started, its worker."""

    def __init__(self, name: str, path: Path, supervisor: Supervisor) -> None:
        self.name = name
        self.path = path
        self.supervisor = supervisor
        self.state = ModelState.STOPPED
        self.status_message = ""
        self.component: ModelComponent | None = None
        self.worker: WorkerProcess | None = None
        self.staging: StagingPool | None = None
        self.admitted = 0
        self.restarts = 0
        self._last_crash = ""
        self._drained = asyncio.Event()
        self._drained.set()
        self._stop_requested = False
        self._lifecycle: asyncio.Task[None] | None = None
        self._incarnation = 0
        self._starts = 0

    @property
    def model_arn(self) -> str:
        if self.component is None:
            with contextlib.suppress(ComponentError):
                self.component = load_component(self.path)
        return self.component.model_arn if self.component else ""

    @property
    def settings(self) -> ModelSettings:
        return self.supervisor.config.model(self.name)

    @property
    def backlog(self) -> int:
        # AgentConfig.model() fills in the agent-wide value.
        backlog = self.settings.backlog
        assert backlog is not None
        return backlog

    @property
    def request_timeout_s(self) -> float:
        timeout_s = self.settings.request_timeout_s
        assert timeout_s is not None
        return timeout_s

    async def drained(self) -> None:
        await self._drained.wait()

    def _set_state(self, state: ModelState, message: str = "") -> None:
        changed = state != self.state
        self.state = state
        self.status_message = message
        if changed:
            for listener in self.supervisor.state_listeners:
                listener(self, state)

    # -- StartModel / StopModel ----------------------------------------

    def start(self) -> ModelState:
        if self.state not in (ModelState.STOPPED, ModelState.FAILED):
            raise RequestError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"model {self.name} is already {self.state.name}; StartModel is "
                "allowed only when it is STOPPED or FAILED",
            )
        try:
            component = load_component(self.path)
        except ComponentError as exc:
            self._set_state(ModelState.FAILED, f"the component is broken: {exc}")
            log.error("Model model=%s cannot start: %s", self.name, exc)
            return ModelState.STARTING
        self._check_memory(component)
        self.component = component
        self._starts += 1
        self._stop_requested = False
        self.restarts = 0
        self._last_crash = ""
        self._set_state(ModelState.STARTING, "loading")
        self._lifecycle = asyncio.create_task(
            self._run_lifecycle(component), name=f"lifecycle-{self.name}"
        )
        return ModelState.STARTING

    def _check_memory(self, component: ModelComponent) -> None:
        files = [component.model_path, *component.path.glob("*.data")]
        needed = _LOAD_MEMORY_FACTOR * sum(f.stat().st_size for f in files)
        available = psutil.virtual_memory().available
        if needed > available:
            raise RequestError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"not enough memory to load model {self.name}: it needs about "
                f"{needed // 2**20} MiB, {available // 2**20} MiB are available",
            )

    async def stop(self) -> ModelState:
        if self.state != ModelState.RUNNING:
            raise RequestError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"model {self.name} is {self.state.name}; StopModel is allowed "
                "only when it is RUNNING",
            )
        self._set_state(ModelState.STOPPING)
        log.info(
            "Stopping model model=%s (%d request(s) to finish)",
            self.name,
            self.admitted,
        )
        await self._halt(self.supervisor.config.grace_s)
        return self.state

    async def shutdown(self, grace_s: float) -> None:
        """Stop whatever the model is doing, for the agent's exit."""
        if self._lifecycle is not None and not self._lifecycle.done():
            self._set_state(ModelState.STOPPING)
            await self._halt(grace_s)

    async def _halt(self, grace_s: float) -> None:
        try:
            await asyncio.wait_for(self._drained.wait(), grace_s)
        except asyncio.TimeoutError:
            log.error(
                "Model model=%s: %d request(s) unfinished after %g s; stopping anyway",
                self.name, self.admitted, grace_s,
            )  # fmt: skip
        self._stop_requested = True
        worker = self.worker
        if worker is not None:
            await worker.stop(self.supervisor.config.stop_timeout_s)
        lifecycle = self._lifecycle
        if lifecycle is not None:
            # After a clean stop the lifecycle ends by itself; one that is
            # still loading or backing off before a restart is cancelled.
            await asyncio.wait([lifecycle], timeout=1.0)
            lifecycle.cancel()
            await asyncio.gather(lifecycle, return_exceptions=True)
        self._set_state(ModelState.STOPPED)
        log.info("Model stopped model=%s", self.name)

    # -- The worker's life -------------------------------------------------

    async def _run_lifecycle(self, component: ModelComponent) -> None:
        config = self.supervisor.config
        crashes: deque[float] = deque()
        backoff_s = config.restart_backoff_s
        snapshot: Path | None = None
        try:
            while not self._stop_requested:
                # Every worker of this start, restarts included, loads one
                # copy (see frontend.runs.snapshot_component).
                taken = await self._copy_to_run(snapshot, component)
                if taken is None:
                    return
                snapshot, component = taken
                cause, served_s, client_fault = await self._run_worker(component)
                if cause is None or self._stop_requested:
                    return
                now = time.monotonic()
                # A segment truncated under the worker is the client's
                # fault: restart, but do not let one client mark the model
                # FAILED for all.
                if not client_fault:
                    crashes.append(now)
                while crashes and now - crashes[0] > config.restart_window_s:
                    crashes.popleft()
                if served_s > config.restart_window_s:
                    backoff_s = config.restart_backoff_s
                if len(crashes) >= config.max_restarts:
                    message = (
                        f"the worker crashed {len(crashes)} times within "
                        f"{config.restart_window_s:g} s; last: {cause}"
                    )
                    log.error("Model model=%s FAILED: %s", self.name, message)
                    self._set_state(ModelState.FAILED, message)
                    return
                self.restarts += 1
                self._last_crash = cause
                self._set_state(ModelState.STARTING, f"restarting: {cause}")
                log.warning(
                    "Restarting model=%s in %.1f s: %s", self.name, backoff_s, cause
                )
                await asyncio.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, config.restart_backoff_max_s)
        except WorkerStartError as exc:
            log.error("Model model=%s FAILED: %s", self.name, exc)
            self._set_state(ModelState.FAILED, str(exc))
        except Exception as exc:
            # A bug or an unforeseen OS error: the model must not stay
            # STARTING with nobody left to move it on.
            log.exception("Model model=%s FAILED: internal error", self.name)
            self._set_state(ModelState.FAILED, f"internal error: {exc!r}")
        finally:
            self.supervisor.cores.release(self.name)
            if self.staging is not None:
                self.staging.close()
                self.staging = None
            if snapshot is not None:
                remove_snapshot(snapshot)

    async def _snapshot(
        self, source: Path, failure: str
    ) -> tuple[Path, ModelComponent] | None:
        """Copy `source` into the run directory and load the copy; on an
        error the model is FAILED with `failure` and the reason, and None
        is returned."""
        snapshot: Path | None = None
        try:
            snapshot = await asyncio.to_thread(
                snapshot_component, source, self.supervisor.run_dir, self._starts
            )
            component = load_component(snapshot)
        except (OSError, ComponentError) as exc:
            if snapshot is not None:
                remove_snapshot(snapshot)
            message = f"{failure}: {exc}"
            log.error("Model model=%s FAILED: %s", self.name, message)
            self._set_state(ModelState.FAILED, message)
            return None
        self.component = component
        return snapshot, component

    async def _copy_to_run(
        self, snapshot: Path | None, component: ModelComponent
    ) -> tuple[Path, ModelComponent] | None:
        """The copy the next worker runs: taken now for the first worker,
        kept for restarts, taken anew if it was removed under us (a tmp
        cleaner ages long-lived files: the folder is then all there is)."""
        if snapshot is None:
            return await self._snapshot(
                component.path, "cannot take the copy of the component it runs"
            )
        if (snapshot / MANIFEST_FILE).is_file():
            return snapshot, component
        log.warning(
            "The copy of model=%s in %s is gone; copying %s again",
            self.name, snapshot.parent, self.path,
        )  # fmt: skip
        remove_snapshot(snapshot)
        return await self._snapshot(
            self.path, "its copy was removed; copying it again failed"
        )

    async def _run_worker(
        self, component: ModelComponent
    ) -> tuple[str | None, float, bool]:
        """Run one worker until it exits.

        Returns the cause of a crash (None after a requested stop), the
        seconds it served, and whether the crash was a SIGBUS, which a
        client causes by truncating a segment the worker reads.
        """
        self._incarnation += 1
        try:
            worker = self._new_worker(component)
        except WorkerStartError as exc:
            return str(exc), 0.0, False
        self.worker = worker
        try:
            await worker.spawn()
            try:
                ready = await worker.wait_ready()
            except WorkerStartError as exc:
                if exc.permanent:
                    raise
                return str(exc), 0.0, False
            if self.staging is None:
                self.staging = StagingPool(self.name, self.backlog)
            self._check_pinning(worker)
            # After a restart the message keeps telling the operator why.
            self._set_state(
                ModelState.RUNNING,
                f"restarted {self.restarts} time(s); last cause: {self._last_crash}"
                if self.restarts
                else "",
            )
            log.info(
                "Model ready model=%s pid=%d cores=%s (load %.2f s, warm-up %.2f s)",
                self.name, ready.pid, ready.cores, ready.load_s, ready.warmup_s,
            )  # fmt: skip
            started = time.monotonic()
            cause = await asyncio.shield(worker.exited)
            served_s = time.monotonic() - started
            if self._stop_requested:
                return None, served_s, False
            lost = worker.lost_requests
            # Lost requests are lost work; a crash between requests is a
            # fault the restart recovers.
            log.log(
                logging.ERROR if lost else logging.WARNING,
                "Worker model=%s pid=%d %s; %d request(s) failed",
                self.name, worker.pid, cause, lost,
            )  # fmt: skip
            return cause, served_s, worker.returncode == -signal.SIGBUS
        finally:
            try:
                if not worker.exited.done():
                    worker.kill("its model was stopped")
                    await asyncio.shield(worker.exited)
            finally:
                self.worker = None
                await worker.close()

    def _new_worker(self, component: ModelComponent) -> WorkerProcess:
        """The next incarnation's process object, its endpoint bound.

        Raises WorkerStartError (not permanent) when the endpoint cannot be
        bound, e.g. the run directory was removed or made read-only.
        """
        supervisor = self.supervisor
        supervisor.run_dir.mkdir(mode=0o700, exist_ok=True)
        return WorkerProcess(
            self.name,
            component.path,
            cores=supervisor.cores.assign(
                self.name, self.settings.cores or component.cores
            ),
            run_dir=supervisor.run_dir,
            context=supervisor.zmq_context,
            settings=supervisor.worker_settings(self.request_timeout_s),
            incarnation=self._incarnation,
        )

    def _check_pinning(self, worker: WorkerProcess) -> None:
        """Confirm every thread of the worker runs on its cores only."""
        try:
            threads = psutil.Process(worker.pid).threads()
            stray = {
                t.id
                for t in threads
                if sorted(psutil.Process(t.id).cpu_affinity() or []) != worker.cores
            }
        except psutil.Error:
            return  # it died meanwhile; the exit watcher reports it
        if stray:
            log.warning(
                "Worker model=%s pid=%d has %d thread(s) outside cores %s",
                self.name, worker.pid, len(stray), worker.cores,
            )  # fmt: skip

    # -- Admission -----------------------------------------------------

    def admit(self) -> tuple[WorkerProcess, Callable[[], None]]:
        """Take one of the model's backlog slots for a request.

        Returns the worker and a release function. The slot is held until
        the worker has answered or died, not merely until the client gives
        up: an abandoned request still occupies the worker.
        """
        worker = self.worker
        if self.state != ModelState.RUNNING or worker is None:
            detail = f" ({self.status_message})" if self.status_message else ""
            raise RequestError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"model {self.name} is {self.state.name}{detail}; DetectAnomalies "
                "needs it RUNNING (start it with StartModel)",
            )
        backlog = self.backlog
        if self.admitted >= backlog:
            raise RequestError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"model {self.name} has {backlog} requests in progress, its "
                "backlog limit; retry after a short delay",
            )
        self.admitted += 1
        self._drained.clear()
        released = False

        def release() -> None:
            nonlocal released
            if released:
                return
            released = True
            self.admitted -= 1
            if self.admitted == 0:
                self._drained.set()

        return worker, release


@dataclass(frozen=True)
class RescanResult:
    """What a rescan of the model directory changed, by component name."""

    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    # Gone from the directory but still started: kept until stopped, and
    # dropped by the first rescan after that.
    kept: tuple[str, ...] = ()

    @property
    def changed(self) -> bool:
        return bool(self.added or self.removed)


class Supervisor:
    """All known models, the cores they share and the workers' plumbing."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.models: dict[str, Model] = {}
        # Called on the event loop after every change of a model's state
        # (health status, metrics); they must not block or raise.
        self.state_listeners: list[Callable[[Model, ModelState], None]] = []
        # Called on the event loop after a rescan added or removed models;
        # the same rules apply.
        self.rescan_listeners: list[Callable[[RescanResult], None]] = []
        self.cores = CoreAllocator()
        self.zmq_context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.run_dir = make_run_dir()
        self.rescan()

    def worker_settings(self, request_timeout_s: float) -> WorkerSettings:
        config = self.config
        return WorkerSettings(
            heartbeat_interval_s=config.heartbeat_interval_s,
            heartbeat_timeout_s=config.heartbeat_timeout_s,
            start_timeout_s=config.start_timeout_s,
            request_timeout_s=request_timeout_s,
            log_level=config.log_level,
            log_format=config.log_format,
        )

    def rescan(self) -> RescanResult:
        """Pick up components added to the model directory, drop removed ones.

        A removed component is dropped only when STOPPED or FAILED; a
        started one keeps serving. Models that stay are not touched.
        """
        found = scan_model_dir(self.config.model_dir)
        added = [name for name in found if name not in self.models]
        for name in added:
            self.models[name] = Model(name, self.config.model_dir / name, self)
        removed: list[str] = []
        kept: list[str] = []
        for name in list(self.models):
            if name in found:
                continue
            if self.models[name].state in (ModelState.STOPPED, ModelState.FAILED):
                del self.models[name]
                removed.append(name)
            else:
                kept.append(name)
        result = RescanResult(tuple(added), tuple(removed), tuple(kept))
        if result.changed:
            for listener in self.rescan_listeners:
                listener(result)
        return result

    def get(self, name: str, *, rescan: bool = False) -> Model:
        model = self.models.get(name)
        if model is None and rescan:
            self.rescan()
            model = self.models.get(name)
        if model is None:
            known = ", ".join(sorted(self.models)) or "none"
            raise RequestError(
                grpc.StatusCode.NOT_FOUND,
                f"no model component named {name!r} in {self.config.model_dir}"
                f"{self._why_not_a_component(name)}; known components: {known}",
            )
        return model

    def _why_not_a_component(self, name: str) -> str:
        """Why a folder of that name is no component, or "" if none exists."""
        if check_component_name(name) is not None:
            return ""  # validation refuses such names before they get here
        folder = self.config.model_dir / name
        if not folder.is_dir():
            return ""
        return (
            f" (the folder {folder} exists but holds no {MANIFEST_FILE}; a "
            f"component is a folder with {MANIFEST_FILE} and {MODEL_FILE})"
        )

    async def drain(self, timeout_s: float) -> bool:
        """Wait until no model has admitted requests; False on timeout."""
        waits = [model.drained() for model in self.models.values()]
        try:
            await asyncio.wait_for(asyncio.gather(*waits), timeout_s)
        except asyncio.TimeoutError:
            return False
        return True

    async def release_memory_when_idle(self, period_s: float = _IDLE_TRIM_S) -> None:
        """Return free heap to the system whenever no request is in flight.

        Large image buffers stay in the heap while traffic flows (see
        shared/malloc.py); a quiet moment gives their pages back.
        """
        trimmed = True
        while True:
            await asyncio.sleep(period_s)
            busy = any(model.admitted for model in self.models.values())
            if busy:
                trimmed = False
            elif not trimmed:
                release_free_memory()
                trimmed = True

    def describe_admitted(self) -> str:
        busy = [f"{m.name}: {m.admitted}" for m in self.models.values() if m.admitted]
        return ", ".join(busy) or "none"

    async def shutdown(self, grace_s: float) -> None:
        await asyncio.gather(*(m.shutdown(grace_s) for m in self.models.values()))
        # destroy, not term: a socket left open by a failed start must not
        # block the exit.
        self.zmq_context.destroy(linger=0)
        # Sockets, and the snapshot of a lifecycle cancelled mid-copy.
        shutil.rmtree(self.run_dir, ignore_errors=True)
