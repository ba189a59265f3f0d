"""Zero copy and pinning, measured on a real agent.

(a) Images that come through shared memory never enter the frontend: its
    resident memory does not grow while 48 MiB images go through, and only
    the worker maps the client's segment.
(b) Each worker and every one of its threads runs on the worker's cores
    only, and ONNX Runtime starts as many intra-op threads as it has cores.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psutil
import pytest

from frontend._proto import edge_agent_pb2 as pb2
from frontend.client import ClientSegment
from tests.agent import ROOT, Agent, running_agent
from tests.model_factory import write_component
from tests.workers.shm import mapped_regions

MIB = 1 << 20
SIDE = 4096
IMAGE_BYTES = SIDE * SIDE * 3  # 48 MiB
RSS_SLACK = 4 * MIB
SCALE = np.float32(1 / 255)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("zero-copy-models")
    write_component(folder, "red-mean")  # cores 1
    write_component(folder, "color-seg")  # cores 1
    write_component(folder, "duo", "red-mean", cores=2)
    return folder


@pytest.fixture(scope="module")
def agent(models: Path) -> Iterator[Agent]:
    yield from running_agent(models, "--start", "red-mean", "--start", "color-seg")


@pytest.fixture
def running(agent: Agent) -> Agent:
    for model in ("red-mean", "color-seg"):
        agent.wait_status(model, "RUNNING")
    return agent


def proc_status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f)


def kib(value: str) -> int:
    number, unit = value.split()
    assert unit == "kB"
    return int(number) * 1024


def cpu_list(text: str) -> list[int]:
    cpus: list[int] = []
    for part in text.strip().split(","):
        first, _, last = part.partition("-")
        cpus.extend(range(int(first), int(last or first) + 1))
    return cpus


def assigned_cores(worker: psutil.Process) -> list[int]:
    cmdline = worker.cmdline()
    return [int(c) for c in cmdline[cmdline.index("--cores") + 1].split(",")]


def threads_of(pid: int) -> dict[int, tuple[str, list[int]]]:
    """tid -> (name, Cpus_allowed_list) for every thread of ``pid``."""
    threads = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                name = f.read().strip()
            status = proc_status_task(pid, int(tid))
        except FileNotFoundError:
            continue  # the thread ended meanwhile
        threads[int(tid)] = (name, cpu_list(status["Cpus_allowed_list"]))
    return threads


def proc_status_task(pid: int, tid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/task/{tid}/status") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f)


def shm_request(segment: ClientSegment) -> pb2.DetectAnomaliesRequest:
    request = pb2.DetectAnomaliesRequest(model_component="red-mean")
    request.bitmap.width = SIDE
    request.bitmap.height = SIDE
    request.bitmap.shared_memory_handle.CopyFrom(segment.handle(IMAGE_BYTES))
    return request


def test_big_images_never_enter_the_frontend(running: Agent) -> None:
    frontend = psutil.Process(running.pid)
    worker = running.worker("red-mean")
    segment = ClientSegment(IMAGE_BYTES, prefix="ea-zero-copy")
    image = segment.array((SIDE, SIDE, 3))
    try:
        request = shm_request(segment)
        # One request first, so that the frontend's buffers for this kind of
        # call exist before the baseline.
        image[..., 0] = 1
        reply = running.stub.DetectAnomalies(request, timeout=30)
        assert reply.detect_anomaly_result.anomaly_score == float(np.float32(1) * SCALE)
        before = proc_status(running.pid)
        rss_before = frontend.memory_info().rss
        for i in range(20):
            red = 2 ** (i % 8)  # sums of powers of two are exact in float32
            image[..., 0] = red
            reply = running.stub.DetectAnomalies(request, timeout=30)
            result = reply.detect_anomaly_result
            assert result.anomaly_score == float(np.float32(red) * SCALE), i
            assert result.anomaly_threshold == 0.5
            assert result.is_anomalous == (result.anomaly_score >= 0.5)
        rss_after = frontend.memory_info().rss
        after = proc_status(running.pid)
        grown = rss_after - rss_before
        assert grown <= RSS_SLACK, f"frontend RSS grew by {grown / MIB:.1f} MiB"
        peak = kib(after["VmHWM"]) - kib(before["VmHWM"])
        assert peak <= RSS_SLACK, f"frontend peak RSS grew by {peak / MIB:.1f} MiB"
        shmem = kib(after["RssShmem"]) - kib(before["RssShmem"])
        assert shmem <= RSS_SLACK, f"frontend shared RSS grew by {shmem / MIB:.1f} MiB"
        # The frontend never maps the client's memory; the worker does,
        # read-only and whole, and keeps it mapped for the next frame.
        assert mapped_regions(segment.name, running.pid) == []
        regions = mapped_regions(segment.name, worker.pid)
        assert len(regions) == 1, regions
        assert regions[0].perms == "r--s"
        assert regions[0].end - regions[0].start == IMAGE_BYTES
        assert kib(proc_status(worker.pid)["RssShmem"]) >= IMAGE_BYTES
        assert running.worker("red-mean").pid == worker.pid  # no restart
    finally:
        del image
        segment.close()
    assert not os.path.exists(f"/dev/shm/{segment.name}")


def test_one_core_models_get_a_core_each(running: Agent) -> None:
    if len(os.sched_getaffinity(running.pid)) < 2:
        pytest.skip("needs two cores")
    red = assigned_cores(running.worker("red-mean"))
    seg = assigned_cores(running.worker("color-seg"))
    assert len(red) == 1
    assert len(seg) == 1
    assert red != seg
    assert set(red + seg) <= os.sched_getaffinity(running.pid)


@pytest.mark.parametrize("model", ["red-mean", "color-seg"])
def test_every_worker_thread_runs_on_the_workers_cores(
    running: Agent, model: str
) -> None:
    worker = running.worker(model)
    cores = assigned_cores(worker)
    assert sorted(worker.cpu_affinity()) == cores
    threads = threads_of(worker.pid)
    assert len(threads) >= 2
    astray = {
        tid: (name, cpus) for tid, (name, cpus) in threads.items() if cpus != cores
    }
    assert astray == {}, (
        f"threads of the {model} worker (cores {cores}) allowed elsewhere: {astray}"
    )


def python_threads_after_import(env: dict[str, str]) -> int:
    """Threads a fresh worker interpreter has once workers.main is imported."""
    code = (
        "import os, workers.main\n"
        "names = [open(f'/proc/self/task/{t}/comm').read().strip()\n"
        "         for t in os.listdir('/proc/self/task')]\n"
        "print(sum(not n.startswith('ZMQ') for n in names))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return int(out.stdout)


def runtime_threads(worker: psutil.Process) -> int:
    """Threads of ``worker`` that are neither ZeroMQ's nor there at import."""
    names = [name for name, _ in threads_of(worker.pid).values()]
    own = sum(not n.startswith("ZMQ") for n in names)
    return own - python_threads_after_import(worker.environ())


def test_intra_op_threads_match_the_cores(running: Agent) -> None:
    one = running.worker("red-mean")
    # With one core the caller is the whole intra-op pool: no extra thread.
    assert runtime_threads(one) == 0
    running.start_model("duo")
    try:
        duo = running.worker("duo")
        cores = assigned_cores(duo)
        assert cores == sorted(os.sched_getaffinity(running.pid))[:2]
        # With two cores: the caller plus one pool thread.
        assert runtime_threads(duo) == len(cores) - 1
        # ONNX Runtime must not pin its threads to single cores inside the
        # worker's set (its default affinity does).
        astray = {
            tid: (name, cpus)
            for tid, (name, cpus) in threads_of(duo.pid).items()
            if cpus != cores
        }
        assert astray == {}
    finally:
        running.stub.StopModel(pb2.StopModelRequest(model_component="duo"), timeout=30)
        running.wait_status("duo", "STOPPED", timeout_s=30)
