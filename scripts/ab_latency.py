"""Two versions of the agent side by side: latency and CPU per request.

Starts one agent from each source tree (``--old`` and ``--new``, each
imported through its own ``PYTHONPATH``) on sockets and model folders of
its own, with the cheap ``red-mean`` test model, plus the single-process
alternative (``scripts/alternative_server.py``) and the model's session run
in this process (the limit). Requests to every path are interleaved one by
one, the order reversed each round, so that the noise of a shared machine
falls on all of them alike; medians are compared, not absolute figures.

CPU per request is read from ``/proc/PID/task/*/schedstat`` of each
agent's frontend and worker around a run of requests to that path alone.

Run: ``.venv/bin/python scripts/ab_latency.py --old /path/to/old/tree``
(``--new`` defaults to this tree).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from frontend._proto import edge_agent_pb2 as pb2  # noqa: E402
from frontend._proto import edge_agent_pb2_grpc as pb2_grpc  # noqa: E402
from frontend.client import MESSAGE_LIMIT, ClientSegment  # noqa: E402
from scripts.bench import PinnedLimit, cpu_s, images, parse_size  # noqa: E402
from scripts.measure_inline_transport import alternate  # noqa: E402
from tests.model_factory import write_component  # noqa: E402

MODEL = "red-mean"
TIMEOUT_S = 60
Call = Callable[[], object]


class Server:
    """One server process on a socket of its own, and a channel to it."""

    def __init__(self, command: list[str], tree: Path, socket: Path) -> None:
        env = {**os.environ, "PYTHONPATH": str(tree)}
        self.process = subprocess.Popen(command, cwd=tree, env=env)
        self.channel = grpc.insecure_channel(
            f"unix://{socket}",
            options=[
                ("grpc.max_receive_message_length", MESSAGE_LIMIT),
                ("grpc.max_send_message_length", MESSAGE_LIMIT),
            ],
        )
        self.stub = pb2_grpc.EdgeAgentStub(self.channel)
        deadline = time.monotonic() + 60
        while True:
            try:
                self.stub.ListModels(pb2.ListModelsRequest(), timeout=5)
                break
            except grpc.RpcError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    self.close()
                    raise
                time.sleep(0.1)

    def worker(self) -> psutil.Process | None:
        children = psutil.Process(self.process.pid).children()
        return children[0] if children else None

    def close(self) -> None:
        self.channel.close()
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)


def start_agent(tree: Path, work: Path) -> Server:
    model_dir = work / "models"
    write_component(model_dir, MODEL)
    socket = work / "agent.sock"
    command = [
        sys.executable, "-m", "frontend", "serve",
        "--socket", f"unix://{socket}",
        "--model-dir", str(model_dir),
        "--start", MODEL,
        "--log-level", "WARNING",
    ]  # fmt: skip
    server = Server(command, tree, socket)
    deadline = time.monotonic() + 60
    request = pb2.DescribeModelRequest(model_component=MODEL)
    while server.stub.DescribeModel(request).model_description.status != pb2.RUNNING:
        if time.monotonic() > deadline:
            server.close()
            raise RuntimeError(f"{MODEL} did not start under {tree}")
        time.sleep(0.1)
    return server


def start_alternative(work: Path) -> Server:
    model_dir = work / "models"
    write_component(model_dir, MODEL)
    socket = work / "alternative.sock"
    command = [
        sys.executable, str(ROOT / "scripts" / "alternative_server.py"),
        "--socket", f"unix://{socket}",
        "--model-dir", str(model_dir),
    ]  # fmt: skip
    return Server(command, ROOT, socket)


def detect_request(image: np.ndarray) -> pb2.DetectAnomaliesRequest:
    height, width = image.shape[:2]
    message = pb2.DetectAnomaliesRequest(model_component=MODEL)
    message.bitmap.width, message.bitmap.height = width, height
    return message


def shm_call(
    stub: pb2_grpc.EdgeAgentStub, image: np.ndarray, seg: ClientSegment
) -> Call:
    def call() -> object:
        seg.array(image.shape)[...] = image
        message = detect_request(image)
        message.bitmap.shared_memory_handle.CopyFrom(seg.handle(image.nbytes))
        return stub.DetectAnomalies(message, timeout=TIMEOUT_S)

    return call


def inline_call(stub: pb2_grpc.EdgeAgentStub, image: np.ndarray) -> Call:
    def call() -> object:
        message = detect_request(image)
        message.bitmap.byte_data = image.tobytes()
        return stub.DetectAnomalies(message, timeout=TIMEOUT_S)

    return call


def cpu_ms_per_request(
    call: Call, processes: list[psutil.Process | None], requests: int
) -> list[float]:
    before = [cpu_s(p) if p else 0.0 for p in processes]
    for _ in range(requests):
        call()
    after = [cpu_s(p) if p else 0.0 for p in processes]
    return [(a - b) * 1000 / requests for a, b in zip(after, before, strict=True)]


def measure(
    servers: dict[str, Server],
    limit: PinnedLimit,
    image: np.ndarray,
    args: argparse.Namespace,
    segments: list[ClientSegment],
) -> None:
    """Print the medians of every path, then CPU per request, for one image."""
    paths: dict[str, Call] = {"limit": limit.call(image)}
    owners: dict[str, list[psutil.Process | None]] = {}
    for agent in ("old", "new"):
        server = servers[agent]
        seg = ClientSegment(image.nbytes, prefix="edge-agent-ab")
        segments.append(seg)
        paths[f"{agent} shm"] = shm_call(server.stub, image, seg)
        paths[f"{agent} inline"] = inline_call(server.stub, image)
        processes = [psutil.Process(server.process.pid), server.worker()]
        owners[f"{agent} shm"] = owners[f"{agent} inline"] = processes
    alt = servers["alt"]
    paths["alt inline"] = inline_call(alt.stub, image)
    owners["alt inline"] = [psutil.Process(alt.process.pid), None]
    small = image.nbytes < 4 << 20
    rounds = args.rounds if small else max(args.rounds // 5, 10)
    times = alternate(paths, rounds, warm_up=5)
    medians = {p: statistics.median(v) for p, v in times.items()}
    height, width = image.shape[:2]
    print(f"\n== {width}x{height}: {rounds} rounds, median (p90) ms")
    for path, values in times.items():
        over = medians[path] - medians["limit"]
        p90 = float(np.percentile(values, 90))
        print(
            f"  {path:11s} {medians[path]:7.3f} ({p90:7.3f})  over limit {over:+7.3f}"
        )
    for agent in ("old", "new"):
        ratio = medians[f"{agent} inline"] / medians["alt inline"]
        print(f"  {agent} inline / alt inline: {ratio:.2f}")
    requests = args.cpu_requests if small else max(args.cpu_requests // 5, 10)
    print(f"  CPU ms per request ({requests} requests each): frontend, worker")
    for path, processes in owners.items():
        for _ in range(5):
            paths[path]()
        front, worker = cpu_ms_per_request(paths[path], processes, requests)
        print(f"  {path:11s} {front:6.3f} {worker:6.3f}")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--old", type=Path, required=True, help="source tree A")
    parser.add_argument("--new", type=Path, default=ROOT, help="source tree B")
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--cpu-requests", type=int, default=300)
    parser.add_argument(
        "--sizes", type=parse_size, nargs="+", default=[(64, 64), (640, 480)]
    )
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ea-ab-", dir="/tmp"))
    servers: dict[str, Server] = {}
    segments: list[ClientSegment] = []
    limit: PinnedLimit | None = None
    try:
        servers["old"] = start_agent(args.old.resolve(), work / "old")
        servers["new"] = start_agent(args.new.resolve(), work / "new")
        servers["alt"] = start_alternative(work / "alt")
        for agent in ("old", "new"):
            worker = servers[agent].worker()
            assert worker is not None
            print(
                f"{agent}: frontend {servers[agent].process.pid}, worker "
                f"{worker.pid} on cores {worker.cpu_affinity()}"
            )
        core = min(worker.cpu_affinity() or [0])
        limit = PinnedLimit(work / "new" / "models" / MODEL / "model.onnx", core)
        for image in images(tuple(args.sizes)).values():
            measure(servers, limit, image, args, segments)
    finally:
        if limit is not None:
            limit.close()
        for seg in segments:
            seg.close()
        for server in servers.values():
            server.close()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
