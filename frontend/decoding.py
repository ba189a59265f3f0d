"""Registering the EdgeAgent service with request decoding in our hands.

The generated ``add_EdgeAgentServicer_to_server`` gives gRPC the messages'
``FromString`` as deserializers; a request whose bytes do not decode then
fails inside gRPC, which answers UNKNOWN "Unexpected DecodeError" and never
reaches the servicer. Here gRPC hands the handlers the raw bytes, and the
decoding happens first thing in the handler, where a failure becomes
INVALID_ARGUMENT with a message naming the RPC and the expected message.
The work per request is the same parse, on the same thread.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError, Message

from frontend._proto import edge_agent_pb2 as pb2

SERVICE = "AWS.LookoutVision.EdgeAgent"
log = logging.getLogger(__name__)

Context = grpc.aio.ServicerContext[Any, Any]


class Throttle:
    """At most one log line per `interval_s` for a fault a client repeats at
    will; the next line says how many were not logged meanwhile."""

    def __init__(
        self, interval_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.interval_s = interval_s
        self.clock = clock
        self._next_s = float("-inf")
        self._quiet = 0

    def allow(self) -> int | None:
        """The count of unlogged events before this one, or None: stay quiet."""
        now = self.clock()
        if now < self._next_s:
            self._quiet += 1
            return None
        self._next_s = now + self.interval_s
        quiet, self._quiet = self._quiet, 0
        return quiet


_undecodable = Throttle(60.0)

Behaviour = Callable[[Any, Context], Awaitable[Message]]


def _decoding(
    rpc: str, request_type: type[Message], behaviour: Behaviour, metrics: Any
) -> Callable[[bytes, Context], Awaitable[Message]]:
    async def handler(raw: bytes, context: Context) -> Message:
        began_s = time.monotonic()
        try:
            request = request_type.FromString(raw)
        except DecodeError as exc:
            quiet = _undecodable.allow()
            if quiet is not None:
                log.warning(
                    "%s: a request of %d bytes did not decode%s", rpc, len(raw),
                    f" ({quiet} more since the last such line)" if quiet else "",
                )  # fmt: skip
            metrics.observe_rpc(
                rpc, "", grpc.StatusCode.INVALID_ARGUMENT, time.monotonic() - began_s
            )
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"the {rpc} request is not a valid {request_type.DESCRIPTOR.full_name} "
                f"protobuf message ({exc}); send the message the EdgeAgent "
                "service defines",
            )
            raise  # abort raises; this line is never reached
        return await behaviour(request, context)

    return handler


def add_edge_agent_service(servicer: Any, server: grpc.aio.Server) -> None:
    """Register every RPC of the service's descriptor on `servicer`'s methods.

    A request that does not decode is counted in `servicer.metrics` like
    every other refusal, with no model (its name could not be read).
    """
    service = pb2.DESCRIPTOR.services_by_name["EdgeAgent"]
    handlers = {}
    for method in service.methods:
        request_type = getattr(pb2, method.input_type.name)
        response_type = getattr(pb2, method.output_type.name)
        handlers[method.name] = grpc.unary_unary_rpc_method_handler(
            _decoding(
                method.name,
                request_type,
                getattr(servicer, method.name),
                servicer.metrics,
            ),
            request_deserializer=None,
            response_serializer=response_type.SerializeToString,
        )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE, handlers),)
    )
    # What the generated code does too: the registered path skips the
    # generic handlers' lookup per call (not in grpc's type stubs yet).
    register = server.add_registered_method_handlers  # type: ignore[attr-defined]
    register(SERVICE, handlers)
