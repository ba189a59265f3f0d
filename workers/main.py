"""The worker process: serves one model component for the frontend.

Threads: one serving thread (ONNX Runtime adds its intra-op threads, as
many as the worker has cores). The worker pins itself to the cores the
supervisor gave it before ONNX Runtime starts any thread.

Liveness: a heartbeat is sent from the serving loop itself, between
requests, at least every ``--heartbeat-interval-s``; a worker stuck in a
request stops beating and the supervisor kills it. The worker exits when
its frontend dies (PR_SET_PDEATHSIG, and a parent check in the loop).

Exit codes: 0 after a Stop, 3 when the model cannot be loaded (do not
restart), 4 when the frontend went away, 1 on any other failure.
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import math
import os
import signal
import statistics
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import zmq

from shared import messages
from shared.component import ComponentError, ModelComponent, load_component
from shared.logs import configure_logging
from shared.malloc import freeze_startup_objects, keep_large_buffers
from shared.segments import SegmentError
from workers.mapping import SegmentCache
from workers.model import ModelLoadError, ModelRunner
from workers.pinning import parse_cores, pin_all_threads

log = logging.getLogger(__name__)

EXIT_STOPPED = 0
EXIT_FAILURE = 1
EXIT_MODEL_ERROR = 3
EXIT_ORPHANED = 4

_PR_SET_PDEATHSIG = 1
_SEND_TIMEOUT_MS = 10_000
_MAPPED_SEGMENTS = 8
_LINGER_MS = 1000


def _die_with_parent(parent_pid: int) -> None:
    """Ask the kernel to SIGKILL us when the frontend dies."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        log.warning("PR_SET_PDEATHSIG unavailable; relying on the parent check")
    if os.getppid() != parent_pid:
        sys.exit(EXIT_ORPHANED)


