"""edge-agent against the physical limit and the obvious alternative.

Starts everything it measures itself, in a temporary folder: one agent
(``python -m frontend serve``, default settings) serving the bundled
``brick-texture``, a copy of it named ``brick-texture-b`` and the cheap test
model ``red-mean``; and ``scripts/alternative_server.py``, a plain grpc.aio
server with the same models. On the same images it compares

- ``limit``: the ONNX session (the worker's session options, one thread)
  run directly in this process on an array in memory, by a thread pinned to
  the core of that model's worker;
- ``shm``: the agent through shared memory, the client's write of the frame
  into its own segment counted (segmentation masks into a mask segment);
- ``inline``: the agent with ``byte_data`` (masks come back inline);
- ``alternative``: the alternative server with ``byte_data``.

Sections: latency at concurrency 1 (all four paths interleaved request by
request, the order reversed every round), throughput at concurrency 1, 2, 4
and 8, CPU time per request of the frontend, RSS, two models served at once
against one, and a soak of mixed sizes through shared memory. Every point
runs ``--repeats`` times, interleaved; ratios are taken within one repeat,
then the median over repeats is reported.

Run: ``./run.sh bench [--quick] [--requests N] [--out-dir DIR]
[--agent-env KEY=VALUE]``; writes
DIR/benchmarks.md, DIR/benchmarks.json and DIR/benchmarks.png (DIR is
docs/ by default).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import datetime
import itertools
import json
import os
import platform
import queue
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnxruntime as ort
import psutil
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from frontend._proto import edge_agent_pb2 as pb2  # noqa: E402
from frontend._proto import edge_agent_pb2_grpc as pb2_grpc  # noqa: E402
from frontend.client import MESSAGE_LIMIT, ClientSegment, EdgeAgentClient  # noqa: E402
from scripts import bench_report  # noqa: E402
from scripts.measure_latency import (  # noqa: E402
    connect,
    inline_call,
    request,
    start_agent,
    start_model,
)
from tests.model_factory import write_component  # noqa: E402
from workers.model import session_options  # noqa: E402

BUNDLED = "brick-texture"
TWIN = "brick-texture-b"
CHEAP = "red-mean"
HEAVY = "slow"  # tests/model_factory.py: cost set by the frame, no I/O
HEAVY_TWIN = "slow-b"
HEAVY_TRIPS = 1
MODELS = (CHEAP, BUNDLED)
SIZES = ((64, 64), (640, 480), (1920, 1080), (4096, 4096))
PATHS = ("limit", "shm", "inline", "alternative")
SERVED = ("shm", "inline", "alternative")
# Requests per point relative to --requests, by image size: the big images
# cost 100 to 4000 times the small ones.
SCALE = {64: 1.0, 640: 1.0, 1920: 0.25, 4096: 0.05}
TIMEOUT_S = 120
Call = Callable[[], float]


@dataclass(frozen=True)
class Plan:
    """How many requests each point gets."""

    requests: int
    repeats: int
    concurrency: tuple[int, ...]
    sizes: tuple[tuple[int, int], ...]
    soak: int
    two_model_requests: int

    def count(self, width: int, minimum: int = 2) -> int:
        """Latency rounds at images ``width`` wide."""
        return max(minimum, round(self.requests * SCALE[width]))

    def throughput_count(self, width: int, concurrency: int) -> int:
        """Requests per throughput point: half the latency rounds, one wave
        per thread at least."""
        return max(concurrency, 2, round(self.requests * SCALE[width] / 2))

    def throughput_repeats(self, width: int) -> int:
        """4096x4096 inline costs seconds a request: one repeat only."""
        return 1 if width >= 4096 else self.repeats


def label(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


# -- the paths ---------------------------------------------------------------


class PinnedLimit:
    """The model's session run by a thread pinned to one core.

    The thread times ``session.run`` itself, so handing it the work costs
    the measurement nothing.
    """

    def __init__(self, model_path: Path, core: int) -> None:
        self.session = ort.InferenceSession(
            str(model_path),
            sess_options=session_options(1),
            providers=["CPUExecutionProvider"],
        )
        names = [o.name for o in self.session.get_outputs()]
        self.outputs = [n for n in ("score", "mask") if n in names]
        self.core = core
        self.jobs: queue.Queue[np.ndarray | None] = queue.Queue()
        self.results: queue.Queue[float] = queue.Queue()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        os.sched_setaffinity(threading.get_native_id(), {self.core})
        while (image := self.jobs.get()) is not None:
            begin = time.perf_counter()
            self.session.run(self.outputs, {"image": image})
            self.results.put(time.perf_counter() - begin)

    def call(self, image: np.ndarray) -> Call:
        def run() -> float:
            self.jobs.put(image)
            return self.results.get(timeout=TIMEOUT_S)

        return run

    def close(self) -> None:
        self.jobs.put(None)
        self.thread.join(timeout=TIMEOUT_S)


def timed(call: Callable[[], object]) -> Call:
    def run() -> float:
        begin = time.perf_counter()
        call()
        return time.perf_counter() - begin

    return run


class Segments:
    """Client segments per (thread, size), made on first use, reused after."""

    def __init__(self) -> None:
        self.made: dict[tuple[int, int, str], ClientSegment] = {}

    def get(self, slot: int, size: int, role: str) -> ClientSegment:
        key = (slot, size, role)
        if key not in self.made:
            self.made[key] = ClientSegment(size, prefix="edge-agent-bench")
        return self.made[key]

    def close(self) -> None:
        for segment in self.made.values():
            segment.close()
        self.made.clear()


def shm_call(
    stub: pb2_grpc.EdgeAgentStub,
    model: str,
    image: np.ndarray,
    segments: Segments,
    *,
    slot: int = 0,
    with_mask: bool = False,
) -> Callable[[], object]:
    """DetectAnomalies through the client's segment; the write is counted."""
    seg = segments.get(slot, image.nbytes, "image")
    mask = segments.get(slot, image.nbytes, "mask") if with_mask else None

    def call() -> object:
        seg.array(image.shape)[...] = image
        message = request(model, image)
        message.bitmap.shared_memory_handle.CopyFrom(seg.handle(image.nbytes))
        if mask is not None:
            message.anomaly_mask_params.shared_memory_handle.CopyFrom(
                mask.handle(image.nbytes)
            )
        return stub.DetectAnomalies(message, timeout=TIMEOUT_S)

    return call


