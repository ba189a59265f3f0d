"""Request latency through the agent next to the model's own time.

Three measurements, each alternating the paths it compares in an order
reversed every round, so that machine noise hits all of them alike:

1. 1920x1080 through one agent (default settings), shared memory and
   inline, next to the same ONNX graph run directly in this process;
2. inline images end to end through two agents side by side, one per
   inline transport (staging segment, ZeroMQ frame);
3. the frontend-to-worker hop of an inline image alone
   (``scripts/measure_inline_transport.py``).

Run: ``.venv/bin/python scripts/measure_latency.py [--repeats N]``; writes
docs/latency.md.
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
from scripts import measure_inline_transport  # noqa: E402
from scripts.measure_inline_transport import alternate  # noqa: E402
from tests.model_factory import write_component  # noqa: E402

BUNDLED = "brick-texture"
CHEAP = "red-mean"
Call = Callable[[], object]


def start_agent(model_dir: Path, socket: Path, *args: str) -> subprocess.Popen[bytes]:
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
            "--log-level",
            "WARNING",
            *args,
        ],
        cwd=ROOT,
    )


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


def start_model(client: EdgeAgentClient, model: str) -> float:
    """Start ``model`` and return seconds from StartModel to RUNNING."""
    start = time.perf_counter()
    client.start(model)
    while client.describe(model)["status"] != "RUNNING":
        if time.perf_counter() - start > 120:
            raise RuntimeError(f"{model} did not start")
        time.sleep(0.005)
    return time.perf_counter() - start


def request(model: str, image: np.ndarray) -> pb2.DetectAnomaliesRequest:
    height, width = image.shape[:2]
    message = pb2.DetectAnomaliesRequest(model_component=model)
    message.bitmap.width, message.bitmap.height = width, height
    return message


def shm_call(
    client: EdgeAgentClient, model: str, image: np.ndarray, seg: ClientSegment
) -> Call:
    def call() -> object:
        # The client's write of the frame counts in the latency.
        seg.array(image.shape)[...] = image
        message = request(model, image)
        message.bitmap.shared_memory_handle.CopyFrom(seg.handle(image.nbytes))
        return client.stub.DetectAnomalies(message, timeout=60)

    return call


def inline_call(client: EdgeAgentClient, model: str, image: np.ndarray) -> Call:
    def call() -> object:
        message = request(model, image)
        message.bitmap.byte_data = image.tobytes()
        return client.stub.DetectAnomalies(message, timeout=60)

    return call


def direct_call(model_dir: Path, model: str, image: np.ndarray) -> Call:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(model_dir / model / "model.onnx"), options)
    outputs = [o.name for o in session.get_outputs() if o.name in ("score", "mask")]
    return lambda: session.run(outputs, {"image": image})


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=60)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "latency.md")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="ea-bench-", dir="/tmp"))
    model_dir = work / "models"
    shutil.copytree(ROOT / "models" / BUNDLED, model_dir / BUNDLED)
    write_component(model_dir, CHEAP)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (1080, 1920, 3), dtype=np.uint8)
    lines = header(args.repeats)
    agents: list[subprocess.Popen[bytes]] = []
    seg = ClientSegment(image.nbytes)
    try:
        agents.append(start_agent(model_dir, work / "main.sock"))
        client = connect(work / "main.sock")
        start_s = [start_model(client, BUNDLED)]
        client.stop(BUNDLED)
        start_s.append(start_model(client, BUNDLED))
        start_model(client, CHEAP)
        lines += main_table(model_dir, client, image, seg, args.repeats)
        lines += [
            "",
            f"StartModel to RUNNING for {BUNDLED}: "
            + ", ".join(f"{s:.2f} s" for s in start_s)
            + " (spawn, import, load, three warm-up runs).",
            "",
        ]
        for process in agents:
            process.terminate()
            process.wait(timeout=30)
        agents.clear()
        lines += transport_table(model_dir, work, agents, args.repeats // 2)
    finally:
        seg.close()
        for process in agents:
            process.terminate()
            process.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)
    lines += hop_section()
    args.out.write_text("\n".join(lines))
    print(args.out.read_text())
    return 0


def header(repeats: int) -> list[str]:
    return [
        "# Request latency",
        "",
        f"Measured {datetime.date.today()} on {platform.machine()}, "
        f"{platform.python_implementation()} {platform.python_version()}, on",
        "2 cores shared with other work, by `.venv/bin/python "
        "scripts/measure_latency.py`.",
        "Each path ran "
        f"{repeats} times, alternating with the others (order reversed every",
        "round); medians and 90th percentiles in ms. The client's write of the",
        "frame into its segment is counted. Each model runs on one pinned core.",
        "`brick-texture` is the bundled texture model (its 6 MB mask comes",
        "back inline); `red-mean` is a test model from `tests/model_factory.py`",
        "that costs almost nothing, so its rows show what serving itself costs.",
        "",
        "## 1920x1080 RGB through one agent",
        "",
    ]


def main_table(
    model_dir: Path,
    client: EdgeAgentClient,
    image: np.ndarray,
    seg: ClientSegment,
    repeats: int,
) -> list[str]:
    lines = [
        "| model | path | median ms | p90 ms | over the model alone ms |",
        "|---|---|---:|---:|---:|",
    ]
    for model in (BUNDLED, CHEAP):
        times = alternate(
            {
                "model alone (ONNX Runtime, 1 thread)": direct_call(
                    model_dir, model, image
                ),
                "agent, shared memory": shm_call(client, model, image, seg),
                "agent, inline": inline_call(client, model, image),
            },
            repeats,
        )
        base = statistics.median(times["model alone (ONNX Runtime, 1 thread)"])
        for name, values in times.items():
            median = statistics.median(values)
            p90 = float(np.percentile(values, 90))
            lines.append(
                f"| {model} | {name} | {median:.2f} | {p90:.2f} | "
                f"{median - base:+.2f} |"
            )
    return lines


def transport_table(
    model_dir: Path, work: Path, agents: list[subprocess.Popen[bytes]], rounds: int
) -> list[str]:
    clients = {}
    for transport in ("staging", "frame"):
        socket = work / f"{transport}.sock"
        agents.append(start_agent(model_dir, socket, "--inline-transport", transport))
        clients[transport] = connect(socket)
        start_model(clients[transport], CHEAP)
    lines = [
        "## Inline images end to end, by inline transport",
        "",
        f"Two agents side by side, `{CHEAP}` only, inline requests alternating",
        f"between them; medians of {rounds} rounds.",
        "",
        "| image | staging segment ms | ZeroMQ frame ms | frame / segment |",
        "|---|---:|---:|---:|",
    ]
    rng = np.random.default_rng(1)
    for width, height in ((640, 480), (1920, 1080), (4096, 4096)):
        image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        times = alternate(
            {t: inline_call(c, CHEAP, image) for t, c in clients.items()}, rounds
        )
        segment = statistics.median(times["staging"])
        frame = statistics.median(times["frame"])
        lines.append(
            f"| {width}x{height} | {segment:.2f} | {frame:.2f} | "
            f"{frame / segment:.2f} |"
        )
    return [*lines, ""]


def hop_section() -> list[str]:
    return [
        "## The inline hop alone",
        "",
        "`scripts/measure_inline_transport.py`: the frontend-to-worker hop of",
        "an inline image between two processes joined as the agent's are, the",
        "worker reading every byte; medians of 40 alternating rounds. The",
        "staging segment costs one copy, the frame two (into and out of the",
        "kernel). The agent's default is the faster: the staging segment.",
        "",
        *measure_inline_transport.table(measure_inline_transport.measure()),
        "",
    ]


if __name__ == "__main__":
    sys.exit(main())
