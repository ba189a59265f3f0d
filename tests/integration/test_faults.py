"""Faults against a real agent: crashes, overload, signals, stale state.

Every test runs its own agent (they kill, stop or overload it) with real
worker processes, ZeroMQ, shared memory and the ONNX models of
tests/model_factory.py. The ``slow`` model runs 100 x the first pixel's red
value loop iterations (about 0.4 ms each), so ``slow_image(30)`` keeps its
worker busy for about 1.3 s and a test chooses how long a request lasts.

Every wait is bounded; concurrent requests run in threads and are collected
through futures with timeouts.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import psutil
import pytest

from frontend._proto import edge_agent_pb2 as pb2
from frontend._proto import edge_agent_pb2_grpc as pb2_grpc
from frontend.client import ClientSegment
from tests.agent import (
    ROOT,
    Agent,
    agent_context,
    agent_segments,
    serves,
    wait_until,
)
from tests.model_factory import write_component

SIDE = 64
IMAGE_BYTES = SIDE * SIDE * 3


# -- Requests -------------------------------------------------------------


def slow_image(red: int) -> np.ndarray:
    """A uniform image: ``slow`` loops 100 x red times and scores red / 255."""
    image = np.zeros((SIDE, SIDE, 3), np.uint8)
    image[:, :, 0] = red
    return image


def score_of(red: int) -> float:
    return red / 255


def inline_request(model: str, image: np.ndarray) -> pb2.DetectAnomaliesRequest:
    request = pb2.DetectAnomaliesRequest(model_component=model)
    request.bitmap.width, request.bitmap.height = image.shape[1], image.shape[0]
    request.bitmap.byte_data = image.tobytes()
    return request


def shm_request(
    model: str, image: np.ndarray, segment: ClientSegment
) -> pb2.DetectAnomaliesRequest:
    segment.array(image.shape)[...] = image
    request = pb2.DetectAnomaliesRequest(model_component=model)
    request.bitmap.width, request.bitmap.height = image.shape[1], image.shape[0]
    request.bitmap.shared_memory_handle.CopyFrom(segment.handle(image.nbytes))
    return request


@dataclass
class Outcome:
    """How one RPC ended, and when (monotonic seconds)."""

    code: grpc.StatusCode
    details: str
    result: pb2.DetectAnomalyResult | None
    started: float
    ended: float

    @property
    def elapsed(self) -> float:
        return self.ended - self.started

    def __str__(self) -> str:
        return f"{self.code.name} after {self.elapsed:.2f} s: {self.details}"


def detect(
    stub: pb2_grpc.EdgeAgentStub,
    request: pb2.DetectAnomaliesRequest,
    timeout_s: float = 30,
) -> Outcome:
    started = time.monotonic()
    try:
        reply = stub.DetectAnomalies(request, timeout=timeout_s)
    except grpc.RpcError as exc:
        return Outcome(exc.code(), exc.details() or "", None, started, time.monotonic())
    return Outcome(
        grpc.StatusCode.OK, "", reply.detect_anomaly_result, started, time.monotonic()
    )


def assert_ok(outcome: Outcome, red: int) -> None:
    assert outcome.code == grpc.StatusCode.OK, str(outcome)
    assert outcome.result is not None
    assert outcome.result.anomaly_score == pytest.approx(score_of(red), abs=1e-6)


def collect(futures: list[Future[Outcome]], timeout_s: float = 30) -> list[Outcome]:
    return [f.result(timeout=timeout_s) for f in futures]


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=8) as executor:
        yield executor


# -- Processes --------------------------------------------------------------


def gone(pid: int) -> bool:
    """The process no longer runs (a zombie nobody reaps counts as gone)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def cpu_s(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def wait_busy(process: psutil.Process, timeout_s: float = 10) -> None:
    """Wait until the worker burns CPU: it is inside a request."""
    base = cpu_s(process)
    wait_until(
        lambda: cpu_s(process) > base + 0.1, timeout_s, f"worker {process.pid} busy"
    )


def model_workers(agent: Agent, model: str) -> list[psutil.Process]:
    found = []
    for child in agent.workers():
        with contextlib.suppress(psutil.NoSuchProcess):
            if serves(child.cmdline(), model):
                found.append(child)
    return found


def new_worker(agent: Agent, model: str, old_pids: set[int]) -> psutil.Process:
    """The model's RUNNING worker, once it is none of ``old_pids``."""

    def find() -> psutil.Process | None:
        if agent.status(model) != "RUNNING":
            return None
        fresh = [p for p in model_workers(agent, model) if p.pid not in old_pids]
        return fresh[0] if fresh else None

    found: psutil.Process = wait_until(find, 30, f"a new worker of {model}")
    return found


def description(agent: Agent, model: str) -> pb2.ModelDescription:
    reply = agent.stub.DescribeModel(
        pb2.DescribeModelRequest(model_component=model), timeout=10
    )
    return reply.model_description


def serve_command(model_dir: Path, address: str, *args: str) -> list[str]:
    return [
        sys.executable, "-m", "frontend", "serve",
        "--socket", address, "--model-dir", str(model_dir), *args,
    ]  # fmt: skip


def run_dir_of(worker: psutil.Process) -> Path:
    """The frontend's private run directory, from the worker's endpoint."""
    cmdline = worker.cmdline()
    endpoint = cmdline[cmdline.index("--endpoint") + 1]
    return Path(endpoint.removeprefix("ipc://")).parent


def remove_run_dir(run_dir: Path) -> None:
    """Clear what a SIGKILLed frontend of ours left (the product does not)."""
    with contextlib.suppress(OSError):
        for leftover in run_dir.iterdir():
            leftover.unlink()
        run_dir.rmdir()


# -- 1. A worker killed mid-request -------------------------------------------


def test_sigkill_of_worker_mid_request_fails_it_fast_and_recovers(
    model_dir: Path, pool: ThreadPoolExecutor, segment: Callable[[int], ClientSegment]
) -> None:
    with agent_context(model_dir, "--start", "slow") as agent:
        agent.wait_status("slow", "RUNNING")
        worker = agent.worker("slow")
        seg = segment(IMAGE_BYTES)
        # About 3.9 s of model time: the failure must come long before.
        pending = pool.submit(
            detect, agent.stub, shm_request("slow", slow_image(90), seg)
        )
        wait_busy(worker)
        killed_at = time.monotonic()
        worker.send_signal(signal.SIGKILL)
        outcome = pending.result(timeout=10)
        assert outcome.code == grpc.StatusCode.INTERNAL, str(outcome)
        assert outcome.ended - killed_at < 1.0, str(outcome)
        assert "SIGKILL" in outcome.details
        assert "slow" in outcome.details

        wait_until(lambda: agent.status("slow") == "STARTING", 5, "slow STARTING")
        restarting = detect(agent.stub, inline_request("slow", slow_image(0)))
        assert restarting.code == grpc.StatusCode.FAILED_PRECONDITION, str(restarting)
        assert "STARTING" in restarting.details
        message = description(agent, "slow").status_message
        assert "restarting" in message and "SIGKILL" in message, message

        fresh = new_worker(agent, "slow", {worker.pid})
        assert gone(worker.pid)
        assert_ok(detect(agent.stub, shm_request("slow", slow_image(3), seg)), 3)
        message = description(agent, "slow").status_message
        assert message.startswith("restarted 1 time(s); last cause:"), message
        assert "SIGKILL" in message, message
        # Only client segments were used: the agent made none of its own.
        assert agent_segments(agent.pid) == []
        pids = [worker.pid, fresh.pid]
    assert all(gone(pid) for pid in pids), "a worker outlived the agent"


# -- 2. Overload ------------------------------------------------------------------


def test_requests_over_the_backlog_are_refused_at_once(
    model_dir: Path, pool: ThreadPoolExecutor
) -> None:
    with agent_context(model_dir, "--start", "slow", "--backlog", "2") as agent:
        agent.wait_status("slow", "RUNNING")
        worker = agent.worker("slow")
        # Two admitted requests of about 1.7 s each: one runs, one is queued.
        admitted = [
            pool.submit(detect, agent.stub, inline_request("slow", slow_image(red)))
            for red in (40, 41)
        ]
        wait_busy(worker)
        excess = [
            pool.submit(detect, agent.stub, inline_request("slow", slow_image(red)))
            for red in (42, 43, 44)
        ]
        refused = collect(excess)
        for outcome in refused:
            assert outcome.code == grpc.StatusCode.RESOURCE_EXHAUSTED, str(outcome)
            assert outcome.elapsed < 0.5, str(outcome)
            assert "backlog" in outcome.details
        served = collect(admitted)
        for outcome, red in zip(served, (40, 41), strict=True):
            assert_ok(outcome, red)
        assert all(r.ended < min(s.ended for s in served) for r in refused)
        # The slots are free again once the admitted requests are answered.
        assert_ok(detect(agent.stub, inline_request("slow", slow_image(5))), 5)
        assert len(agent_segments(agent.pid)) <= 2, "staging pool above the backlog"


# -- 3. StopModel during traffic -------------------------------------------------


def test_stop_model_lets_accepted_requests_finish(
    model_dir: Path, pool: ThreadPoolExecutor
) -> None:
    with agent_context(model_dir, "--start", "slow") as agent:
        agent.wait_status("slow", "RUNNING")
        worker = agent.worker("slow")
        reds = (20, 21, 22)  # about 0.9 s each, served one after the other
        accepted = [
            pool.submit(detect, agent.stub, inline_request("slow", slow_image(red)))
            for red in reds
        ]
        wait_busy(worker)

        def stop() -> tuple[int, float]:
            reply = agent.stub.StopModel(
                pb2.StopModelRequest(model_component="slow"), timeout=30
            )
            return reply.status, time.monotonic()

        stopping = pool.submit(stop)
        wait_until(lambda: agent.status("slow") == "STOPPING", 5, "slow STOPPING")
        late = detect(agent.stub, inline_request("slow", slow_image(0)))
        assert late.code == grpc.StatusCode.FAILED_PRECONDITION, str(late)
        assert "STOPPING" in late.details

        served = collect(accepted)
        for outcome, red in zip(served, reds, strict=True):
            assert_ok(outcome, red)
        status, stopped_at = stopping.result(timeout=30)
        assert status == pb2.STOPPED
        assert stopped_at >= max(o.ended for o in served)
        assert agent.status("slow") == "STOPPED"
        after = detect(agent.stub, inline_request("slow", slow_image(0)))
        assert after.code == grpc.StatusCode.FAILED_PRECONDITION, str(after)
        assert "STOPPED" in after.details
        wait_until(lambda: gone(worker.pid), 5, "the stopped worker to exit")
        assert model_workers(agent, "slow") == []
        # A stopped model's staging segments are released.
        assert agent_segments(agent.pid) == []


# -- 4. SIGTERM of the agent during traffic --------------------------------------


def test_sigterm_drains_accepted_requests_and_cleans_up(
    model_dir: Path, pool: ThreadPoolExecutor
) -> None:
    agent = Agent(
        model_dir, "--start", "slow", "--start", "red-mean", "--grace-s", "10"
    )
    try:
        agent.wait_status("slow", "RUNNING")
        agent.wait_status("red-mean", "RUNNING")
        worker = agent.worker("slow")
        workers = agent.workers()
        run_dir = run_dir_of(worker)
        assert run_dir.is_dir()
        reds = (20, 21, 22)
        accepted = [
            pool.submit(detect, agent.stub, inline_request("slow", slow_image(red)))
            for red in reds
        ]
        wait_busy(worker)
        assert agent_segments(agent.pid), "inline requests use staging segments"
        agent.process.send_signal(signal.SIGTERM)
        wait_until(lambda: "Stopping agent" in agent.log(), 5, "the agent to stop")
        refused = detect(agent.stub, inline_request("red-mean", slow_image(7)), 5)
        assert refused.code == grpc.StatusCode.UNAVAILABLE, str(refused)
        assert "shutting down" in refused.details, refused.details

        for outcome, red in zip(collect(accepted), reds, strict=True):
            assert_ok(outcome, red)
        assert agent.process.wait(timeout=30) == 0, agent.log()
        assert not agent.socket_path.exists()
        assert all(gone(p.pid) for p in workers)
        assert agent_segments(agent.pid) == []
        assert not run_dir.exists()
    finally:
        agent.close()


# -- 5. The client's segment outlives the agent ----------------------------------


@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
def test_client_segment_survives_the_agent(
    model_dir: Path, segment: Callable[[int], ClientSegment], how: str
) -> None:
    image_seg = segment(IMAGE_BYTES)
    mask_seg = segment(IMAGE_BYTES)
    with agent_context(
        model_dir, "--start", "red-mean", "--start", "color-seg"
    ) as agent:
        agent.wait_status("red-mean", "RUNNING")
        agent.wait_status("color-seg", "RUNNING")
        image = slow_image(200)
        assert_ok(detect(agent.stub, shm_request("red-mean", image, image_seg)), 200)
        request = shm_request("color-seg", image, image_seg)
        request.anomaly_mask_params.shared_memory_handle.CopyFrom(
            mask_seg.handle(IMAGE_BYTES)
        )
        outcome = detect(agent.stub, request)
        assert outcome.code == grpc.StatusCode.OK, str(outcome)
        red = np.array([255, 0, 0], np.uint8)
        assert (mask_seg.array((SIDE, SIDE, 3)) == red).all()
        before = {s.name: bytes(s.region) for s in (image_seg, mask_seg)}
        workers = agent.workers()
        assert len(workers) == 2
        run_dir = run_dir_of(workers[0])
        if how == "sigterm":
            assert agent.terminate() == 0
        else:
            agent.process.kill()
            agent.process.wait(timeout=10)
            remove_run_dir(run_dir)
        wait_until(lambda: all(gone(p.pid) for p in workers), 10, "workers to exit")
        for name, data in before.items():
            path = Path("/dev/shm") / name
            assert path.exists(), f"the agent removed client segment {name}"
            assert path.read_bytes() == data, f"client segment {name} changed"


# -- 6. SIGKILL of the frontend ---------------------------------------------------


def test_sigkill_of_frontend_leaves_nothing_a_new_agent_cannot_clear(
    model_dir: Path,
) -> None:
    first = Agent(model_dir, "--start", "red-mean", "--start", "slow")
    run_dir: Path | None = None
    try:
        first.wait_status("red-mean", "RUNNING")
        first.wait_status("slow", "RUNNING")
        outcome = detect(first.stub, inline_request("red-mean", slow_image(100)))
        assert_ok(outcome, 100)
        staged = agent_segments(first.pid)
        assert len(staged) == 1
        assert re.fullmatch(rf"edge-agent\.{first.pid}\.\d+\.red-mean-1", staged[0])
        workers = first.workers()
        assert len(workers) == 2
        run_dir = run_dir_of(workers[0])
        first.process.kill()
        assert first.process.wait(timeout=10) == -signal.SIGKILL
        killed_at = time.monotonic()
        wait_until(
            lambda: all(gone(p.pid) for p in workers), 5, "orphaned workers to exit"
        )
        assert time.monotonic() - killed_at < 5
        # What a crash leaves: the socket file and the staging segment.
        assert first.socket_path.exists()
        assert agent_segments(first.pid) == staged

        with agent_context(
            model_dir, "--start", "red-mean", socket_path=first.socket_path
        ) as second:
            log = second.log()
            assert "Removing stale socket" in log
            assert "staging segment(s) of dead agent runs" in log
            assert agent_segments(first.pid) == []
            second.wait_status("red-mean", "RUNNING")
            assert_ok(detect(second.stub, inline_request("red-mean", slow_image(9))), 9)
    finally:
        if run_dir is not None:
            remove_run_dir(run_dir)
        first.close()


def test_dead_runs_directory_is_removed_by_the_next_agent(model_dir: Path) -> None:
    """A crashed frontend's run directory (ZeroMQ endpoints) must not pile up.

    Each run makes /tmp/edge-agent-run-*; a clean stop removes it, a SIGKILL
    cannot, and so the next start should, as it does for staging segments.
    """
    first = Agent(model_dir, "--start", "red-mean")
    run_dir: Path | None = None
    try:
        first.wait_status("red-mean", "RUNNING")
        worker = first.worker("red-mean")
        run_dir = run_dir_of(worker)
        assert run_dir.is_dir()
        first.process.kill()
        first.process.wait(timeout=10)
        wait_until(lambda: gone(worker.pid), 5, "the orphaned worker to exit")
        with agent_context(model_dir, socket_path=first.socket_path):
            assert not run_dir.exists(), f"{run_dir} of the dead run is left"
    finally:
        if run_dir is not None:
            remove_run_dir(run_dir)
        first.close()


# -- 7. Two agents on one socket ---------------------------------------------------


def test_second_agent_on_a_live_socket_refuses_to_start(model_dir: Path) -> None:
    with agent_context(model_dir, "--start", "red-mean") as agent:
        agent.wait_status("red-mean", "RUNNING")
        inode = agent.socket_path.stat().st_ino
        second = subprocess.run(
            serve_command(model_dir, agent.address, "--start", "red-mean"),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert second.returncode == 2, second.stderr
        assert "another edge-agent holds" in second.stderr
        assert agent.socket_path.stat().st_ino == inode
        assert agent.process.poll() is None
        assert_ok(detect(agent.stub, inline_request("red-mean", slow_image(77))), 77)
        assert len(model_workers(agent, "red-mean")) == 1


@pytest.mark.parametrize("occupant", ["foreign-server", "regular-file"])
def test_agent_does_not_take_over_a_path_it_does_not_own(
    model_dir: Path, occupant: str
) -> None:
    with tempfile.TemporaryDirectory(prefix="ea-", dir="/tmp") as folder:
        path = Path(folder) / "agent.sock"
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            if occupant == "foreign-server":
                listener.bind(str(path))
                listener.listen(1)
                expected = "a live server already answers"
            else:
                path.write_text("not a socket")
                expected = "is not a socket"
            started = subprocess.run(
                serve_command(model_dir, f"unix://{path}"),
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            assert started.returncode == 2, started.stderr
            assert expected in started.stderr
            assert path.exists()
            if occupant == "foreign-server":
                probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                with contextlib.closing(probe):
                    probe.connect(str(path))
            else:
                assert path.read_text() == "not a socket"
        finally:
            listener.close()


# -- 8. A client that truncates its segment ------------------------------------


def test_segment_truncated_after_admission_is_invalid_argument(
    model_dir: Path, pool: ThreadPoolExecutor, segment: Callable[[int], ClientSegment]
) -> None:
    with agent_context(model_dir, "--start", "slow", "--start", "red-mean") as agent:
        agent.wait_status("slow", "RUNNING")
        agent.wait_status("red-mean", "RUNNING")
        worker = agent.worker("slow")
        busy = pool.submit(detect, agent.stub, inline_request("slow", slow_image(60)))
        wait_busy(worker)
        seg = segment(IMAGE_BYTES)
        queued = pool.submit(
            detect, agent.stub, shm_request("slow", slow_image(1), seg)
        )
        # The frontend checks the segment at admission, within milliseconds;
        # nothing outside the agent shows that moment, so give it 0.4 s. The
        # worker still has about 2 s of the first request to go.
        time.sleep(0.4)
        assert not queued.done()
        fd = os.open(f"/dev/shm/{seg.name}", os.O_RDWR)
        try:
            os.ftruncate(fd, 4096)
        finally:
            os.close(fd)
        outcome = queued.result(timeout=10)
        assert outcome.code == grpc.StatusCode.INVALID_ARGUMENT, str(outcome)
        assert seg.name in outcome.details
        assert "holds 4096 bytes" in outcome.details
        assert_ok(busy.result(timeout=10), 60)
        # Answered by the worker after the busy request, not at admission;
        # the two client threads note their ends a moment apart.
        assert outcome.ended >= busy.result().ended - 0.05
        # Nothing crashed: same worker, still RUNNING, others unaffected.
        assert agent.status("slow") == "RUNNING"
        assert agent.worker("slow").pid == worker.pid
        assert_ok(detect(agent.stub, inline_request("slow", slow_image(2))), 2)
        assert_ok(detect(agent.stub, inline_request("red-mean", slow_image(50))), 50)
        assert "killed by" not in agent.log()


def test_segment_truncated_while_the_worker_reads_it_is_sigbus(
    model_dir: Path, pool: ThreadPoolExecutor, segment: Callable[[int], ClientSegment]
) -> None:
    """Shrunk under the worker's mapping: the worker dies of SIGBUS, alone.

    The slow graph reads the first pixel, loops, then reads every pixel; a
    truncation during the loop makes that last read fault.
    """
    with agent_context(model_dir, "--start", "slow", "--start", "red-mean") as agent:
        agent.wait_status("slow", "RUNNING")
        agent.wait_status("red-mean", "RUNNING")
        worker = agent.worker("slow")
        bystander = agent.worker("red-mean")
        seg = segment(IMAGE_BYTES)
        reading = pool.submit(
            detect, agent.stub, shm_request("slow", slow_image(60), seg)
        )
        wait_busy(worker)
        fd = os.open(f"/dev/shm/{seg.name}", os.O_RDWR)
        try:
            os.ftruncate(fd, 4096)
        finally:
            os.close(fd)
        outcome = reading.result(timeout=15)
        assert outcome.code == grpc.StatusCode.INTERNAL, str(outcome)
        assert "SIGBUS" in outcome.details and "segment" in outcome.details
        # The other model never noticed; the client's segment is untouched.
        assert_ok(detect(agent.stub, inline_request("red-mean", slow_image(8))), 8)
        assert agent.worker("red-mean").pid == bystander.pid
        assert os.stat(f"/dev/shm/{seg.name}").st_size == 4096
        message = description(agent, "slow").status_message
        assert agent.status("slow") == "RUNNING" or "SIGBUS" in message, message
        new_worker(agent, "slow", {worker.pid})
        assert gone(worker.pid)
        assert_ok(detect(agent.stub, inline_request("slow", slow_image(9))), 9)


# -- 9. A worker that stops heartbeating ---------------------------------------


def test_silent_worker_is_killed_and_restarted(model_dir: Path) -> None:
    """A worker that stops serving is killed: idle after the heartbeat
    timeout, with a request pending once that request's time is up."""
    with agent_context(
        model_dir,
        "--start",
        "slow",
        "--heartbeat-timeout-s",
        "2",
        "--request-timeout-s",
        "2",
    ) as agent:
        agent.wait_status("slow", "RUNNING")
        worker = agent.worker("slow")
        worker.send_signal(signal.SIGSTOP)
        try:
            stopped_at = time.monotonic()
            outcome = detect(agent.stub, inline_request("slow", slow_image(0)), 15)
            assert outcome.code == grpc.StatusCode.INTERNAL, str(outcome)
            assert "no answer within 2 s" in outcome.details, outcome.details
            assert 1.5 < outcome.ended - stopped_at < 4, str(outcome)
            # Silent past the request timeout plus a second: killed.
            wait_until(lambda: gone(worker.pid), 6, "the silent worker to die")
        finally:
            with contextlib.suppress(psutil.NoSuchProcess):
                worker.send_signal(signal.SIGCONT)
        # The supervisor notices the exit on its own schedule: until then the
        # model still reads RUNNING with its old (empty) message.
        wait_until(
            lambda: "heartbeat" in description(agent, "slow").status_message,
            5,
            "the status message to give the heartbeat as the cause",
        )
        new_worker(agent, "slow", {worker.pid})
        assert_ok(detect(agent.stub, inline_request("slow", slow_image(4))), 4)


# -- 10. Repeated crashes ----------------------------------------------------------


def test_repeated_crashes_mark_the_model_failed(model_dir: Path) -> None:
    with agent_context(model_dir, "--start", "slow") as agent:
        killed: set[int] = set()
        for _ in range(5):  # the agent's limit: 5 crashes within 60 s
            worker = new_worker(agent, "slow", killed)
            killed.add(worker.pid)
            worker.send_signal(signal.SIGKILL)
        agent.wait_status("slow", "FAILED", timeout_s=30)
        message = description(agent, "slow").status_message
        assert "crashed 5 times within 60 s" in message, message
        assert "SIGKILL" in message
        wait_until(lambda: all(gone(pid) for pid in killed), 5, "killed workers gone")
        assert model_workers(agent, "slow") == []
        refused = detect(agent.stub, inline_request("slow", slow_image(0)))
        assert refused.code == grpc.StatusCode.FAILED_PRECONDITION, str(refused)
        assert "FAILED" in refused.details and "crashed 5 times" in refused.details

        reply = agent.stub.StartModel(
            pb2.StartModelRequest(model_component="slow"), timeout=10
        )
        assert reply.status == pb2.STARTING
        worker = new_worker(agent, "slow", killed)
        assert_ok(detect(agent.stub, inline_request("slow", slow_image(6))), 6)
        # A fresh start counts crashes afresh: one more is a restart.
        killed.add(worker.pid)
        worker.send_signal(signal.SIGKILL)
        new_worker(agent, "slow", killed)
        assert_ok(detect(agent.stub, inline_request("slow", slow_image(7))), 7)


# -- 11. Clients that give up --------------------------------------------------------

# How a request whose client deadline passed ends.
EXPIRED = (grpc.StatusCode.DEADLINE_EXCEEDED,)


def test_client_deadline_is_deadline_exceeded(model_dir: Path) -> None:
    """A client's own deadline is no agent failure: never INTERNAL.

    The agent waits for the worker no longer than the client's deadline, so
    its answer races the client's own timer: both must say
    DEADLINE_EXCEEDED.
    """
    with agent_context(model_dir, "--start", "slow") as agent:
        agent.wait_status("slow", "RUNNING")
        codes = []
        for _ in range(8):  # 0.4 s of work each, the client waits 0.25 s
            outcome = detect(agent.stub, inline_request("slow", slow_image(10)), 0.25)
            codes.append((outcome.code.name, outcome.details))
        assert all(code == "DEADLINE_EXCEEDED" for code, _ in codes), codes


def test_cancelled_and_disconnected_clients_cost_nothing(
    model_dir: Path, pool: ThreadPoolExecutor
) -> None:
    # Abandoned requests keep their backlog slots until the worker is done
    # with them: room for the two abandoned and the two that follow.
    with agent_context(model_dir, "--start", "slow", "--backlog", "4") as agent:
        agent.wait_status("slow", "RUNNING")
        worker = agent.worker("slow")
        # A client-side deadline expiring mid-request.
        expired = detect(agent.stub, inline_request("slow", slow_image(20)), 0.4)
        assert expired.code == grpc.StatusCode.DEADLINE_EXCEEDED, str(expired)
        # A client that closes its channel mid-request.
        channel = grpc.insecure_channel(agent.address)
        stub = pb2_grpc.EdgeAgentStub(channel)
        call = stub.DetectAnomalies.future(
            inline_request("slow", slow_image(21)), timeout=30
        )
        time.sleep(0.3)  # it is queued behind the first; no signal to poll
        channel.close()
        with pytest.raises(grpc.RpcError) as closed:
            call.result(timeout=5)
        assert closed.value.code() == grpc.StatusCode.CANCELLED
        # Others are served, with their own answers, by the same worker.
        outcomes = collect(
            [
                pool.submit(detect, agent.stub, inline_request("slow", slow_image(r)))
                for r in (1, 2)
            ]
        )
        for outcome, red in zip(outcomes, (1, 2), strict=True):
            assert_ok(outcome, red)
        assert agent.status("slow") == "RUNNING"
        assert agent.worker("slow").pid == worker.pid
        assert_ok(detect(agent.stub, inline_request("slow", slow_image(3))), 3)
        assert "killed by" not in agent.log()


def test_abandoned_requests_still_count_against_the_backlog(
    model_dir: Path, segment: Callable[[int], ClientSegment]
) -> None:
    """The backlog bounds the work queued for a worker, abandoned or not.

    Four clients, each with its own segment, give up after 0.3 s on a 1.3 s
    request. If the agent frees a backlog slot as soon as a client gives up
    while the worker still holds the request, the worker piles up about 5 s
    of work nobody waits for, and an admitted request waits behind all of
    it. With ``--backlog 2`` an admitted request may wait behind one other
    request at most, or be refused with RESOURCE_EXHAUSTED.
    """
    with agent_context(model_dir, "--start", "slow", "--backlog", "2") as agent:
        agent.wait_status("slow", "RUNNING")
        alone = detect(agent.stub, inline_request("slow", slow_image(30)))
        assert_ok(alone, 30)
        for red in (30, 31, 32, 33):
            request = shm_request("slow", slow_image(red), segment(IMAGE_BYTES))
            outcome = detect(agent.stub, request, 0.3)
            assert outcome.code in (*EXPIRED, grpc.StatusCode.RESOURCE_EXHAUSTED), str(
                outcome
            )
        request = shm_request("slow", slow_image(0), segment(IMAGE_BYTES))
        outcome = detect(agent.stub, request, 30)
        if outcome.code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            return
        assert_ok(outcome, 0)
        # One request ahead of it at most, plus slack.
        assert outcome.elapsed < 1.3 * alone.elapsed + 0.3, (
            f"an admitted request waited {outcome.elapsed:.1f} s behind abandoned "
            f"requests of {alone.elapsed:.1f} s the backlog no longer counted"
        )


def kill_and_wait_for_restart(agent: Agent, model: str) -> None:
    """SIGKILL the model's worker; return once a new one serves it."""
    worker = agent.worker(model)
    worker.kill()
    worker.wait(10)
    wait_until(lambda: agent.worker(model).pid != worker.pid, 30, "a new worker")
    agent.wait_status(model, "RUNNING")


def test_a_restart_runs_the_files_the_model_started_with(tmp_path: Path) -> None:
    """Files changed under a running model take effect at the next
    StartModel only: a crash restart loads the snapshot StartModel took."""
    models = tmp_path / "models"
    write_component(models, "red-mean")
    image = np.zeros((64, 64, 3), np.uint8)
    image[..., 0] = 100
    expected = 100 / 255  # red-mean's score: the mean red, scaled
    with agent_context(models, "--start", "red-mean") as agent:
        agent.wait_status("red-mean", "RUNNING")
        # A retrain in progress, or an editor: the graph is junk for now.
        (models / "red-mean" / "model.onnx").write_bytes(b"not a graph")
        kill_and_wait_for_restart(agent, "red-mean")
        reply = agent.stub.DetectAnomalies(
            inline_request("red-mean", image), timeout=30
        )
        assert reply.detect_anomaly_result.anomaly_score == pytest.approx(
            expected, abs=1e-4
        )
        run_dir = run_dir_of(agent.worker("red-mean"))
        snapshots = list(run_dir.glob("red-mean.*-*"))
        assert len(snapshots) == 1
        # The dead worker's endpoint went with it; only the live one is left.
        assert [p.name for p in run_dir.glob("*.zmq")] == ["red-mean.2.zmq"]
        # StopModel drops the snapshot; StartModel reads the folder afresh.
        agent.stub.StopModel(
            pb2.StopModelRequest(model_component="red-mean"), timeout=30
        )
        assert not snapshots[0].exists()
        agent.stub.StartModel(
            pb2.StartModelRequest(model_component="red-mean"), timeout=30
        )
        agent.wait_status("red-mean", "FAILED")
        described = agent.stub.DescribeModel(
            pb2.DescribeModelRequest(model_component="red-mean"), timeout=10
        )
        assert "model.onnx" in described.model_description.status_message


def test_a_removed_run_directory_does_not_stop_a_restart(tmp_path: Path) -> None:
    """A tmp cleaner may age the run directory (snapshot and endpoints) of a
    long-running agent: the next restart recreates both from the folder."""
    models = tmp_path / "models"
    write_component(models, "red-mean")
    image = np.zeros((64, 64, 3), np.uint8)
    image[..., 0] = 51
    with agent_context(models, "--start", "red-mean") as agent:
        agent.wait_status("red-mean", "RUNNING")
        run_dir = run_dir_of(agent.worker("red-mean"))
        shutil.rmtree(run_dir)
        kill_and_wait_for_restart(agent, "red-mean")
        reply = agent.stub.DetectAnomalies(
            inline_request("red-mean", image), timeout=30
        )
        assert reply.detect_anomaly_result.anomaly_score == pytest.approx(0.2, abs=1e-4)
        assert "is gone; copying" in agent.log()
        assert list(run_dir.glob("red-mean.start-*/red-mean/manifest.json"))
        assert agent.terminate() == 0
    assert not run_dir.exists()
