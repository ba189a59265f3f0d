"""frontend.metrics and the servicer's RPC wrapper, on a fake supervisor.

No agent and no worker: the collector reads plain attributes, so a few
namespaces stand in for the supervisor, its models and their workers.
"""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

import grpc
import pytest

from frontend._proto import edge_agent_pb2 as pb2
from frontend.config import AgentConfig
from frontend.errors import RequestError
from frontend.metrics import Metrics, start_metrics
from frontend.servicer import EdgeAgentServicer
from frontend.supervisor import ModelState
from shared.messages import DetectReply, Heartbeat


def heartbeat(rss_bytes: int, cpu_s: float) -> Heartbeat:
    return Heartbeat(
        pid=7, state="serving", cores=[0], rss_bytes=rss_bytes, requests=3,
        latency_ms_p50=1.0, cpu_s=cpu_s,
    )  # fmt: skip


def fake_model(state: ModelState, worker: Any = None, **values: Any) -> Any:
    return SimpleNamespace(
        state=state,
        admitted=values.get("admitted", 0),
        backlog=values.get("backlog", 8),
        restarts=values.get("restarts", 0),
        worker=worker,
    )


class FakeSupervisor:
    def __init__(self, models: dict[str, Any]) -> None:
        self.config = AgentConfig()
        self.models = models

    def get(self, name: str, *, rescan: bool = False) -> Any:
        if name not in self.models:
            raise RequestError(grpc.StatusCode.NOT_FOUND, f"no {name}")
        return self.models[name]

    def rescan(self) -> None:
        pass


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_collector_reads_the_models() -> None:
    busy = fake_model(
        ModelState.RUNNING,
        SimpleNamespace(last_heartbeat=heartbeat(5 << 20, 1.5)),
        admitted=3, backlog=4, restarts=2,
    )  # fmt: skip
    starting = fake_model(ModelState.STARTING, SimpleNamespace(last_heartbeat=None))
    stopped = fake_model(ModelState.STOPPED)
    metrics = Metrics(FakeSupervisor({"a": busy, "b": starting, "c": stopped}))

    for state in ModelState:
        assert sample(
            metrics, "edge_agent_model_state", model="a", state=state.name
        ) == (1.0 if state == ModelState.RUNNING else 0.0)
    assert sample(metrics, "edge_agent_model_state", model="b", state="STARTING") == 1
    assert sample(metrics, "edge_agent_queue_depth", model="a") == 3
    assert sample(metrics, "edge_agent_backlog", model="a") == 4
    assert sample(metrics, "edge_agent_worker_restarts_total", model="a") == 2
    assert sample(metrics, "edge_agent_worker_resident_memory_bytes", model="a") == (
        5 << 20
    )
    assert sample(metrics, "edge_agent_worker_cpu_seconds_total", model="a") == 1.5
    # No heartbeat yet, or no worker: nothing to report rather than a 0.
    assert sample(metrics, "edge_agent_worker_resident_memory_bytes", model="b") is None
    assert sample(metrics, "edge_agent_worker_cpu_seconds_total", model="b") is None
    assert sample(metrics, "edge_agent_worker_cpu_seconds_total", model="c") is None
    assert sample(metrics, "edge_agent_model_state", model="c", state="STOPPED") == 1


def test_collector_follows_models_added_and_removed() -> None:
    models: dict[str, Any] = {"a": fake_model(ModelState.STOPPED)}
    metrics = Metrics(FakeSupervisor(models))
    assert sample(metrics, "edge_agent_queue_depth", model="a") == 0
    models["b"] = fake_model(ModelState.STOPPED, admitted=1)
    del models["a"]
    assert sample(metrics, "edge_agent_queue_depth", model="a") is None
    assert sample(metrics, "edge_agent_queue_depth", model="b") == 1


def test_detect_stages_add_up_to_the_total() -> None:
    metrics = Metrics(FakeSupervisor({}))
    now = time.monotonic()
    reply = DetectReply(id=1, score=0.5, inference_s=0.5, started_s=now - 0.6)
    metrics.observe_detect("a", began_s=now - 1.0, sent_s=now - 0.9, reply=reply)

    def stage(name: str) -> float:
        value = sample(
            metrics, "edge_agent_detect_stage_duration_seconds_sum", model="a",
            stage=name,
        )  # fmt: skip
        assert value is not None
        return value

    assert stage("queue") == pytest.approx(0.3)
    assert stage("inference") == 0.5
    assert stage("transfer") == pytest.approx(0.2, abs=0.05)
    buckets = "edge_agent_detect_stage_duration_seconds_bucket"
    assert sample(metrics, buckets, model="a", stage="queue", le="0.25") == 0
    assert sample(metrics, buckets, model="a", stage="queue", le="0.5") == 1