@dataclass
class Rig:
    """Everything under test, started by ``Rig.start``."""

    work: Path
    agent: subprocess.Popen[bytes]
    alternative: subprocess.Popen[bytes]
    client: EdgeAgentClient
    alt_channel: grpc.Channel
    alt_stub: pb2_grpc.EdgeAgentStub
    metrics_url: str | None = None
    limits: dict[str, PinnedLimit] = field(default_factory=dict)
    segments: Segments = field(default_factory=Segments)

    @property
    def stub(self) -> pb2_grpc.EdgeAgentStub:
        return self.client.stub

    def worker(self, model: str) -> psutil.Process:
        for child in psutil.Process(self.agent.pid).children():
            cmdline = child.cmdline()
            if any(
                a == "--model" and b == model for a, b in itertools.pairwise(cmdline)
            ):
                return child
        raise RuntimeError(f"no worker for {model}")

    def calls(self, model: str, image: np.ndarray) -> dict[str, Call]:
        with_mask = model != CHEAP
        return {
            "limit": self.limits[model].call(image),
            "shm": timed(
                shm_call(self.stub, model, image, self.segments, with_mask=with_mask)
            ),
            "inline": timed(inline_call(self.client, model, image)),
            "alternative": timed(alt_call(self.alt_stub, model, image)),
        }

    def close(self) -> None:
        for limit in self.limits.values():
            limit.close()
        self.segments.close()
        self.client.close()
        self.alt_channel.close()
        for process in (self.agent, self.alternative):
            if process.poll() is None:
                process.terminate()
                process.wait(timeout=30)
        shutil.rmtree(self.work, ignore_errors=True)


def alt_call(
    stub: pb2_grpc.EdgeAgentStub, model: str, image: np.ndarray
) -> Callable[[], object]:
    def call() -> object:
        message = request(model, image)
        message.bitmap.byte_data = image.tobytes()
        return stub.DetectAnomalies(message, timeout=TIMEOUT_S)

    return call


