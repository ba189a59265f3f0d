"""Frontend-to-worker hop for inline images: staging segment vs ZeroMQ frame.

The agent copies an inline image once more after gRPC has parsed it. This
measures that hop alone, in two processes joined by a ZeroMQ DEALER pair
over ipc, as the agent's are: (a) copy the bytes into a reused staging
segment and send its name, the worker reading the mapped segment; (b) send
the bytes as a zero-copy ZeroMQ frame, the worker reading the received
frame. The worker reads every byte (as a model does) and answers with a
small reply. The two methods alternate, their order reversed each round.

Run: ``.venv/bin/python scripts/measure_inline_transport.py``; prints a
Markdown table (kept in docs/latency.md).
"""

from __future__ import annotations

import mmap
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import zmq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from shared.segments import create_segment, unlink_segment  # noqa: E402

SIZES = ((640, 480), (1920, 1080), (4096, 4096))
ROUNDS = 40


def worker(endpoint: str) -> None:
    context = zmq.Context()
    socket = context.socket(zmq.DEALER)
    socket.connect(endpoint)
    maps: dict[bytes, mmap.mmap] = {}
    while True:
        frames = socket.recv_multipart(copy=False)
        kind = frames[0].bytes
        if kind == b"stop":
            break
        if kind == b"segment":
            name, size = frames[1].bytes, int(frames[2].bytes)
            region = maps.get(name)
            if region is None:
                fd = os.open(f"/dev/shm/{name.decode()}", os.O_RDONLY)
                region = mmap.mmap(fd, 0, prot=mmap.PROT_READ)
                os.close(fd)
                maps[name] = region
            view = np.frombuffer(region, np.uint8, count=size)
        else:
            view = np.frombuffer(frames[1].buffer, np.uint8)
        total = int(view.sum(dtype=np.uint64))
        del view
        socket.send_multipart([str(total).encode()])
    for region in maps.values():
        region.close()
    socket.close(linger=0)
    context.term()


def alternate(
    paths: dict[str, Callable[[], object]], rounds: int, warm_up: int = 3
) -> dict[str, list[float]]:
    """Milliseconds per call of each path, the order reversed each round.

    Whichever path runs right after another pays for its cache and
    scheduler traces; reversing the order spreads that over all of them.
    """
    for call in paths.values():
        for _ in range(warm_up):
            call()
    times: dict[str, list[float]] = {name: [] for name in paths}
    for round_ in range(rounds):
        order = list(paths.items())
        if round_ % 2:
            order.reverse()
        for name, call in order:
            begin = time.perf_counter()
            call()
            times[name].append((time.perf_counter() - begin) * 1000)
    return times


def measure() -> list[tuple[int, int, dict[str, float]]]:
    """Median ms per method and image size."""
    run_dir = Path(tempfile.mkdtemp(prefix="ea-hop-"))
    endpoint = f"ipc://{run_dir}/hop.zmq"
    context = zmq.Context()
    socket = context.socket(zmq.DEALER)
    socket.bind(endpoint)
    process = multiprocessing.get_context("spawn").Process(
        target=worker, args=(endpoint,)
    )
    process.start()
    name = f"ea-hop-{os.getpid()}"
    capacity = 4096 * 4096 * 3
    fd = create_segment(name, capacity)
    staging = mmap.mmap(fd, capacity)
    os.close(fd)
    rows = []
    try:
        for width, height in SIZES:
            size = width * height * 3
            data = np.random.default_rng(0).bytes(size)

            def by_segment(data: bytes = data, size: int = size) -> None:
                staging[:size] = data
                socket.send_multipart([b"segment", name.encode(), str(size).encode()])
                socket.recv_multipart()

            def by_frame(data: bytes = data) -> None:
                socket.send_multipart([b"frame", data], copy=False)
                socket.recv_multipart()

            methods = {"staging segment": by_segment, "ZeroMQ frame": by_frame}
            times = alternate(methods, ROUNDS, warm_up=1)
            medians = {m: statistics.median(v) for m, v in times.items()}
            rows.append((width, height, medians))
    finally:
        socket.send_multipart([b"stop"])
        process.join(timeout=10)
        staging.close()
        unlink_segment(name)
        socket.close(linger=0)
        context.term()
        (run_dir / "hop.zmq").unlink(missing_ok=True)
        run_dir.rmdir()
    return rows


def table(rows: list[tuple[int, int, dict[str, float]]]) -> list[str]:
    lines = [
        "| image | staging segment ms | ZeroMQ frame ms | frame / segment |",
        "|---|---:|---:|---:|",
    ]
    for width, height, medians in rows:
        segment, frame = medians["staging segment"], medians["ZeroMQ frame"]
        ratio = frame / segment
        lines.append(
            f"| {width}x{height} | {segment:.2f} | {frame:.2f} | {ratio:.2f} |"
        )
    return lines


def main() -> int:
    print("\n".join(table(measure())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
