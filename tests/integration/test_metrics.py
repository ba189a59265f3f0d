"""The Prometheus endpoint of a real agent, scraped over HTTP on loopback.

One agent serves the module (red-mean RUNNING, metrics on a free port);
each test reads the counters before and after its own requests, so the
tests assert exact differences whatever ran before them. Every scrape and
RPC is bounded in time.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from frontend._proto import edge_agent_pb2 as pb2
from frontend.metrics import STAGES
from tests.agent import ROOT, Agent, agent_context, wait_until
from tests.integration.test_faults import detect, inline_request, slow_image
from tests.integration.test_listening import free_port

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


class Scraper:
    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}/metrics"

    def text(self) -> str:
        with urllib.request.urlopen(self.url, timeout=10) as reply:
            assert reply.status == 200
            body: bytes = reply.read()
        return body.decode()

    def samples(self) -> Samples:
        found: Samples = {}
        for family in text_string_to_metric_families(self.text()):
            for sample in family.samples:
                found[(sample.name, frozenset(sample.labels.items()))] = sample.value
        return found


def value(samples: Samples, name: str, **labels: str) -> float:
    """A sample's value; a series not exported yet counts as 0."""
    return samples.get((name, frozenset(labels.items())), 0.0)


@pytest.fixture(scope="module")
def metrics_agent(model_dir: Path) -> Iterator[tuple[Agent, Scraper]]:
    port = free_port()
    with agent_context(model_dir, "--start", "red-mean", "--metrics", str(port)) as a:
        a.wait_status("red-mean", "RUNNING")
        yield a, Scraper(port)


def detect_code(agent: Agent, request: pb2.DetectAnomaliesRequest) -> grpc.StatusCode:
    try:
        agent.stub.DetectAnomalies(request, timeout=10)
    except grpc.RpcError as exc:
        code: grpc.StatusCode = exc.code()
        return code
    return grpc.StatusCode.OK


def test_counters_move_by_exactly_the_requests_sent(
    metrics_agent: tuple[Agent, Scraper],
) -> None:
    agent, scraper = metrics_agent
    before = scraper.samples()

    image = slow_image(51)
    codes = [detect_code(agent, inline_request("red-mean", image)) for _ in range(3)]
    too_small = inline_request("red-mean", np.zeros((8, 8, 3), np.uint8))
    short = inline_request("red-mean", image)
    short.bitmap.byte_data = short.bitmap.byte_data[:-1]
    codes += [detect_code(agent, too_small), detect_code(agent, short)]
    codes.append(detect_code(agent, inline_request("no-such-model", image)))
    agent.stub.ListModels(pb2.ListModelsRequest(), timeout=10)
    ok, invalid = grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT
    assert codes == [ok, ok, ok, invalid, invalid, grpc.StatusCode.NOT_FOUND]

    after = scraper.samples()

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    requests = "edge_agent_requests_total"
    detect = {"rpc": "DetectAnomalies"}
    assert moved(requests, model="red-mean", code="OK", **detect) == 3
    assert moved(requests, model="red-mean", code="INVALID_ARGUMENT", **detect) == 2
    # A name the agent does not know gets no series of its own.
    assert moved(requests, model="", code="NOT_FOUND", **detect) == 1
    assert moved(requests, model="", rpc="ListModels", code="OK") == 1
    assert not any(("model", "no-such-model") in labels for _, labels in after), (
        "an unknown name must not become a label"
    )

    duration = "edge_agent_request_duration_seconds_count"
    assert moved(duration, model="red-mean", **detect) == 5
    assert moved(duration, model="", **detect) == 1
    assert moved(duration, model="", rpc="ListModels") == 1
    # Stages only for the requests the worker answered with a result.
    stage_count = "edge_agent_detect_stage_duration_seconds_count"
    stage_sum = "edge_agent_detect_stage_duration_seconds_sum"
    for stage in STAGES:
        assert moved(stage_count, model="red-mean", stage=stage) == 3
        assert 0 <= moved(stage_sum, model="red-mean", stage=stage) < 10
    assert moved(stage_sum, model="red-mean", stage="inference") > 0
    stages_s = sum(moved(stage_sum, model="red-mean", stage=s) for s in STAGES)
    total_s = moved(
        "edge_agent_request_duration_seconds_sum", model="red-mean", **detect
    )
    assert stages_s <= total_s