def start_rig(agent_env: dict[str, str] | None = None) -> Rig:
    work = Path(tempfile.mkdtemp(prefix="ea-bench-", dir="/tmp"))
    model_dir = work / "models"
    shutil.copytree(ROOT / "models" / BUNDLED, model_dir / BUNDLED)
    shutil.copytree(ROOT / "models" / BUNDLED, model_dir / TWIN)
    manifest = json.loads((model_dir / TWIN / "manifest.json").read_text())
    manifest["name"] = TWIN
    (model_dir / TWIN / "manifest.json").write_text(json.dumps(manifest))
    write_component(model_dir, CHEAP)
    write_component(model_dir, HEAVY)
    write_component(model_dir, HEAVY_TWIN, HEAVY)
    metrics_url, extra = None, []
    # The agent's Prometheus endpoint splits a request into stages; a
    # version of the agent without it is measured all the same.
    if '"--metrics"' in (ROOT / "frontend" / "cli.py").read_text():
        port = free_port()
        metrics_url = f"http://127.0.0.1:{port}/metrics"
        extra = ["--metrics", f"127.0.0.1:{port}"]
    # start_agent passes this process's environment on: set the agent's
    # extra variables (e.g. glibc's malloc tunables) for its start only.
    saved = {key: os.environ.get(key) for key in agent_env or {}}
    os.environ.update(agent_env or {})
    try:
        agent = start_agent(model_dir, work / "agent.sock", *extra)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    alt_socket = f"unix://{work / 'alternative.sock'}"
    alternative = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "scripts" / "alternative_server.py"),
            "--socket",
            alt_socket,
            "--model-dir",
            str(model_dir),
        ],
        cwd=ROOT,
    )
    alt_channel = grpc.insecure_channel(
        alt_socket,
        options=[
            ("grpc.max_receive_message_length", MESSAGE_LIMIT),
            ("grpc.max_send_message_length", MESSAGE_LIMIT),
        ],
    )
    rig = Rig(
        work=work,
        agent=agent,
        alternative=alternative,
        client=connect(work / "agent.sock"),
        alt_channel=alt_channel,
        alt_stub=pb2_grpc.EdgeAgentStub(alt_channel),
        metrics_url=metrics_url,
    )
    try:
        grpc.channel_ready_future(alt_channel).result(timeout=60)
        rig.alt_stub.ListModels(pb2.ListModelsRequest(), timeout=60)
        for model in MODELS:
            start_model(rig.client, model)
            core = min(rig.worker(model).cpu_affinity() or [0])
            rig.limits[model] = PinnedLimit(model_dir / model / "model.onnx", core)
    except BaseException:
        rig.close()
        raise
    return rig


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def images(sizes: tuple[tuple[int, int], ...]) -> dict[str, np.ndarray]:
    """A photo of the bundled model's good bricks, resized to each size."""
    photo = Image.open(ROOT / "samples" / "good" / "good_1.png").convert("RGB")
    return {
        label(size): np.ascontiguousarray(
            np.asarray(photo.resize(size, Image.Resampling.BILINEAR))
        )
        for size in sizes
    }


# -- measurements ------------------------------------------------------------


def alternate(paths: dict[str, Call], rounds: int) -> dict[str, list[float]]:
    """Milliseconds per call of each path, the order reversed each round."""
    for call in paths.values():
        call()
    times: dict[str, list[float]] = {name: [] for name in paths}
    for round_ in range(rounds):
        order = list(paths.items())
        if round_ % 2:
            order.reverse()
        for name, call in order:
            times[name].append(call() * 1000)
    return times


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def latency(rig: Rig, plan: Plan, frames: dict[str, np.ndarray]) -> dict[str, Any]:
    """p50 and p99 per path; overheads and ratios within each repeat."""
    out: dict[str, Any] = {}
    for model, size in itertools.product(MODELS, plan.sizes):
        image = frames[label(size)]
        rounds = plan.count(size[0])
        paths = rig.calls(model, image)
        repeats = []
        for _ in range(plan.repeats):
            times = alternate(paths, rounds)
            p50 = {p: statistics.median(v) for p, v in times.items()}
            p99 = {p: percentile(v, 99) for p, v in times.items()}
            repeats.append(
                {
                    "p50_ms": p50,
                    "p99_ms": p99,
                    "shm_over_limit_p50_ms": p50["shm"] - p50["limit"],
                    "shm_over_limit_p99_ms": p99["shm"] - p99["limit"],
                    "shm_over_limit": p50["shm"] / p50["limit"],
                    "inline_over_limit": p50["inline"] / p50["limit"],
                    "inline_over_alternative": p50["inline"] / p50["alternative"],
                    "shm_over_alternative": p50["shm"] / p50["alternative"],
                }
            )
        write_ms = client_write_ms(image, rig.segments)
        out[f"{model} {label(size)}"] = {
            "model": model,
            "size": label(size),
            "requests_per_path": rounds,
            "repeats": repeats,
            "median": median_of(repeats),
            "client_write_ms": write_ms,
        }
        p50 = out[f"{model} {label(size)}"]["median"]["p50_ms"]
        progress(f"latency {model} {label(size)} p50 ms", p50)
    return out


