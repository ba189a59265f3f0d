"""SIGHUP rescans the model directory of a real agent under traffic.

A thread sends requests to a running model the whole time; a component is
added to the directory and a stopped one removed, then SIGHUP. Health
(which, unlike ListModels, does not rescan by itself) shows what the
rescan changed; the traffic sees no error and its worker is untouched.
"""

from __future__ import annotations

import shutil
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from frontend._proto import edge_agent_pb2 as pb2
from tests.agent import Agent, agent_context, wait_until
from tests.model_factory import write_component


def red_request(model: str, red: int) -> pb2.DetectAnomaliesRequest:
    image = np.zeros((64, 64, 3), np.uint8)
    image[:, :, 0] = red
    request = pb2.DetectAnomaliesRequest(model_component=model)
    request.bitmap.width, request.bitmap.height = 64, 64
    request.bitmap.byte_data = image.tobytes()
    return request


def health_of(agent: Agent, service: str) -> str:
    """The health status's name, or NOT_FOUND for an unknown service."""
    stub = health_pb2_grpc.HealthStub(agent.channel)
    try:
        reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
    except grpc.RpcError as exc:
        return str(exc.code().name)
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


class Traffic:
    """Requests to red-mean from one thread until stopped; errors kept."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.sent = 0
        self.errors: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                reply = self.agent.stub.DetectAnomalies(
                    red_request("red-mean", 51), timeout=10
                )
            except grpc.RpcError as exc:
                self.errors.append(f"{exc.code().name}: {exc.details()}")
                continue
            score = reply.detect_anomaly_result.anomaly_score
            if abs(score - 0.2) > 1e-6:
                self.errors.append(f"score {score}, not 0.2")
            self.sent += 1


def test_sighup_rescans_while_traffic_flows(tmp_path: Path) -> None:
    models = tmp_path / "models"
    write_component(models, "red-mean")
    write_component(models, "spare", "red-mean")
    with agent_context(models, "--start", "red-mean") as agent:
        agent.wait_status("red-mean", "RUNNING")
        worker_pid = agent.worker("red-mean").pid
        assert health_of(agent, "spare") == "NOT_SERVING"
        traffic = Traffic(agent)
        with ThreadPoolExecutor(1) as pool:
            running = pool.submit(traffic.run)
            try:
                wait_until(lambda: traffic.sent > 0, 10, "traffic to flow")
                write_component(models, "late", "red-mean")
                shutil.rmtree(models / "spare")
                assert health_of(agent, "late") == "NOT_FOUND"

                before = traffic.sent
                agent.process.send_signal(signal.SIGHUP)
                wait_until(
                    lambda: health_of(agent, "late") == "NOT_SERVING",
                    10,
                    "late in health",
                )
                assert health_of(agent, "spare") == "NOT_FOUND"
                assert (
                    "Rescanned model directory "
                    f"{models} on SIGHUP: added late; removed spare" in agent.log()
                )
                wait_until(lambda: traffic.sent > before + 5, 10, "more traffic")
                listed = agent.stub.ListModels(pb2.ListModelsRequest(), timeout=10)
                names = [m.model_component for m in listed.models]
                assert names == ["late", "red-mean"]

                agent.start_model("late")
                assert health_of(agent, "late") == "SERVING"
                reply = agent.stub.DetectAnomalies(red_request("late", 102), timeout=10)
                assert abs(reply.detect_anomaly_result.anomaly_score - 0.4) < 1e-6
            finally:
                traffic.stop.set()
            running.result(timeout=30)
        assert traffic.errors == []
        assert agent.worker("red-mean").pid == worker_pid
        assert agent.process.poll() is None