def test_models_queue_depth_and_worker(metrics_agent: tuple[Agent, Scraper]) -> None:
    agent, scraper = metrics_agent
    samples = wait_until(
        lambda: (
            (s := scraper.samples())
            and value(s, "edge_agent_worker_resident_memory_bytes", model="red-mean")
            and s
        ),
        15,
        "a heartbeat's memory in the metrics",
    )
    state = "edge_agent_model_state"
    assert value(samples, state, model="red-mean", state="RUNNING") == 1
    for other in ("STOPPED", "STARTING", "FAILED", "STOPPING"):
        assert value(samples, state, model="red-mean", state=other) == 0
    assert value(samples, state, model="color-seg", state="STOPPED") == 1
    assert value(samples, state, model="color-seg", state="RUNNING") == 0
    assert value(samples, "edge_agent_queue_depth", model="red-mean") == 0
    assert value(samples, "edge_agent_backlog", model="red-mean") == 8
    rss = value(samples, "edge_agent_worker_resident_memory_bytes", model="red-mean")
    worker_rss = agent.worker("red-mean").memory_info().rss
    assert 0.5 * worker_rss < rss < 2 * worker_rss
    assert value(samples, "edge_agent_worker_cpu_seconds_total", model="red-mean") > 0
    # Only running models have a worker to measure.
    assert ("edge_agent_worker_resident_memory_bytes", frozenset(
        {("model", "color-seg")}
    )) not in samples  # fmt: skip
    assert value(samples, "process_resident_memory_bytes") > 0


def test_queue_depth_and_queue_wait(metrics_agent: tuple[Agent, Scraper]) -> None:
    """Two slow requests at once: the second waits for the first."""
    agent, scraper = metrics_agent
    agent.start_model("slow")
    depth = "edge_agent_queue_depth"
    queue_sum = "edge_agent_detect_stage_duration_seconds_sum"
    before = value(scraper.samples(), queue_sum, model="slow", stage="queue")
    try:
        with ThreadPoolExecutor(max_workers=2) as pool:
            calls = [
                pool.submit(detect, agent.stub, inline_request("slow", slow_image(12)))
                for _ in range(2)
            ]
            wait_until(
                lambda: value(scraper.samples(), depth, model="slow") == 2,
                10,
                "two requests admitted",
            )
            outcomes = [call.result(timeout=30) for call in calls]
        assert [o.code for o in outcomes] == [grpc.StatusCode.OK] * 2
        after = scraper.samples()
        assert value(after, depth, model="slow") == 0
        # About one request's run (12 x 100 loops of ~0.4 ms), well above 0.
        waited_s = value(after, queue_sum, model="slow", stage="queue") - before
        assert 0.2 < waited_s < 5
    finally:
        agent.stub.StopModel(pb2.StopModelRequest(model_component="slow"), timeout=30)
    state = value(
        scraper.samples(), "edge_agent_model_state", model="slow", state="STOPPED"
    )
    assert state == 1


def test_restart_after_the_worker_is_killed(
    metrics_agent: tuple[Agent, Scraper],
) -> None:
    agent, scraper = metrics_agent
    restarts = "edge_agent_worker_restarts_total"
    before = value(scraper.samples(), restarts, model="red-mean")
    worker = agent.worker("red-mean")
    worker.kill()
    worker.wait(10)
    # The worker is gone before the frontend has noticed: until it has, the
    # model still reads RUNNING, so wait for the restart to be counted.
    wait_until(
        lambda: value(scraper.samples(), restarts, model="red-mean") == before + 1,
        10,
        "the restart to be counted",
    )
    agent.wait_status("red-mean", "RUNNING", timeout_s=30)
    after = scraper.samples()
    assert value(after, restarts, model="red-mean") == before + 1
    assert value(after, "edge_agent_model_state", model="red-mean", state="RUNNING")
    assert value(after, "edge_agent_queue_depth", model="red-mean") == 0


def listening(pid: int) -> set[tuple[str, int]]:
    return {
        (conn.laddr.ip, conn.laddr.port)
        for conn in psutil.Process(pid).net_connections("tcp")
        if conn.status == psutil.CONN_LISTEN
    }


def test_binds_loopback_only(metrics_agent: tuple[Agent, Scraper]) -> None:
    agent, scraper = metrics_agent
    port = int(scraper.url.split(":")[2].split("/")[0])
    assert listening(agent.pid) == {("127.0.0.1", port)}


def test_off_by_default(model_dir: Path) -> None:
    with agent_context(model_dir) as agent:
        assert listening(agent.pid) == set()
        assert "Metrics ready" not in agent.log()


def test_a_taken_port_is_a_configuration_error(model_dir: Path, tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [
                sys.executable, "-m", "frontend", "serve",
                "--socket", f"unix://{tmp_path}/agent.sock",
                "--model-dir", str(model_dir),
                "--metrics", str(port),
            ],
            cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert f"cannot serve metrics on {port}" in done.stderr
    # Refused before the socket accepted: no "ready", no traceback.
    assert "Agent ready" not in done.stderr
    # An agent that never started logs the reason, and no "stopped".
    assert "Cannot start" in done.stderr.splitlines()[-1]
    assert "Agent stopped" not in done.stderr
    assert "Traceback" not in done.stderr and "never awaited" not in done.stderr
    assert not (tmp_path / "agent.sock").exists()