class Worker:
    """The serving loop around one ModelRunner and one DEALER socket."""

    def __init__(
        self,
        runner: ModelRunner,
        socket: zmq.Socket[bytes],
        parent_pid: int,
        heartbeat_interval_s: float,
    ) -> None:
        self.runner = runner
        self.component: ModelComponent = runner.component
        self.socket = socket
        self.parent_pid = parent_pid
        self.heartbeat_interval_s = heartbeat_interval_s
        self.images = SegmentCache(_MAPPED_SEGMENTS, writable=False)
        self.masks = SegmentCache(_MAPPED_SEGMENTS, writable=True)
        self.requests = 0
        self.latencies_ms: deque[float] = deque(maxlen=64)
        self.process = psutil.Process()

    def serve(self) -> int:
        poller = zmq.Poller()
        poller.register(self.socket, zmq.POLLIN)
        next_beat = 0.0
        while True:
            now = time.monotonic()
            if now >= next_beat:
                self.send_heartbeat()
                self.images.prune()
                self.masks.prune()
                next_beat = now + self.heartbeat_interval_s
            if os.getppid() != self.parent_pid:
                log.error("Frontend gone; worker exits")
                return EXIT_ORPHANED
            timeout_ms = max(0, int((next_beat - time.monotonic()) * 1000))
            if not poller.poll(timeout_ms):
                continue
            frames = self.socket.recv_multipart(copy=False)
            try:
                record, payload = messages.decode(frames)
            except messages.ProtocolError as exc:
                log.error("Dropping a malformed message: %s", exc)
                continue
            if isinstance(record, messages.Stop):
                return EXIT_STOPPED
            if isinstance(record, messages.DetectRequest):
                self.handle(record, payload)
            else:
                log.error("Dropping an unexpected %s message", type(record).__name__)

    def handle(self, request: messages.DetectRequest, payload: object) -> None:
        if request.deadline_s and time.monotonic() > request.deadline_s:
            # Its client has gone: running it would only delay the next.
            expired = messages.ErrorReply(
                id=request.id,
                kind=messages.KIND_DEADLINE,
                message="the request's deadline passed before the worker reached it",
            )
            self.socket.send_multipart(messages.encode(expired))
            return
        # CLOCK_MONOTONIC is system-wide: the frontend times the queue with it.
        started_s = time.monotonic()
        start = time.perf_counter()
        try:
            frames = self.detect(request, payload, started_s)
        except SegmentError as exc:
            frames = messages.encode(
                messages.ErrorReply(
                    id=request.id, kind=messages.KIND_INVALID_ARGUMENT, message=str(exc)
                )
            )
        except Exception as exc:  # The runtime's errors are untyped.
            log.warning("Request %d failed: %s", request.id, exc)
            frames = messages.encode(
                messages.ErrorReply(
                    id=request.id,
                    kind=messages.KIND_INTERNAL,
                    message=f"the model failed on this image: {exc}",
                )
            )
        self.requests += 1
        self.latencies_ms.append((time.perf_counter() - start) * 1000)
        self.socket.send_multipart(frames, copy=False)

    def detect(
        self, request: messages.DetectRequest, payload: object, started_s: float
    ) -> list[Any]:
        shape = (request.height, request.width, 3)
        if request.image is not None:
            image = self.images.view(request.image, shape, "bitmap")
        else:
            buffer = memoryview(payload.buffer)  # type: ignore[attr-defined]
            image = np.frombuffer(buffer, dtype=np.uint8).reshape(shape)
        start = time.perf_counter()
        prediction = self.runner.predict(image)
        inference_s = time.perf_counter() - start
        del image
        if not math.isfinite(prediction.score):
            raise ValueError("the graph returned a score that is not a number")
        if prediction.label_mask is None:
            reply = messages.DetectReply(
                id=request.id,
                score=prediction.score,
                inference_s=inference_s,
                started_s=started_s,
            )
            return messages.encode(reply)
        return self.mask_reply(
            request, prediction.score, prediction.label_mask, inference_s, started_s
        )

    def mask_reply(
        self,
        request: messages.DetectRequest,
        score: float,
        label_mask: np.ndarray,
        inference_s: float,
        started_s: float,
    ) -> list[Any]:
        height, width = label_mask.shape
        if request.mask is not None:
            target = self.masks.view(request.mask, (height, width, 3), "mask")
            fractions = self.paint(label_mask, target)
            del target
        else:
            rgb = np.empty((height, width, 3), np.uint8)
            fractions = self.paint(label_mask, rgb)
        reply = messages.DetectReply(
            id=request.id,
            score=score,
            fractions=fractions,
            mask_width=width,
            mask_height=height,
            mask_in_segment=request.mask is not None,
            inference_s=inference_s,
            started_s=started_s,
        )
        if request.mask is not None:
            return messages.encode(reply)
        return messages.encode(reply, payload=rgb.data)

    def paint(self, label_mask: np.ndarray, rgb: np.ndarray) -> list[float]:
        """Color ``rgb`` by label; return each label's fraction, background first.

        One pass per label present: masks are mostly background, and a
        palette lookup (``np.take``) costs 10 to 40 ms on a 1080p mask.
        """
        labels = len(self.component.labels)
        if int(label_mask.max(initial=0)) > labels:
            raise ValueError(
                f"the graph returned label index {int(label_mask.max())}; the "
                f"component has {labels} label(s)"
            )
        rgb.fill(255)
        counts = [0] * (labels + 1)
        for index, label in enumerate(self.component.labels, start=1):
            selected = label_mask == index
            counts[index] = int(np.count_nonzero(selected))
            if not counts[index]:
                continue
            for channel, value in enumerate(label.rgb):
                if value != 255:
                    np.copyto(rgb[:, :, channel], value, where=selected)
        counts[0] = label_mask.size - sum(counts)
        return [count / label_mask.size for count in counts]

    def send_heartbeat(self) -> None:
        latencies = list(self.latencies_ms)
        cpu = self.process.cpu_times()
        beat = messages.Heartbeat(
            pid=os.getpid(),
            state="serving",
            cores=sorted(self.process.cpu_affinity() or []),
            rss_bytes=self.process.memory_info().rss,
            requests=self.requests,
            latency_ms_p50=statistics.median(latencies) if latencies else 0.0,
            cpu_s=cpu.user + cpu.system,
        )
        try:
            self.socket.send_multipart(messages.encode(beat), flags=zmq.NOBLOCK)
        except zmq.Again:
            log.warning("Frontend not reading; heartbeat dropped")

    def close(self) -> None:
        self.images.close()
        self.masks.close()


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m workers")
    # The name shows which model a worker serves in ps and in its logs; the
    # component's folder is a snapshot in the agent's run directory.
    parser.add_argument("--model", help="the component's name (default: folder)")
    parser.add_argument("--component-dir", type=Path, required=True)
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--cores", required=True, help="comma-separated CPU ids")
    parser.add_argument("--parent-pid", type=int, required=True)
    parser.add_argument("--heartbeat-interval-s", type=float, default=1.0)
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--log-format", default="text", choices=("text", "json"))
    return parser.parse_args(argv)