def test_a_worker_without_a_start_time_counts_its_queue_as_transfer() -> None:
    metrics = Metrics(FakeSupervisor({}))
    now = time.monotonic()
    reply = DetectReply(id=1, score=0.5, inference_s=0.25)
    metrics.observe_detect("a", began_s=now - 1.0, sent_s=now - 0.5, reply=reply)
    total = "edge_agent_detect_stage_duration_seconds_sum"
    assert sample(metrics, total, model="a", stage="queue") == 0
    transfer = sample(metrics, total, model="a", stage="transfer")
    assert transfer == pytest.approx(0.75, abs=0.05)


class FakeContext:
    def __init__(self) -> None:
        self.aborted: tuple[grpc.StatusCode, str] | None = None

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.aborted = (code, details)
        raise grpc.aio.AbortError()


def servicer_with(models: dict[str, Any]) -> EdgeAgentServicer:
    supervisor: Any = FakeSupervisor(models)
    return EdgeAgentServicer(supervisor)


def requests_total(servicer: EdgeAgentServicer, **labels: str) -> float:
    return sample(servicer.metrics, "edge_agent_requests_total", **labels) or 0.0


def test_answers_are_counted_and_timed() -> None:
    model = fake_model(ModelState.STOPPED)
    model.name, model.model_arn, model.status_message = "a", "arn:a", ""
    servicer = servicer_with({"a": model})
    context: Any = FakeContext()

    async def calls() -> None:
        await servicer.ListModels(pb2.ListModelsRequest(), context)
        await servicer.DescribeModel(
            pb2.DescribeModelRequest(model_component="a"), context
        )

    asyncio.run(calls())
    assert context.aborted is None
    assert requests_total(servicer, model="", rpc="ListModels", code="OK") == 1
    assert requests_total(servicer, model="a", rpc="DescribeModel", code="OK") == 1
    count = "edge_agent_request_duration_seconds_count"
    assert sample(servicer.metrics, count, model="a", rpc="DescribeModel") == 1


def test_errors_are_counted_with_their_code() -> None:
    servicer = servicer_with({"a": fake_model(ModelState.STOPPED)})
    context: Any = FakeContext()

    async def abort(call: Any) -> tuple[grpc.StatusCode, str]:
        with pytest.raises(grpc.aio.AbortError):
            await call
        assert context.aborted is not None
        aborted: tuple[grpc.StatusCode, str] = context.aborted
        return aborted

    def describe(name: str) -> Any:
        request = pb2.DescribeModelRequest(model_component=name)
        return servicer.DescribeModel(request, context)

    assert asyncio.run(abort(describe("nope")))[0] == grpc.StatusCode.NOT_FOUND
    code, details = asyncio.run(abort(describe("bad/name")))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details
    servicer.draining = True
    stop = servicer.StopModel(pb2.StopModelRequest(model_component="a"), context)
    assert asyncio.run(abort(stop))[0] == grpc.StatusCode.UNAVAILABLE

    rpc = "DescribeModel"
    # Names the agent does not know share the empty label.
    assert requests_total(servicer, model="", rpc=rpc, code="NOT_FOUND") == 1
    assert requests_total(servicer, model="", rpc=rpc, code="INVALID_ARGUMENT") == 1
    assert requests_total(servicer, model="a", rpc="StopModel", code="UNAVAILABLE") == 1
    count = "edge_agent_request_duration_seconds_count"
    assert sample(servicer.metrics, count, model="", rpc=rpc) == 2


def test_a_cancelled_rpc_counts_as_cancelled() -> None:
    model = fake_model(ModelState.RUNNING)
    servicer = servicer_with({"a": model})

    async def cancelled() -> None:
        stopping = asyncio.Event()

        async def stop() -> ModelState:
            stopping.set()
            await asyncio.Event().wait()  # until cancelled
            return ModelState.STOPPED

        model.stop = stop
        request = pb2.StopModelRequest(model_component="a")
        context: Any = FakeContext()
        call = asyncio.ensure_future(servicer.StopModel(request, context))
        await asyncio.wait_for(stopping.wait(), 5)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call

    asyncio.run(cancelled())
    assert requests_total(servicer, model="a", rpc="StopModel", code="CANCELLED") == 1
    assert requests_total(servicer, model="a", rpc="StopModel", code="OK") == 0


def test_off_unless_configured() -> None:
    assert start_metrics(AgentConfig(), servicer_with({})) is None
