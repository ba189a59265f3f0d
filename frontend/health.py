"""The standard gRPC health service (``grpc.health.v1``) and reflection.

Service ``""`` is the agent as a whole: NOT_SERVING until its socket
accepts, SERVING after, NOT_SERVING again from the moment a graceful stop
begins, whatever the models do then. Each model component has a service
named as the component (``brick-texture``): SERVING while the model is
RUNNING, NOT_SERVING in every other state. A component that a rescan
drops is forgotten: Check answers NOT_FOUND and Watch SERVICE_UNKNOWN, as
for a name never known; one that a rescan adds starts NOT_SERVING.

Threads: everything runs on the frontend's event loop. Statuses change in
the supervisor's listeners, which must not block, so a change updates a
dict and wakes the Watch streams. When the server is about to stop, Watch
streams end with UNAVAILABLE after sending the NOT_SERVING they owe, so
that no watcher holds the server's stop for its whole grace period.

This is not grpc_health's reference servicer because that one's ``set``
is a coroutine (the listeners are plain callbacks), it cannot forget a
service, and its Watch streams stay open through the server's grace.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from frontend._proto import edge_agent_pb2 as pb2
from frontend.supervisor import Model, ModelState, RescanResult, Supervisor

log = logging.getLogger(__name__)

Context = grpc.aio.ServicerContext[Any, Any]

OVERALL = ""
SERVING: int = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING: int = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN: int = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN

HEALTH_SERVICE: str = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
EDGE_AGENT_SERVICE: str = pb2.DESCRIPTOR.services_by_name["EdgeAgent"].full_name


def _model_status(state: ModelState) -> int:
    return SERVING if state == ModelState.RUNNING else NOT_SERVING


class HealthService:
    """Health statuses of the agent and of each model component."""

    def __init__(self, supervisor: Supervisor) -> None:
        self._supervisor = supervisor
        self._statuses: dict[str, int] = {OVERALL: NOT_SERVING}
        for model in supervisor.models.values():
            self._statuses[model.name] = _model_status(model.state)
        # Replaced at every change: a watcher waits on the one it saw.
        self._changed = asyncio.Event()
        self._stopping = False
        self._closed = False
        supervisor.state_listeners.append(self._on_state)
        supervisor.rescan_listeners.append(self._on_rescan)

    def add_to_server(self, server: grpc.aio.Server) -> None:
        health_pb2_grpc.add_HealthServicer_to_server(self, server)

    def status(self, service: str) -> int | None:
        return self._statuses.get(service)

    def serving(self) -> None:
        """The socket accepts: the agent as a whole is SERVING."""
        self._set(OVERALL, SERVING)

    def stopping(self) -> None:
        """A graceful stop begins: NOT_SERVING for all, for good."""
        for service in self._statuses:
            self._statuses[service] = NOT_SERVING
        self._stopping = True
        self._wake()

    def close(self) -> None:
        """The server stops next: end every Watch stream."""
        self._closed = True
        self._wake()

    def _on_state(self, model: Model, state: ModelState) -> None:
        # A model a rescan dropped has no status left to change.
        if self._supervisor.models.get(model.name) is model:
            self._set(model.name, _model_status(state))

    def _on_rescan(self, result: RescanResult) -> None:
        if self._stopping:
            return
        for name in result.removed:
            self._statuses.pop(name, None)
        for name in result.added:
            self._statuses[name] = _model_status(self._supervisor.models[name].state)
        self._wake()

    def _set(self, service: str, status: int) -> None:
        if self._stopping or self._statuses.get(service) == status:
            return
        self._statuses[service] = status
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    # -- grpc.health.v1.Health ---------------------------------------------

    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: Context
    ) -> health_pb2.HealthCheckResponse:
        status = self._statuses.get(request.service)
        if status is None:
            known = ", ".join(repr(s) for s in sorted(self._statuses))
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"no health service {request.service!r}; known: {known} ('' is "
                "the agent, the others are model components)",
            )
        return health_pb2.HealthCheckResponse(status=status)

    async def List(
        self, request: health_pb2.HealthListRequest, context: Context
    ) -> health_pb2.HealthListResponse:
        return health_pb2.HealthListResponse(
            statuses={
                service: health_pb2.HealthCheckResponse(status=status)
                for service, status in self._statuses.items()
            }
        )

    async def Watch(
        self, request: health_pb2.HealthCheckRequest, context: Context
    ) -> None:
        last: int | None = None
        while True:
            # Taken before the status is read, so no change is missed
            # while a write is in progress.
            changed = self._changed
            status = self._statuses.get(request.service, SERVICE_UNKNOWN)
            if status != last:
                await context.write(health_pb2.HealthCheckResponse(status=status))
                last = status
            if self._closed:
                await context.abort(
                    grpc.StatusCode.UNAVAILABLE, "the agent is shutting down"
                )
            await changed.wait()


def enable_reflection(server: grpc.aio.Server) -> None:
    """Let grpcurl and grpc_cli list and call the services without protos."""
    reflection.enable_server_reflection(
        (EDGE_AGENT_SERVICE, HEALTH_SERVICE, reflection.SERVICE_NAME), server
    )
