"""Request latency through the agent next to the model's own time.

Starts two agents side by side, one per inline transport (staging segment
or ZeroMQ frame), each serving the bundled model and a near-free test
model, and alternates requests between the paths, in an order reversed
every round, so machine noise hits all of them alike. Writes
docs/latency.md.

Run: ``.venv/bin/python scripts/measure_latency.py [--repeats N]``
"""

from __future__ import annotations

import argparse
import datetime
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from frontend._proto import edge_agent_pb2 as pb2  # noqa: E402
from frontend.client import ClientSegment, EdgeAgentClient  # noqa: E402
from tests.model_factory import write_component  # noqa: E402

BUNDLED = "brick-texture"
CHEAP = "red-mean"


def start_agent(
    model_dir: Path, socket: Path, transport: str
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "frontend",
            "serve",
            "--socket",
            f"unix://{socket}",
            "--model-dir",
            str(model_dir),
            "--inline-transport",
            transport,
            "--log-level",
            "WARNING",
        ],
        cwd=ROOT,
    )


def wait_running(client: EdgeAgentClient, model: str) -> float:
    """Start ``model`` and return seconds from StartModel to RUNNING."""
    start = time.perf_counter()
    client.start(model)
    while client.describe(model)["status"] != "RUNNING":
        if time.perf_counter() - start > 120:
            raise RuntimeError(f"{model} did not start")
        time.sleep(0.005)
    return time.perf_counter() - start


def connect(socket: Path) -> EdgeAgentClient:
    client = EdgeAgentClient(f"unix://{socket}")
    deadline = time.monotonic() + 30
    while True:
        try:
            client.models()
            return client
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def shm_call(
    client: EdgeAgentClient, model: str, image: np.ndarray, seg: ClientSegment
) -> Callable[[], None]:
    height, width = image.shape[:2]

    def call() -> None:
        # The client's write of the frame counts in the latency.
        seg.array(image.shape)[...] = image
        request = pb2.DetectAnomaliesRequest(model_component=model)
        request.bitmap.width, request.bitmap.height = width, height
        request.bitmap.shared_memory_handle.CopyFrom(seg.handle(image.nbytes))
        client.stub.DetectAnomalies(request, timeout=30)

    return call


def inline_call(
    client: EdgeAgentClient, model: str, image: np.ndarray
) -> Callable[[], None]:
    height, width = image.shape[:2]

    def call() -> None:
        request = pb2.DetectAnomaliesRequest(model_component=model)
        request.bitmap.width, request.bitmap.height = width, height
        request.bitmap.byte_data = image.tobytes()
        client.stub.DetectAnomalies(request, timeout=30)

    return call


def direct_call(model_dir: Path, model: str, image: np.ndarray) -> Callable[[], None]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(model_dir / model / "model.onnx"), options)
    outputs = [o.name for o in session.get_outputs() if o.name in ("score", "mask")]

    def call() -> None:
        session.run(outputs, {"image": image})

    return call


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=60)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "latency.md")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="ea-bench-", dir="/tmp"))
    model_dir = work / "models"
    shutil.copytree(ROOT / "models" / BUNDLED, model_dir / BUNDLED)
    write_component(model_dir, CHEAP)
    agents = {
        t: start_agent(model_dir, work / f"{t}.sock", t) for t in ("staging", "frame")
    }
    segments: list[ClientSegment] = []
    try:
        clients = {t: connect(work / f"{t}.sock") for t in agents}
        start_s = [wait_running(clients["staging"], BUNDLED)]
        start_s.append(wait_running(clients["frame"], BUNDLED))
        for client in clients.values():
            wait_running(client, CHEAP)
        rng = np.random.default_rng(0)
        image = rng.integers(0, 256, (1080, 1920, 3), dtype=np.uint8)
        seg = ClientSegment(image.nbytes)
        segments.append(seg)
        rows = []
        for model in (BUNDLED, CHEAP):
            paths = {
                "model alone (ONNX Runtime, 1 thread)": direct_call(
                    model_dir, model, image
                ),
                "agent, shared memory": shm_call(clients["staging"], model, image, seg),
                "agent, inline via staging segment": inline_call(
                    clients["staging"], model, image
                ),
                "agent, inline via ZeroMQ frame": inline_call(
                    clients["frame"], model, image
                ),
            }
            times: dict[str, list[float]] = {name: [] for name in paths}
            for call in paths.values():
                for _ in range(5):
                    call()
            for round_ in range(args.repeats):
                # Reverse the order every other round: whichever path runs
                # right after another pays for its cache and scheduler traces.
                order = list(paths.items())
                if round_ % 2:
                    order.reverse()
                for name, call in order:
                    begin = time.perf_counter()
                    call()
                    times[name].append((time.perf_counter() - begin) * 1000)
            base = statistics.median(times["model alone (ONNX Runtime, 1 thread)"])
            for name, values in times.items():
                median = statistics.median(values)
                p90 = float(np.percentile(values, 90))
                rows.append((model, name, median, p90, median - base))
        write_report(args.out, rows, start_s, args.repeats)
    finally:
        for seg in segments:
            seg.close()
        for process in agents.values():
            process.terminate()
            process.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)
    print(args.out.read_text())
    return 0


def write_report(
    out: Path,
    rows: list[tuple[str, str, float, float, float]],
    start_s: list[float],
    repeats: int,
) -> None:
    lines = [
        "# Request latency, 1920x1080 RGB",
        "",
        f"Measured {datetime.date.today()} on {platform.machine()}, "
        f"{platform.python_implementation()} {platform.python_version()}, "
        "2 cores shared with other work, by `.venv/bin/python "
        "scripts/measure_latency.py`. Each path ran "
        f"{repeats} times, interleaved with the others; medians in ms. The",
        "client's write of the frame into its segment is counted; the model",
        "runs on one pinned core in the worker.",
        "",
        "| model | path | median ms | p90 ms | over the model alone ms |",
        "|---|---|---:|---:|---:|",
    ]
    for model, name, median, p90, over in rows:
        lines.append(f"| {model} | {name} | {median:.2f} | {p90:.2f} | {over:+.2f} |")
    lines += [
        "",
        f"StartModel to RUNNING for {BUNDLED}: "
        + ", ".join(f"{s:.2f} s" for s in start_s)
        + " (spawn, import, load, three warm-up runs).",
        "",
    ]
    out.write_text("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
