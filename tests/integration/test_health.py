"""Health and reflection against a real agent, with gRPC's standard clients.

The statuses are read with ``grpc_health.v1``'s stub (Check, List and
Watch streams) across StartModel, a worker killed with SIGKILL, StopModel
and a graceful stop; the services are listed and called through
reflection alone, as grpcurl does. Every RPC has a deadline.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from google.protobuf import descriptor_pool, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from frontend._proto import edge_agent_pb2 as pb2
from tests.agent import Agent, agent_context, wait_until

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN


def check(agent: Agent, service: str) -> Any:
    stub = health_pb2_grpc.HealthStub(agent.channel)
    request = health_pb2.HealthCheckRequest(service=service)
    return stub.Check(request, timeout=5).status


def watch(agent: Agent, service: str, timeout_s: float = 30) -> Iterator[Any]:
    """The statuses a Watch stream sends, each as it arrives."""
    stub = health_pb2_grpc.HealthStub(agent.channel)
    request = health_pb2.HealthCheckRequest(service=service)
    return (reply.status for reply in stub.Watch(request, timeout=timeout_s))


def slow_request(red: int) -> pb2.DetectAnomaliesRequest:
    """A request to ``slow`` lasting about red / 25 seconds."""
    image = np.zeros((64, 64, 3), np.uint8)
    image[:, :, 0] = red
    request = pb2.DetectAnomaliesRequest(model_component="slow")
    request.bitmap.width, request.bitmap.height = 64, 64
    request.bitmap.byte_data = image.tobytes()
    return request


def test_health_follows_models_and_the_stop(model_dir: Path) -> None:
    with agent_context(
        model_dir, "--start", "red-mean", "--start", "slow", "--grace-s", "10"
    ) as agent:
        agent.wait_status("red-mean", "RUNNING")
        agent.wait_status("slow", "RUNNING")
        assert check(agent, "") == SERVING
        assert check(agent, "red-mean") == SERVING
        assert check(agent, "color-seg") == NOT_SERVING
        stub = health_pb2_grpc.HealthStub(agent.channel)
        listed = stub.List(health_pb2.HealthListRequest(), timeout=5).statuses
        assert {name: s.status for name, s in listed.items()} == {
            "": SERVING,
            "red-mean": SERVING,
            "slow": SERVING,
            "color-seg": NOT_SERVING,
            "broken": NOT_SERVING,
            "garbage": NOT_SERVING,
        }
        try:
            check(agent, "no-such-model")
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.NOT_FOUND
        else:
            raise AssertionError("Check of an unknown service answered")

        # StartModel: NOT_SERVING while STARTING, SERVING once RUNNING.
        statuses = watch(agent, "color-seg")
        assert next(statuses) == NOT_SERVING
        agent.stub.StartModel(
            pb2.StartModelRequest(model_component="color-seg"), timeout=10
        )
        assert next(statuses) == SERVING
        assert agent.status("color-seg") == "RUNNING"

        # A worker killed: NOT_SERVING while it restarts, then SERVING.
        statuses = watch(agent, "red-mean")
        assert next(statuses) == SERVING
        agent.worker("red-mean").send_signal(signal.SIGKILL)
        assert next(statuses) == NOT_SERVING
        assert agent.status("red-mean") == "STARTING"
        assert next(statuses) == SERVING
        assert agent.status("red-mean") == "RUNNING"

        # StopModel: NOT_SERVING.
        agent.stub.StopModel(
            pb2.StopModelRequest(model_component="color-seg"), timeout=30
        )
        assert check(agent, "color-seg") == NOT_SERVING
        assert check(agent, "") == SERVING

        # The stop: NOT_SERVING for all while an accepted request still
        # runs and the socket still answers; then the Watch stream ends,
        # without holding the server's stop for its grace period.
        overall = watch(agent, "")
        assert next(overall) == SERVING
        worker = agent.worker("slow")
        cpu_s = sum(worker.cpu_times()[:2])
        with ThreadPoolExecutor(1) as pool:
            accepted = pool.submit(
                agent.stub.DetectAnomalies, slow_request(80), timeout=30
            )
            wait_until(
                lambda: sum(worker.cpu_times()[:2]) > cpu_s + 0.2,
                10,
                "the slow worker to compute",
            )
            started = time.monotonic()
            agent.process.send_signal(signal.SIGTERM)
            assert next(overall) == NOT_SERVING
            assert agent.socket_path.exists()
            assert check(agent, "") == NOT_SERVING
            assert check(agent, "red-mean") == NOT_SERVING
            assert check(agent, "slow") == NOT_SERVING
            assert not accepted.done()
            assert accepted.result(timeout=20).detect_anomaly_result.anomaly_score
        try:
            next(overall)
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAVAILABLE
        else:
            raise AssertionError("the Watch stream went on after the stop")
        assert agent.process.wait(timeout=20) == 0
        assert time.monotonic() - started < 7, "a Watch stream held the stop"


def test_reflection_lists_and_calls_the_api(model_dir: Path) -> None:
    with agent_context(model_dir) as agent:
        database = ProtoReflectionDescriptorDatabase(agent.channel)
        assert set(database.get_services()) == {
            "AWS.LookoutVision.EdgeAgent",
            "grpc.health.v1.Health",
            "grpc.reflection.v1alpha.ServerReflection",
        }
        # Call ListModels from the descriptors the agent sent, no proto file.
        pool = descriptor_pool.DescriptorPool(database)
        service = pool.FindServiceByName("AWS.LookoutVision.EdgeAgent")
        assert {m.name for m in service.methods} == {
            "DetectAnomalies",
            "StartModel",
            "StopModel",
            "ListModels",
            "DescribeModel",
        }
        method = service.methods_by_name["ListModels"]
        request_class = message_factory.GetMessageClass(method.input_type)
        reply_class = message_factory.GetMessageClass(method.output_type)
        call = agent.channel.unary_unary(
            f"/{service.full_name}/{method.name}",
            request_serializer=request_class.SerializeToString,
            response_deserializer=reply_class.FromString,
        )
        reply = call(request_class(), timeout=10)
        names = {model.model_component for model in reply.models}
        assert {"red-mean", "color-seg", "slow"} <= names
