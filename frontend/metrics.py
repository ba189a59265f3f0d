"""Prometheus metrics: what the agent answered, how fast, and its models.

Each agent has its own ``CollectorRegistry`` (no process-wide registry):
the servicer counts every RPC and times it, and a collector reads the
models' state, queue depth, restarts and workers' memory and CPU from the
supervisor when a scrape asks, so the request path updates nothing else.
The endpoint is off unless ``metrics_address`` is set; a bare port binds
127.0.0.1. It has no authentication: bind it to loopback or a private
network only.

Threads: counters and histograms are updated on the event loop;
prometheus_client's HTTP server answers each scrape in a thread of its
own, outside the loop. The metrics lock themselves. The collector only
reads: it copies ``supervisor.models`` in one C-level step under the GIL
and reads ints, enums and references that the loop replaces whole, so a
scrape may be one state change old but never sees a torn value.

Limits: workers report memory and CPU in their heartbeats, which come
between requests at least every ``heartbeat_interval_s``, so those values
are as old as that or as the request in progress. A worker's CPU counter
and ``edge_agent_worker_restarts_total`` start again from 0 with a new
worker or a StartModel; Prometheus' ``rate()`` treats that as a counter
reset.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING
from wsgiref.simple_server import WSGIServer

import grpc
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from frontend.config import AgentConfig, parse_tcp_address
from frontend.supervisor import ModelState, Supervisor
from shared.messages import DetectReply

if TYPE_CHECKING:
    from frontend.servicer import EdgeAgentServicer

log = logging.getLogger(__name__)

# From a shared-memory request on an idle worker to the request timeout.
LATENCY_BUCKETS_S = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
STAGES = ("queue", "transfer", "inference")
_CLOSE_TIMEOUT_S = 5.0


class Metrics:
    """The agent's registry, and what the servicer records in it per RPC."""

    def __init__(self, supervisor: Supervisor) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "edge_agent_requests",
            "RPCs answered, by model component, RPC and gRPC status code",
            ["model", "rpc", "code"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "edge_agent_request_duration_seconds",
            "Time from an RPC's arrival to its answer, every status code",
            ["model", "rpc"],
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.stages = Histogram(
            "edge_agent_detect_stage_duration_seconds",
            "DetectAnomalies answered with a result, split into stages: "
            "queue (sent to the worker until it took the request), inference "
            "(the graph's run) and transfer (all the rest)",
            ["model", "stage"],
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.registry.register(SupervisorCollector(supervisor))
        # The frontend's own CPU, memory and file descriptors (process_*).
        ProcessCollector(registry=self.registry)

    def observe_rpc(
        self, rpc: str, model: str, code: grpc.StatusCode, elapsed_s: float
    ) -> None:
        self.requests.labels(model, rpc, code.name).inc()
        self.duration.labels(model, rpc).observe(elapsed_s)

    def observe_detect(
        self, model: str, began_s: float, sent_s: float, reply: DetectReply
    ) -> None:
        """Split one answered request's time since ``began_s`` into stages.

        ``sent_s`` (when the frontend sent the request) and the worker's
        ``started_s`` are both CLOCK_MONOTONIC, which is system-wide on
        Linux. A worker that reports no ``started_s`` has its queue wait
        counted as transfer.
        """
        total_s = time.monotonic() - began_s
        queue_s = max(reply.started_s - sent_s, 0.0) if reply.started_s else 0.0
        inference_s = reply.inference_s
        transfer_s = max(total_s - queue_s - inference_s, 0.0)
        for stage, seconds in zip(
            STAGES, (queue_s, transfer_s, inference_s), strict=True
        ):
            self.stages.labels(model, stage).observe(seconds)


class SupervisorCollector(Collector):
    """Reads the models' state from the supervisor at scrape time."""

    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor

    def collect(self) -> Iterator[Metric]:
        state = GaugeMetricFamily(
            "edge_agent_model_state",
            "1 for the model component's current state, 0 for the others",
            labels=["model", "state"],
        )
        depth = GaugeMetricFamily(
            "edge_agent_queue_depth",
            "Requests admitted: queued in the worker or running",
            labels=["model"],
        )
        backlog = GaugeMetricFamily(
            "edge_agent_backlog",
            "Requests admitted at most; more get RESOURCE_EXHAUSTED",
            labels=["model"],
        )
        restarts = CounterMetricFamily(
            "edge_agent_worker_restarts",
            "Worker restarts after a crash, since the model's StartModel",
            labels=["model"],
        )
        rss = GaugeMetricFamily(
            "edge_agent_worker_resident_memory_bytes",
            "Resident memory of the worker, from its last heartbeat",
            labels=["model"],
        )
        cpu = CounterMetricFamily(
            "edge_agent_worker_cpu_seconds",
            "User and system CPU time of the worker, from its last heartbeat",
            labels=["model"],
        )
        # One copy under the GIL: the loop may add or drop models meanwhile.
        models = dict(self.supervisor.models)
        for name, model in sorted(models.items()):
            current = model.state
            for each in ModelState:
                state.add_metric([name, each.name], float(each == current))
            depth.add_metric([name], model.admitted)
            backlog.add_metric([name], model.backlog)
            restarts.add_metric([name], model.restarts)
            worker = model.worker
            beat = worker.last_heartbeat if worker is not None else None
            if beat is not None:
                rss.add_metric([name], beat.rss_bytes)
                cpu.add_metric([name], beat.cpu_s)
        yield from (state, depth, backlog, restarts, rss, cpu)


class MetricsEndpoint:
    """The HTTP server answering scrapes, in its own thread."""

    def __init__(self, server: WSGIServer, thread: threading.Thread, url: str):
        self.server = server
        self.thread = thread
        self.url = url

    def close(self) -> None:
        """Stop answering; blocks up to the server's 0.5 s poll interval."""
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(_CLOSE_TIMEOUT_S)
        log.info("Metrics stopped")


def start_metrics(
    config: AgentConfig, servicer: EdgeAgentServicer
) -> MetricsEndpoint | None:
    """Serve the servicer's metrics on ``metrics_address``; None when off.

    Raises StartupError when the address cannot be bound (another server
    listens there, or the host is not this machine's).
    """
    # frontend.server imports this module; its error class comes late.
    from frontend.server import StartupError  # noqa: PLC0415

    if config.metrics_address is None:
        return None
    host, port = parse_tcp_address(config.metrics_address, "metrics_address")
    host = host.removeprefix("[").removesuffix("]")
    try:
        server, thread = start_http_server(
            port, host, registry=servicer.metrics.registry
        )
    except OSError as exc:
        raise StartupError(
            f"cannot serve metrics on {config.metrics_address}: {exc.strerror or exc}"
        ) from exc
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{port}/metrics"
    log.info("Metrics ready on %s", url)
    return MetricsEndpoint(server, thread, url)