def _send_fatal(socket: zmq.Socket[bytes], kind: str, message: str) -> None:
    try:
        socket.send_multipart(
            messages.encode(messages.Fatal(kind=kind, message=message)),
            flags=zmq.NOBLOCK,
        )
    except zmq.ZMQError:
        log.error("Could not report the failure to the frontend")


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    model = args.model or args.component_dir.name
    configure_logging(args.log_level, role="worker", model=model, fmt=args.log_format)
    _die_with_parent(args.parent_pid)
    keep_large_buffers()
    # Ctrl-C, and a supervisor stopping the whole group (systemd's default
    # KillMode), signal the workers too: the frontend alone decides when
    # they stop, after the requests they hold are answered.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    cores = parse_cores(args.cores)
    pin_all_threads(cores)

    context = zmq.Context()
    socket: zmq.Socket[bytes] = context.socket(zmq.DEALER)
    socket.setsockopt(zmq.LINGER, 0)
    socket.setsockopt(zmq.SNDTIMEO, _SEND_TIMEOUT_MS)
    socket.connect(args.endpoint)
    try:
        return _run(args, socket, cores)
    finally:
        # A short linger lets a Fatal or the last reply reach the frontend.
        socket.close(linger=_LINGER_MS)
        context.term()


def _run(args: argparse.Namespace, socket: zmq.Socket[bytes], cores: list[int]) -> int:
    log.info("Starting worker on cores %s", cores)
    start = time.perf_counter()
    try:
        component = load_component(args.component_dir)
        runner = ModelRunner(component, threads=len(cores))
        load_s = time.perf_counter() - start
        warmup_s = runner.warm_up()
    except (ComponentError, ModelLoadError, ValueError) as exc:
        log.error("Model cannot be loaded: %s", exc)
        _send_fatal(socket, "model", str(exc))
        return EXIT_MODEL_ERROR
    except MemoryError:
        _send_fatal(socket, "memory", "not enough memory to load the model")
        return EXIT_MODEL_ERROR
    except Exception as exc:  # ORT raises untyped errors while warming up.
        log.error("Model failed while warming up: %s", exc)
        _send_fatal(socket, "model", f"the model failed on a blank image: {exc}")
        return EXIT_MODEL_ERROR

    freeze_startup_objects()
    ready = messages.Ready(
        pid=os.getpid(), cores=cores, load_s=load_s, warmup_s=warmup_s
    )
    socket.send_multipart(messages.encode(ready))
    log.info("Worker ready (load %.2f s, warm-up %.2f s)", load_s, warmup_s)
    worker = Worker(runner, socket, args.parent_pid, args.heartbeat_interval_s)
    try:
        code = worker.serve()
    finally:
        worker.close()
    log.info("Worker stopped")
    return code
