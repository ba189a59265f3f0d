"""The five Edge Agent RPCs, on top of the supervisor.

Every failure is a RequestError that ``_rpc`` turns into ``context.abort``
with a status code from the contract and a message saying what was wrong
and what is allowed; ``_rpc`` also counts and times every RPC, whatever its
outcome (``frontend/metrics.py``). The handlers run on the event loop; the
only blocking work they do is copying an inline image into a staging
segment.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import grpc

from frontend._proto import edge_agent_pb2 as pb2
from frontend._proto import edge_agent_pb2_grpc as pb2_grpc
from frontend.errors import RequestError
from frontend.metrics import Metrics
from frontend.supervisor import Model, ModelState, Supervisor
from frontend.validation import DetectJob, check_name, check_segments, parse_detect
from frontend.worker import WorkerLostError, WorkerProcess
from shared import messages
from shared.component import BACKGROUND_COLOR, BACKGROUND_NAME, ModelComponent
from shared.segments import SegmentError

log = logging.getLogger(__name__)

Context = grpc.aio.ServicerContext[Any, Any]
Reply = asyncio.Future[tuple[messages.Record, Any]]
RequestT = TypeVar("RequestT")
ResponseT = TypeVar("ResponseT")
Handler = Callable[[Any, RequestT, Context], Coroutine[Any, Any, ResponseT]]

_ERROR_CODES = {
    messages.KIND_INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    messages.KIND_INTERNAL: grpc.StatusCode.INTERNAL,
    messages.KIND_DEADLINE: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def _status(state: ModelState) -> pb2.ModelStatus.ValueType:
    return pb2.ModelStatus.Value(state.name)


def _result(
    component: ModelComponent,
    job: DetectJob,
    reply: messages.DetectReply,
    mask_payload: Any,
) -> pb2.DetectAnomalyResult:
    threshold = component.threshold
    score = min(max(reply.score, 0.0), 1.0)
    anomalous = score >= threshold
    result = pb2.DetectAnomalyResult(
        is_anomalous=anomalous,
        confidence=score if anomalous else 1.0 - score,
        anomaly_score=score,
        anomaly_threshold=threshold,
    )
    if not component.is_segmentation:
        return result
    fractions = reply.fractions
    result.anomalies.add(
        name=BACKGROUND_NAME,
        pixel_anomaly=pb2.PixelAnomaly(
            total_percentage_area=fractions[0], hex_color=BACKGROUND_COLOR
        ),
    )
    for label, fraction in zip(component.labels, fractions[1:], strict=False):
        if fraction > 0:
            result.anomalies.add(
                name=label.name,
                pixel_anomaly=pb2.PixelAnomaly(
                    total_percentage_area=fraction, hex_color=label.color
                ),
            )
    mask = result.anomaly_mask
    mask.width, mask.height = reply.mask_width, reply.mask_height
    if reply.mask_in_segment and job.mask is not None:
        mask.shared_memory_handle.name = job.mask.name
        mask.shared_memory_handle.offset = job.mask.offset
        mask.shared_memory_handle.size = reply.mask_width * reply.mask_height * 3
    elif mask_payload is not None:
        mask.byte_data = mask_payload.bytes
    return result


async def _wait(future: Reply, timeout_s: float) -> tuple[messages.Record, Any]:
    """``future``'s result within ``timeout_s``, else asyncio.TimeoutError.

    Neither a timeout nor the caller's cancellation cancels ``future``
    (the worker still holds the request), as ``wait_for(shield(...))``
    would do, with one timer and one future instead of its two tasks'
    worth of futures and callbacks per request.
    """
    if not future.done():
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()

        def wake(_: object = None) -> None:
            if not waiter.done():
                waiter.set_result(None)

        timer = loop.call_later(timeout_s, wake)
        future.add_done_callback(wake)
        try:
            await waiter
        finally:
            timer.cancel()
            future.remove_done_callback(wake)
        if not future.done():
            raise asyncio.TimeoutError
    return future.result()


def _rpc(
    name: str,
) -> Callable[[Handler[RequestT, ResponseT]], Handler[RequestT, ResponseT]]:
    """End the RPC ``name`` on a RequestError; count and time every outcome.

    ``context.abort`` raises, so the status is noted before it is called.
    A cancelled RPC counts as CANCELLED, a bug as UNKNOWN (gRPC's answer).
    """

    def decorate(handler: Handler[RequestT, ResponseT]) -> Handler[RequestT, ResponseT]:
        @functools.wraps(handler)
        async def run(
            servicer: EdgeAgentServicer, request: RequestT, context: Context
        ) -> ResponseT:
            began_s = time.monotonic()
            code = grpc.StatusCode.UNKNOWN
            try:
                response = await handler(servicer, request, context)
                code = grpc.StatusCode.OK
                return response
            except RequestError as exc:
                code = exc.code
                await context.abort(exc.code, exc.details)
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED
                raise
            finally:
                servicer.metrics.observe_rpc(
                    name,
                    servicer.model_label(request),
                    code,
                    time.monotonic() - began_s,
                )

        return run

    return decorate


class EdgeAgentServicer(pb2_grpc.EdgeAgentServicer):
    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor
        self.config = supervisor.config
        self.metrics = Metrics(supervisor)
        # Set when the agent stops: new work is refused, accepted work ends.
        self.draining = False

    def model_label(self, request: object) -> str:
        """The model a request names, if the agent knows it; else empty.

        Names the agent does not know would let any client add series to
        the metrics without bound.
        """
        name = getattr(request, "model_component", "")
        return name if name in self.supervisor.models else ""

    def _refuse_when_draining(self) -> None:
        if self.draining:
            raise RequestError(
                grpc.StatusCode.UNAVAILABLE,
                "the agent is shutting down and takes no new work; retry when "
                "it is back",
            )

    @_rpc("DetectAnomalies")
    async def DetectAnomalies(
        self, request: pb2.DetectAnomaliesRequest, context: Context
    ) -> pb2.DetectAnomaliesResponse:
        began_s = time.monotonic()
        self._refuse_when_draining()
        job = parse_detect(request)
        model = self.supervisor.get(job.model)
        timeout_s, client_limited = self._timeout(context, model)
        worker, release = model.admit()
        try:
            check_segments(job)
            future, sent_s = self._dispatch(model, worker, job, timeout_s, release)
        except BaseException:
            release()
            raise
        reply, payload = await self._reply(model, future, timeout_s, client_limited)
        assert model.component is not None
        result = _result(model.component, job, reply, payload)
        self.metrics.observe_detect(model.name, began_s, sent_s, reply)
        return pb2.DetectAnomaliesResponse(detect_anomaly_result=result)

    def _timeout(self, context: Context, model: Model) -> tuple[float, bool]:
        """Seconds to wait for the worker, and whether the client set them."""
        timeout_s = model.request_timeout_s
        remaining = context.time_remaining()
        if remaining is not None and remaining < timeout_s:
            return max(remaining, 0.0), True
        return timeout_s, False

    def _dispatch(
        self,
        model: Model,
        worker: WorkerProcess,
        job: DetectJob,
        timeout_s: float,
        release: Callable[[], None],
    ) -> tuple[Reply, float]:
        """Send the job to the worker; its slot is released with the reply.

        Returns the reply's future and when the request was sent
        (CLOCK_MONOTONIC), where its queue wait begins.
        """
        component = model.component
        assert component is not None
        pool = model.staging
        staging = None
        payload: Any = None
        image = job.image
        if job.inline is not None:
            if self.config.inline_transport == "staging" and pool is not None:
                try:
                    staging = pool.acquire(job.image_bytes)
                except SegmentError as exc:
                    raise RequestError(
                        grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc)
                    ) from None
                image = staging.write(job.inline)
            else:
                payload = job.inline
        sent_s = time.monotonic()
        request = messages.DetectRequest(
            id=worker.next_id(),
            width=job.width,
            height=job.height,
            image=image,
            mask=job.mask if component.is_segmentation else None,
            deadline_s=sent_s + timeout_s,
        )

        def finished(future: Reply) -> None:
            # The worker is done with the staging segment and the slot only
            # now, whether or not a client still waits for the answer.
            if staging is not None and pool is not None:
                pool.release(staging)
            release()
            if not future.cancelled():
                future.exception()  # retrieved: nobody may be waiting

        try:
            future = worker.submit(request, payload)
        except WorkerLostError as exc:
            if staging is not None and pool is not None:
                pool.release(staging)
            raise RequestError(grpc.StatusCode.INTERNAL, str(exc)) from None
        future.add_done_callback(finished)
        return future, sent_s

    async def _reply(
        self,
        model: Model,
        future: Reply,
        timeout_s: float,
        client_limited: bool,
    ) -> tuple[messages.DetectReply, Any]:
        """The worker's result and its mask payload, or a RequestError."""
        try:
            reply, payload = await _wait(future, timeout_s)
        except WorkerLostError as exc:
            raise RequestError(grpc.StatusCode.INTERNAL, str(exc)) from None
        except asyncio.TimeoutError:
            if client_limited:
                raise RequestError(
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    f"the client's deadline passed before model {model.name} answered",
                ) from None
            raise RequestError(
                grpc.StatusCode.INTERNAL,
                f"model {model.name} gave no answer within {timeout_s:g} s "
                "(the agent's request timeout)",
            ) from None
        if isinstance(reply, messages.ErrorReply):
            code = _ERROR_CODES.get(reply.kind, grpc.StatusCode.INTERNAL)
            raise RequestError(code, reply.message)
        assert isinstance(reply, messages.DetectReply)
        return reply, payload

    @_rpc("StartModel")
    async def StartModel(
        self, request: pb2.StartModelRequest, context: Context
    ) -> pb2.StartModelResponse:
        self._refuse_when_draining()
        model = self.supervisor.get(check_name(request.model_component), rescan=True)
        state = model.start()
        log.info("Starting model model=%s", model.name)
        return pb2.StartModelResponse(status=_status(state))

    @_rpc("StopModel")
    async def StopModel(
        self, request: pb2.StopModelRequest, context: Context
    ) -> pb2.StopModelResponse:
        self._refuse_when_draining()
        model = self.supervisor.get(check_name(request.model_component))
        state = await model.stop()
        return pb2.StopModelResponse(status=_status(state))

    @_rpc("ListModels")
    async def ListModels(
        self, request: pb2.ListModelsRequest, context: Context
    ) -> pb2.ListModelsResponse:
        self.supervisor.rescan()
        response = pb2.ListModelsResponse()
        for name in sorted(self.supervisor.models):
            model = self.supervisor.models[name]
            response.models.add(
                model_component=name,
                lookout_vision_model_arn=model.model_arn,
                status=_status(model.state),
                status_message=model.status_message,
            )
        return response

    @_rpc("DescribeModel")
    async def DescribeModel(
        self, request: pb2.DescribeModelRequest, context: Context
    ) -> pb2.DescribeModelResponse:
        model = self.supervisor.get(check_name(request.model_component), rescan=True)
        return pb2.DescribeModelResponse(
            model_description=pb2.ModelDescription(
                model_component=model.name,
                lookout_vision_model_arn=model.model_arn,
                status=_status(model.state),
                status_message=model.status_message,
            )
        )