def client_write_ms(image: np.ndarray, segments: Segments) -> float:
    """The client's write of the frame into its segment alone (median ms)."""
    view = segments.get(0, image.nbytes, "image").array(image.shape)
    times = []
    for _ in range(max(5, min(50, 20_000_000 // image.nbytes))):
        begin = time.perf_counter()
        view[...] = image
        times.append((time.perf_counter() - begin) * 1000)
    return statistics.median(times)


def median_of(repeats: list[dict[str, Any]]) -> dict[str, Any]:
    """The median over repeats of every figure, keeping the nesting."""
    first = repeats[0]
    out: dict[str, Any] = {}
    for key, value in first.items():
        if isinstance(value, dict):
            out[key] = median_of([r[key] for r in repeats])
        else:
            out[key] = statistics.median(float(r[key]) for r in repeats)
    return out


def progress(what: str, figures: dict[str, Any]) -> None:
    text = json.dumps(figures, default=float)
    print(f"[bench] {what} {text[:300]}", flush=True)


def cpu_s(process: psutil.Process) -> float:
    """CPU seconds of every thread of ``process``.

    ``/proc/PID/task/*/schedstat`` counts nanoseconds, where psutil's
    ``cpu_times`` counts clock ticks (10 ms), too coarse for a request of
    a millisecond; psutil's figure is the fallback.
    """
    total_ns = 0
    try:
        for task in Path(f"/proc/{process.pid}/task").iterdir():
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                total_ns += int((task / "schedstat").read_text().split()[0])
    except FileNotFoundError:
        times = process.cpu_times()
        return float(times.user + times.system)
    return total_ns / 1e9


def run_concurrent(calls: list[Callable[[], object]], requests: int) -> float:
    """Seconds to serve ``requests`` with one thread per call, sharing them."""
    counter = itertools.count()

    def loop(call: Callable[[], object]) -> None:
        while next(counter) < requests:
            call()

    with concurrent.futures.ThreadPoolExecutor(len(calls)) as pool:
        begin = time.perf_counter()
        futures = [pool.submit(loop, call) for call in calls]
        for future in futures:
            future.result()
        return time.perf_counter() - begin


def throughput(rig: Rig, plan: Plan, frames: dict[str, np.ndarray]) -> dict[str, Any]:
    """Requests per second by path and concurrency; CPU per request."""
    frontend = psutil.Process(rig.agent.pid)
    alternative = psutil.Process(rig.alternative.pid)
    out: dict[str, Any] = {}
    for model, size in itertools.product(MODELS, plan.sizes):
        image = frames[label(size)]
        with_mask = model != CHEAP
        worker = rig.worker(model)
        repeats = []
        for _ in range(plan.throughput_repeats(size[0])):
            point: dict[str, Any] = {"rps": {}, "cpu_ms_per_request": {}}
            limit = rig.limits[model].call(image)
            count = plan.count(size[0], 4)
            limit()
            begin = time.perf_counter()
            for _ in range(count):
                limit()
            point["rps"]["limit c1"] = count / (time.perf_counter() - begin)
            for concurrency in plan.concurrency:
                count = plan.throughput_count(size[0], concurrency)
                for path in SERVED:
                    calls = [
                        served_call(
                            rig, path, model, image, slot=slot, with_mask=with_mask
                        )
                        for slot in range(concurrency)
                    ]
                    for call in calls:
                        call()
                    before = [cpu_s(p) for p in (frontend, worker, alternative)]
                    wall = run_concurrent(calls, count)
                    after = [cpu_s(p) for p in (frontend, worker, alternative)]
                    point["rps"][f"{path} c{concurrency}"] = count / wall
                    if concurrency == 1:
                        used = [
                            (a - b) * 1000 / count
                            for a, b in zip(after, before, strict=True)
                        ]
                        cpu = point["cpu_ms_per_request"]
                        if path == "alternative":
                            cpu["alternative process"] = used[2]
                        else:
                            cpu[f"frontend {path}"] = used[0]
                            cpu[f"worker {path}"] = used[1]
            repeats.append(point)
        out[f"{model} {label(size)}"] = {
            "model": model,
            "size": label(size),
            "repeats": repeats,
            "median": median_of(repeats),
        }
        progress(f"throughput {model} {label(size)}", out[f"{model} {label(size)}"])
    return out


def served_call(
    rig: Rig,
    path: str,
    model: str,
    image: np.ndarray,
    *,
    slot: int,
    with_mask: bool,
) -> Callable[[], object]:
    if path == "shm":
        return shm_call(
            rig.stub, model, image, rig.segments, slot=slot, with_mask=with_mask
        )
    if path == "inline":
        return inline_call(rig.client, model, image)
    return alt_call(rig.alt_stub, model, image)


def heavy_frame() -> np.ndarray:
    """640x480 frame on which the `slow` model costs HEAVY_TRIPS x 100
    256x256 matrix products (its first red byte sets the loop count)."""
    frame = np.zeros((480, 640, 3), np.uint8)
    frame[0, 0, 0] = HEAVY_TRIPS
    return frame


def two_models(
    rig: Rig,
    plan: Plan,
    pair: tuple[str, str],
    size: str,
    image: np.ndarray,
    *,
    with_mask: bool,
) -> dict[str, Any]:
    """`pair[0]` alone against both models at once, each on its own worker."""
    started = [m for m in pair if rig.client.describe(m)["status"] != "RUNNING"]
    for model in started:
        start_model(rig.client, model)
    count = plan.two_model_requests
    models = {"one": [pair[0]], "two": list(pair)}
    # Two client threads per model keep its worker busy.
    calls = {
        name: [
            shm_call(
                rig.stub,
                model,
                image,
                rig.segments,
                slot=10 + 2 * i + j,
                with_mask=with_mask,
            )
            for i, model in enumerate(chosen)
            for j in range(2)
        ]
        for name, chosen in models.items()
    }
    for group in calls.values():
        for call in group:
            call()
    processes = {
        "workers": [rig.worker(m) for m in pair],
        "frontend": [psutil.Process(rig.agent.pid)],
        "client": [psutil.Process()],
    }
    repeats = []
    for _ in range(plan.repeats):
        point: dict[str, Any] = {}
        for name, group in calls.items():
            served = count * len(models[name])
            before = cpu_shares(processes)
            wall = run_concurrent(group, served)
            point[f"{name} rps"] = served / wall
            if name == "two":
                after = cpu_shares(processes)
                point["two: cores busy"] = {
                    k: (after[k] - before[k]) / wall for k in after
                }
        point["two over one"] = point["two rps"] / point["one rps"]
        repeats.append(point)
    cores = {m: rig.worker(m).cpu_affinity() for m in pair}
    for model in started:
        rig.client.stop(model)
    out = {
        "models": list(pair),
        "size": size,
        "mask": with_mask,
        "requests_per_model": count,
        "worker_cores": cores,
        "repeats": repeats,
        "median": median_of(repeats),
    }
    progress(f"two models {pair}", out["median"])
    return out


SAMPLE = re.compile(r"^(\w+)_(sum|count)\{([^}]*)\} (\S+)$", re.MULTILINE)


def cpu_shares(processes: dict[str, list[psutil.Process]]) -> dict[str, float]:
    """CPU seconds so far of each group, and of the whole machine's others."""
    out = {k: sum(cpu_s(p) for p in group) for k, group in processes.items()}
    machine = psutil.cpu_times()
    busy = machine.user + machine.nice + machine.system + machine.irq
    busy += machine.softirq + machine.steal
    out["other processes"] = busy - sum(out.values())
    return out


def scrape(url: str) -> dict[tuple[str, str, str], float]:
    """(metric, labels, sum|count) -> value, for every histogram."""
    with urllib.request.urlopen(url, timeout=10) as reply:
        text = reply.read().decode()
    return {(m, labels, kind): float(v) for m, kind, labels, v in SAMPLE.findall(text)}


def mean_ms(
    before: dict[tuple[str, str, str], float],
    after: dict[tuple[str, str, str], float],
    metric: str,
    labels: str,
) -> float:
    count = after[(metric, labels, "count")] - before.get((metric, labels, "count"), 0)
    total = after[(metric, labels, "sum")] - before.get((metric, labels, "sum"), 0)
    return total / count * 1000 if count else float("nan")


def stages(rig: Rig, plan: Plan, frames: dict[str, np.ndarray]) -> dict[str, Any]:
    """Where a shared-memory request's time goes, by the agent's own metrics.

    Means over ``plan.count`` requests of one path alone: the client's
    round trip, the agent's time from the RPC's arrival to its answer and
    that split into queue, inference and the rest; next to an empty RPC
    (ListModels) on the agent and on the bare grpc.aio alternative.
    """
    out: dict[str, Any] = {"empty_rpc_ms": empty_rpc_ms(rig)}
    if rig.metrics_url is None:
        return out
    for model, size in itertools.product(MODELS, plan.sizes):
        image = frames[label(size)]
        call = shm_call(rig.stub, model, image, rig.segments, with_mask=model != CHEAP)
        call()
        count = plan.count(size[0])
        before = scrape(rig.metrics_url)
        client = [timed(call)() * 1000 for _ in range(count)]
        after = scrape(rig.metrics_url)
        rpc = f'model="{model}",rpc="DetectAnomalies"'
        row = {
            "requests": count,
            "client_round_trip_ms": statistics.fmean(client),
            "client_write_ms": client_write_ms(image, rig.segments),
            "agent_ms": mean_ms(
                before, after, "edge_agent_request_duration_seconds", rpc
            ),
        }
        for stage in ("queue", "inference", "transfer"):
            row[f"{stage}_ms"] = mean_ms(
                before,
                after,
                "edge_agent_detect_stage_duration_seconds",
                f'model="{model}",stage="{stage}"',
            )
        row["outside_agent_ms"] = (
            row["client_round_trip_ms"] - row["client_write_ms"] - row["agent_ms"]
        )
        out[f"{model} {label(size)}"] = {"model": model, "size": label(size), **row}
    return out


def empty_rpc_ms(rig: Rig) -> dict[str, float]:
    """Median ms of ListModels on each server, alternating."""
    times: dict[str, list[float]] = {"agent": [], "alternative": []}
    stubs = {"agent": rig.stub, "alternative": rig.alt_stub}
    for round_ in range(400):
        order = list(stubs.items())
        if round_ % 2:
            order.reverse()
        for name, stub in order:
            begin = time.perf_counter()
            stub.ListModels(pb2.ListModelsRequest(), timeout=TIMEOUT_S)
            times[name].append((time.perf_counter() - begin) * 1000)
    return {name: statistics.median(values) for name, values in times.items()}


def rss(pid: int) -> dict[str, float]:
    """VmRSS and its anonymous part, MiB (shared-memory pages are not anon)."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssShmem"):
            fields[key] = int(value.split()[0]) / 1024
    return fields


def memory(rig: Rig) -> dict[str, dict[str, float]]:
    out = {"frontend": rss(rig.agent.pid)}
    for model in MODELS:
        out[f"worker {model}"] = rss(rig.worker(model).pid)
    out["alternative"] = rss(rig.alternative.pid)
    return out


SOAK_PATTERN = (
    # (share per 1000 requests, model, size)
    (720, CHEAP, (64, 64)),
    (150, CHEAP, (640, 480)),
    (30, CHEAP, (1920, 1080)),
    (2, CHEAP, (4096, 4096)),
    (70, BUNDLED, (64, 64)),
    (28, BUNDLED, (640, 480)),
)


def soak(rig: Rig, total: int) -> dict[str, Any]:
    """``total`` shm requests of mixed sizes; RSS at every quarter."""
    rng = np.random.default_rng(4)
    photo = images(tuple({size for _, _, size in SOAK_PATTERN}))
    mix = [
        (model, photo[label(size)])
        for share, model, size in SOAK_PATTERN
        for _ in range(share)
    ]
    order = rng.permutation(len(mix))
    segments = Segments()
    calls = [
        shm_call(rig.stub, model, image, segments, with_mask=model != CHEAP)
        for model, image in mix
    ]
    marks = [round(total * q / 4) for q in range(5)]
    samples = []
    begin = time.perf_counter()
    try:
        for index in range(total + 1):
            if index in marks:
                samples.append({"requests": index, **memory(rig)})
            if index < total:
                calls[order[index % len(order)]]()
    finally:
        segments.close()
    seconds = time.perf_counter() - begin
    progress(f"soak: {total} requests in {seconds:.1f} s", {})
    return {"requests": total, "seconds": seconds, "samples": samples}


# -- report ------------------------------------------------------------------


def machine() -> dict[str, Any]:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    versions = {}
    for package in ("grpcio", "protobuf", "onnxruntime", "numpy", "pyzmq", "psutil"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = "unknown"
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "affinity": sorted(os.sched_getaffinity(0)),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "kernel": platform.release(),
        "versions": versions,
        "load_average_at_start": os.getloadavg(),
    }


def main() -> int:
    args = parse_args()
    plan = make_plan(args)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    results: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec="seconds"
        ),
        "machine": machine(),
        "plan": plan.__dict__,
        "command": " ".join(["./run.sh bench", *sys.argv[1:]]),
        "agent_env": dict(item.split("=", 1) for item in args.agent_env),
    }
    frames = images(plan.sizes)
    rig = start_rig(results["agent_env"])
    try:
        results["rss_before"] = memory(rig)
        results["latency"] = latency(rig, plan, frames)
        results["stages"] = stages(rig, plan, frames)
        results["throughput"] = throughput(rig, plan, frames)
        # The target's case, where the model's cost dominates: ~30 ms of
        # matrix products per request on a small frame. Then the bundled
        # model at 1080p with its mask, where serving costs more in share.
        results["two_models"] = two_models(
            rig, plan, (HEAVY, HEAVY_TWIN), "640x480", heavy_frame(), with_mask=False
        )
        size = "1920x1080" if "1920x1080" in frames else next(iter(frames))
        results["two_models_bundled"] = two_models(
            rig, plan, (BUNDLED, TWIN), size, frames[size], with_mask=True
        )
        results["rss_after"] = memory(rig)
        results["soak"] = soak(rig, plan.soak)
        results["load_average_at_end"] = os.getloadavg()
    finally:
        rig.close()
    results["seconds"] = time.perf_counter() - began
    results["targets"] = bench_report.targets(results)
    (args.out_dir / "benchmarks.json").write_text(json.dumps(results, indent=1) + "\n")
    bench_report.write(results, args.out_dir)
    print(f"wrote {args.out_dir} in {results['seconds']:.0f} s")
    return 0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a ~1-minute smoke run")
    parser.add_argument(
        "--requests", type=int, help="requests per latency point at small sizes"
    )
    parser.add_argument("--repeats", type=int, help="repeats of every point")
    parser.add_argument("--soak", type=int, help="requests in the soak")
    parser.add_argument(
        "--sizes", help="comma-separated WxH, from 64x64,640x480,1920x1080,4096x4096"
    )
    parser.add_argument("--concurrency", help="comma-separated, default 1,2,4,8")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "docs")
    parser.add_argument(
        "--agent-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an environment variable for the agent only (repeatable)",
    )
    return parser.parse_args()


def make_plan(args: argparse.Namespace) -> Plan:
    """The full run, or with --quick a smoke run of about a minute."""
    if args.quick:
        requests, repeats, soak_n = 50, 1, 2000
        sizes, concurrency = SIZES[:3], (1, 4)
    else:
        requests, repeats, soak_n = 120, 3, 10_000
        sizes, concurrency = SIZES, (1, 2, 4, 8)
    if args.sizes:
        sizes = tuple(parse_size(text) for text in args.sizes.split(","))
    if args.concurrency:
        concurrency = tuple(int(n) for n in args.concurrency.split(","))
    requests = args.requests or requests
    return Plan(
        requests=requests,
        repeats=args.repeats or repeats,
        concurrency=concurrency,
        sizes=sizes,
        soak=args.soak if args.soak is not None else soak_n,
        # Long enough runs (about 4 s each) that start-up and one stray
        # process do not decide the ratio.
        two_model_requests=max(4, requests),
    )


def parse_size(text: str) -> tuple[int, int]:
    width, height = (int(n) for n in text.split("x"))
    if (width, height) not in SIZES:
        raise SystemExit(f"--sizes: {text} is not one of {[label(s) for s in SIZES]}")
    return width, height


if __name__ == "__main__":
    sys.exit(main())
