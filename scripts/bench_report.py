"""docs/benchmarks.md and its plot, from the results of ``scripts/bench.py``.

The targets of the benchmark are judged here, each from the figures in the
results alone, so a rerun judges its own numbers the same way.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

PATH_NAMES = {
    "limit": "limit (ONNX Runtime in process)",
    "shm": "edge-agent, shared memory",
    "inline": "edge-agent, inline",
    "alternative": "alternative (plain grpc.aio)",
}
COLORS = {
    "limit": (90, 90, 90),
    "shm": (31, 119, 180),
    "inline": (255, 127, 14),
    "alternative": (44, 160, 44),
}
# "No slower" allows this much: repeats of one point differ by about as much.
NOISE = 1.05
SHM_BUDGET_MS = 0.5
P99_BUDGET_MS = 2.0
TWO_MODELS_MIN = 1.8
BUNDLED = "brick-texture"
HEAVY_NOTE = "100 products of 256x256 matrices, about 30 ms on one core"
FRONTEND_GROWTH_MIB = 2.0
WORKER_GROWTH_MIB = 1.0


def _latency_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    return list(results["latency"].values())


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    rows = _latency_rows(results)
    out = [
        _shm_overhead(rows, results.get("stages", {})),
        _shm_growth(rows, results.get("stages", {})),
        _p99(rows),
        _inline_no_slower(rows, results["throughput"]),
        _inline_faster(rows),
        _two_models(results["two_models"]),
        *_soak(results["soak"]),
    ]
    return out


def _target(name: str, met: bool, figure: str, reason: str = "") -> dict[str, Any]:
    return {"target": name, "met": met, "figure": figure, "reason": reason}


def _shm_overhead(rows: list[dict[str, Any]], stages: dict[str, Any]) -> dict[str, Any]:
    worst = max(rows, key=lambda r: r["median"]["shm_over_limit_p50_ms"])
    over = worst["median"]["shm_over_limit_p50_ms"]
    figure = f"worst {over:+.2f} ms ({worst['model']} {worst['size']}); " + ", ".join(
        f"{r['model']} {r['size']} {r['median']['shm_over_limit_p50_ms']:+.2f}"
        for r in rows
    )
    reason = ""
    if over > SHM_BUDGET_MS:
        reason = (
            f"at {worst['size']} the client's own write of the frame into its "
            f"segment, counted by the target's definition, takes "
            f"{worst['client_write_ms']:.2f} ms alone; the rest, "
            f"{over - worst['client_write_ms']:+.2f} ms, is the round trip "
            "(gRPC over the Unix socket, the frontend, the ZeroMQ hop)"
        )
        empty = stages.get("empty_rpc_ms")
        if empty:
            reason += (
                f"; an empty RPC (ListModels) alone takes {empty['agent']:.2f} ms "
                f"on the agent and {empty['alternative']:.2f} ms on the bare "
                "grpc.aio alternative, so no gRPC server in Python meets 0.5 ms "
                "here; 'Where the time goes' splits the rest"
            )
    return _target(
        f"shm p50 over the limit <= {SHM_BUDGET_MS} ms at every size",
        over <= SHM_BUDGET_MS,
        figure,
        reason,
    )


def _growth_reason(
    model: str,
    small: dict[str, Any],
    large: dict[str, Any],
    write: float,
    stages: dict[str, Any],
) -> str:
    growth = (
        large["median"]["shm_over_limit_p50_ms"]
        - small["median"]["shm_over_limit_p50_ms"]
    )
    text = f"{model}: the client's write grows with the frame ({write:+.2f} ms)"
    first = stages.get(f"{model} {small['size']}")
    last = stages.get(f"{model} {large['size']}")
    if first and last:
        text += (
            "; inside the agent, 'transfer' (which for a segmentation model "
            "includes painting the mask into the client's segment) goes from "
            f"{first['transfer_ms']:.2f} to {last['transfer_ms']:.2f} ms and "
            f"the queue from {first['queue_ms']:.2f} to {last['queue_ms']:.2f} ms"
        )
    rest = growth - write
    return text + (
        f"; the remaining {rest:+.2f} ms is the run-to-run spread of the "
        f"{large['requests_per_path']} requests at {large['size']}"
    )


def _shm_growth(rows: list[dict[str, Any]], stages: dict[str, Any]) -> dict[str, Any]:
    figures, met, reasons = [], True, []
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]
        small, large = mine[0], mine[-1]
        growth = (
            large["median"]["shm_over_limit_p50_ms"]
            - small["median"]["shm_over_limit_p50_ms"]
        )
        write = large["client_write_ms"] - small["client_write_ms"]
        figures.append(
            f"{model} {small['size']} -> {large['size']}: {growth:+.2f} ms "
            f"(of which the client's write {write:+.2f} ms, the rest "
            f"{growth - write:+.2f} ms)"
        )
        if growth > SHM_BUDGET_MS:
            met = False
            reasons.append(_growth_reason(model, small, large, write, stages))
    return _target(
        "shm overhead does not grow with image size (within 0.5 ms)",
        met,
        "; ".join(figures),
        "; ".join(reasons),
    )


def _p99(rows: list[dict[str, Any]]) -> dict[str, Any]:
    worst = max(rows, key=lambda r: r["median"]["shm_over_limit_p99_ms"])
    over = worst["median"]["shm_over_limit_p99_ms"]
    reason = ""
    if over > P99_BUDGET_MS:
        reason = (
            f"{worst['model']} {worst['size']}: p99 from "
            f"{worst['requests_per_path']} requests per repeat; the p50 "
            f"overhead there is already "
            f"{worst['median']['shm_over_limit_p50_ms']:+.2f} ms (see above), "
            "and the tail adds scheduling delay on 2 shared cores"
        )
    return _target(
        f"shm p99 <= {P99_BUDGET_MS} ms above the limit's p99 at concurrency 1",
        over <= P99_BUDGET_MS,
        f"worst {over:+.2f} ms ({worst['model']} {worst['size']}); "
        + ", ".join(
            f"{r['model']} {r['size']} {r['median']['shm_over_limit_p99_ms']:+.2f}"
            for r in rows
        ),
        reason,
    )


def _cpu_compare(throughput: dict[str, Any], keys: dict[str, float]) -> str:
    parts = []
    for key in keys:
        cpu = throughput.get(key, {}).get("median", {}).get("cpu_ms_per_request")
        if cpu:
            parts.append(
                f"{key}: frontend {cpu['frontend inline']:.2f} + worker "
                f"{cpu['worker inline']:.2f} ms against the alternative's "
                f"{cpu['alternative process']:.2f} ms"
            )
    return "; ".join(parts)


def _inline_no_slower(
    rows: list[dict[str, Any]], throughput: dict[str, Any]
) -> dict[str, Any]:
    ratios = {
        f"{r['model']} {r['size']}": r["median"]["inline_over_alternative"]
        for r in rows
    }
    slow = {k: v for k, v in ratios.items() if v > NOISE}
    reason = ""
    if slow:
        reason = (
            "slower at " + ", ".join(slow) + ": an inline image crosses one "
            "more process than in the alternative (gRPC parse in the "
            "frontend, then a copy into a staging segment and a ZeroMQ hop "
            "to the worker), which costs a fixed part per request (the "
            "frontend's CPU at 64x64) and a part growing with the image; CPU "
            "per request, the agent's frontend and worker against the whole "
            "alternative process: " + _cpu_compare(throughput, slow)
        )
    return _target(
        f"inline p50 no slower than the alternative (ratio <= {NOISE})",
        not slow,
        ", ".join(f"{k} {v:.2f}" for k, v in ratios.items()),
        reason,
    )


def _inline_faster(rows: list[dict[str, Any]]) -> dict[str, Any]:
    big = [r for r in rows if int(r["size"].split("x")[0]) >= 1920]
    ratios = {
        f"{r['model']} {r['size']}": r["median"]["inline_over_alternative"] for r in big
    }
    slow = {k: v for k, v in ratios.items() if v >= 1.0}
    reason = ""
    if slow:
        reason = (
            "not faster at " + ", ".join(slow) + ": the same extra hop; the "
            "agent wins only where its worker's work is cheaper than the "
            "alternative's (painting the mask)"
        )
    return _target(
        "inline faster than the alternative at 1920x1080 and above",
        bool(ratios) and not slow,
        ", ".join(f"{k} {v:.2f}" for k, v in ratios.items()) or "not measured",
        reason,
    )


def _two_models(two: dict[str, Any]) -> dict[str, Any]:
    ratio = two["median"]["two over one"]
    busy = two["median"].get("two: cores busy", {})
    reason = ""
    if ratio < TWO_MODELS_MIN:
        reason = (
            "the machine has 2 cores and both run a worker, so the client, "
            "the frontend and any other load take their time from the "
            "workers' cores; while two models ran, cores busy: "
            + ", ".join(f"{k} {v:.2f}" for k, v in busy.items())
            + " (of 2.00)"
        )
    return _target(
        f"two models >= {TWO_MODELS_MIN}x one model's throughput",
        ratio >= TWO_MODELS_MIN,
        f"{ratio:.3f}x ({two['median']['one rps']:.1f} -> "
        f"{two['median']['two rps']:.1f} requests/s, {_pair(two)})",
        reason,
    )


def _soak(soak: dict[str, Any]) -> list[dict[str, Any]]:
    samples = soak["samples"]
    quarter = samples[1] if len(samples) > 2 else samples[0]
    half = samples[2] if len(samples) > 2 else samples[0]
    last = samples[-1]
    growth = last["frontend"]["VmRSS"] - quarter["frontend"]["VmRSS"]
    frontend = _target(
        f"frontend RSS does not grow over {soak['requests']} requests "
        f"(<= {FRONTEND_GROWTH_MIB} MiB after the first quarter)",
        growth <= FRONTEND_GROWTH_MIB,
        f"{quarter['frontend']['VmRSS']:.1f} -> {last['frontend']['VmRSS']:.1f} "
        f"MiB from request {quarter['requests']} to {last['requests']} "
        f"({growth:+.2f} MiB); at 0: {samples[0]['frontend']['VmRSS']:.1f} MiB",
        "" if growth <= FRONTEND_GROWTH_MIB else "growth measured; see the table",
    )
    workers = [k for k in last if k.startswith("worker ")]
    growths = {w: last[w]["RssAnon"] - half[w]["RssAnon"] for w in workers}
    plateau = all(g <= WORKER_GROWTH_MIB for g in growths.values())
    worker = _target(
        f"worker RSS plateaus (anonymous RSS grows <= {WORKER_GROWTH_MIB} MiB "
        "over the second half)",
        plateau,
        ", ".join(f"{w} {g:+.2f} MiB" for w, g in growths.items()),
        "" if plateau else "growth measured; see the table",
    )
    return [frontend, worker]


# -- the document --------------------------------------------------------------


def write(results: dict[str, Any], out_dir: Path) -> None:
    draw_plot(results, out_dir / "benchmarks.png")
    (out_dir / "benchmarks.md").write_text("\n".join(document(results)) + "\n")


def document(results: dict[str, Any]) -> list[str]:
    m = results["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items())
    lines = [
        "# Benchmarks",
        "",
        f"Measured {results['date']} by `{results['command']}` in "
        f"{results['seconds']:.0f} s, on {m['cpu']}, {m['cores']} cores, "
        f"{m['memory_gib']} GiB, Linux {m['kernel']}, {m['python']}, "
        f"{versions}. Load average at the start "
        f"{', '.join(f'{x:.2f}' for x in m['load_average_at_start'])}, at the end "
        f"{', '.join(f'{x:.2f}' for x in results['load_average_at_end'])}: "
        "other work shared the machine, so compare the paths side by side "
        "(they ran interleaved), not with another run.",
        "",
        "Rerun: `./run.sh bench` (about 7 minutes; `--quick` for a smoke run of "
        "about one minute, `--requests N`, `--repeats N`, `--soak N`, "
        "`--sizes`, `--concurrency`, `--out-dir DIR`, `--agent-env KEY=VALUE` "
        "to start the agent with an extra environment variable). Raw results: "
        "`docs/benchmarks.json`. Agent environment: "
        + (
            ", ".join(f"`{k}={v}`" for k, v in results.get("agent_env", {}).items())
            or "as inherited, nothing added"
        )
        + ".",
        "",
        "## What is compared",
        "",
        "- **limit**: the model's ONNX session, with the worker's session "
        "options (`workers.model.session_options(1)`: one intra-op thread, no "
        "spinning), called in the benchmark's process on a numpy array in "
        "memory by a thread pinned (`sched_setaffinity`) to the core of that "
        "model's worker; the thread times `session.run` alone.",
        "- **shm**: edge-agent (`python -m frontend serve`, default settings, "
        "each model on its own pinned worker) over its Unix socket; the "
        "client writes the frame into its own segment (counted) and, for "
        "`brick-texture`, names a mask segment that the worker paints.",
        "- **inline**: the same agent, `byte_data`; the mask comes back inline.",
        "- **alternative**: `scripts/alternative_server.py`, one grpc.aio "
        "process with the same sessions, `byte_data` in, mask inline out "
        "(palette lookup), the model run in the handler, not pinned.",
        "",
        "Images: `samples/good/good_1.png` resized to each size. `red-mean` "
        "(`tests/model_factory.py`) costs almost nothing, so its rows show "
        "the serving cost; `brick-texture` is the bundled texture model. "
        "A sync gRPC client in the benchmark's process, one channel per "
        "server. Latency: all four paths interleaved request by request (the "
        "order reversed each round), "
        f"{results['plan']['repeats']} repeats, medians over repeats of each "
        "repeat's p50 and p99; the ratios are taken within a repeat.",
        "",
        "## Targets",
        "",
    ]
    for target in results["targets"]:
        verdict = "**met**" if target["met"] else "**missed**"
        line = f"- {verdict}: {target['target']}: {target['figure']}."
        if target["reason"]:
            line += f" Why: {target['reason']}."
        lines.append(line)
    lines += ["", "![latency by path and size](benchmarks.png)", ""]
    lines += latency_table(results)
    lines += stages_table(results)
    lines += throughput_table(results)
    lines += cpu_table(results)
    lines += two_models_table(results)
    lines += memory_tables(results)
    lines += SPEED_WORK
    return lines


# Measured outside this run, side by side with the tree before each change
# (scripts/ab_latency.py), so these figures are not from the tables above.
SPEED_WORK = [
    "## What was done to make it fast, and what is left",
    "",
    "Measured outside this run with `scripts/ab_latency.py`, which runs the "
    "tree before a change and the tree after it side by side, requests "
    "interleaved (600 per path at 64x64, red-mean, 2026-12-04):",
    "",
    "- **Heap buffers** (`shared/malloc.py`): glibc's mmap threshold raised "
    "in the frontend and workers, so multi-megabyte request buffers stay in "
    "the heap. At 1080p inline, page faults per request fell from 3575 to "
    "346 and the frontend's CPU per request from 18.3 to 10.5 ms.",
    "- **Per-request Python work**: message headers encoded without "
    "`dataclasses.asdict` (13 to 4 us, twice per request); the wait for the "
    "worker's reply with one timer instead of `wait_for(shield())`; the "
    "worker's ZeroMQ socket read by a loop reader callback instead of "
    "`zmq.asyncio`; startup objects frozen out of the garbage collector (a "
    "full pass took 5 to 10 ms, in the tail). Together: frontend CPU per "
    "64x64 request 0.79 to 0.70 ms through shared memory and 0.77 to 0.69 "
    "ms inline; inline against the alternative at 64x64 1.92 to 1.62.",
    "- **Measured, not applied: ZeroMQ itself.** Replacing the ZeroMQ hop by "
    "a plain Unix stream socket (a local branch, `speed`, commit 5b11ee6) "
    "cut the frontend's CPU per 64x64 request from 0.79 to 0.67 ms and the "
    "worker's from 0.32 to 0.26 ms; a bare round trip between two processes "
    "is 88 to 150 us through ZeroMQ (its I/O threads wake on both sides, "
    "in the worker on the worker's own core) against 16 us through a Unix "
    "socket. ZeroMQ is the transport the product specifies, so the change "
    "waits for that decision.",
    "- **What is left**: one Python grpc.aio call costs about 0.5 ms of CPU "
    "(the whole alternative process: 0.54 ms per 64x64 request; an empty "
    "RPC 0.56 to 0.73 ms of latency), so no Python gRPC server meets the "
    "0.5 ms p50 budget; the agent adds the worker's wake-up and the "
    "ZeroMQ hop on top. The per-request checks (segment fstat 6 + 8 us, "
    "metrics 9 us, parsing 4 us) were measured and are not worth removing.",
    "",
]


def latency_table(results: dict[str, Any]) -> list[str]:
    lines = [
        "## Latency at concurrency 1 (ms)",
        "",
        "| model | image | n | limit p50 | shm p50 | inline p50 | alt p50 | "
        "limit p99 | shm p99 | inline p99 | alt p99 | shm - limit p50 | "
        "client write | inline / alt | shm / limit |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in _latency_rows(results):
        med = row["median"]
        p50, p99 = med["p50_ms"], med["p99_ms"]
        lines.append(
            f"| {row['model']} | {row['size']} | {row['requests_per_path']} | "
            + " | ".join(f"{p50[p]:.2f}" for p in PATH_NAMES)
            + " | "
            + " | ".join(f"{p99[p]:.2f}" for p in PATH_NAMES)
            + f" | {med['shm_over_limit_p50_ms']:+.2f} | "
            f"{row['client_write_ms']:.2f} | {med['inline_over_alternative']:.2f} "
            f"| {med['shm_over_limit']:.2f} |"
        )
    return [*lines, ""]


def stages_table(results: dict[str, Any]) -> list[str]:
    stages = results.get("stages", {})
    empty = stages.get("empty_rpc_ms")
    rows = [v for k, v in stages.items() if k != "empty_rpc_ms"]
    lines = ["## Where the time goes (shared memory)", ""]
    if empty:
        lines += [
            f"An empty RPC (ListModels), median: agent {empty['agent']:.2f} ms, "
            f"bare grpc.aio alternative {empty['alternative']:.2f} ms.",
            "",
        ]
    if not rows:
        return [*lines, "The agent's metrics endpoint was not available.", ""]
    lines += [
        "Means over one path alone, from the client's clock and the agent's "
        "own metrics (`--metrics`): `agent` is the RPC's arrival to its "
        "answer in the frontend, split into `queue` (sent to the worker until "
        "it took the request), `inference` (the graph's run in the worker) "
        "and `transfer` (everything else inside the agent: validation, the "
        "ZeroMQ hop both ways, the worker's mapping, painting the mask, "
        "building the reply); `outside` is the client's round trip less its "
        "write and less `agent`: gRPC's client, the socket and gRPC's server "
        "core before and after the handler.",
        "",
        "| model | image | n | client round trip | client write | agent | "
        "queue | inference | transfer | outside |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['model']} | {row['size']} | {row['requests']} | "
            + " | ".join(
                f"{row[k]:.2f}"
                for k in (
                    "client_round_trip_ms",
                    "client_write_ms",
                    "agent_ms",
                    "queue_ms",
                    "inference_ms",
                    "transfer_ms",
                    "outside_agent_ms",
                )
            )
            + " |"
        )
    return [*lines, ""]


def throughput_table(results: dict[str, Any]) -> list[str]:
    concurrency = results["plan"]["concurrency"]
    lines = [
        "## Throughput (requests/s)",
        "",
        "One client thread per unit of concurrency, sharing a fixed number of "
        "requests; medians over repeats. `limit c1` is the session called "
        "back to back on one pinned core.",
        "",
        "| model | image | limit c1 | "
        + " | ".join(f"{p} c{c}" for p in ("shm", "inline", "alt") for c in concurrency)
        + " |",
        "|---|---|---:|" + "---:|" * (3 * len(concurrency)),
    ]
    for row in results["throughput"].values():
        rps = row["median"]["rps"]
        cells = [f"{rps['limit c1']:.1f}"] + [
            f"{rps[f'{p} c{c}']:.1f}"
            for p in ("shm", "inline", "alternative")
            for c in concurrency
        ]
        lines.append(f"| {row['model']} | {row['size']} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def cpu_table(results: dict[str, Any]) -> list[str]:
    lines = [
        "## CPU time per request (ms, concurrency 1)",
        "",
        "On-CPU time of every thread of each process (the nanosecond "
        "counters of `/proc/PID/task/*/schedstat`; psutil's `cpu_times` "
        "counts 10 ms ticks) before and after a throughput run, divided by "
        "its requests.",
        "",
        "| model | image | frontend shm | frontend inline | worker shm | "
        "worker inline | alternative process |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for row in results["throughput"].values():
        cpu = row["median"]["cpu_ms_per_request"]
        lines.append(
            f"| {row['model']} | {row['size']} | {cpu['frontend shm']:.2f} | "
            f"{cpu['frontend inline']:.2f} | {cpu['worker shm']:.2f} | "
            f"{cpu['worker inline']:.2f} | {cpu['alternative process']:.2f} |"
        )
    return [*lines, ""]


def _pair(two: dict[str, Any]) -> str:
    mask = " with a mask segment" if two.get("mask") else ""
    return f"{' + '.join(two.get('models', [BUNDLED]))}, {two['size']}{mask}"


def two_models_table(results: dict[str, Any]) -> list[str]:
    lines = [
        "## Two models at once",
        "",
        "Each model on its own pinned worker, through shared memory, two client "
        "threads per model; the first model alone, then both at once. "
        "`slow` is a test model (`tests/model_factory.py`) whose cost the frame "
        f"sets: {HEAVY_NOTE}; it is the target's case, where the model's cost "
        "dominates. `brick-texture` runs beside a copy named `brick-texture-b`, "
        "at 1920x1080 with a mask segment, where serving is a larger share.",
        "",
        "| models | image | requests per model | one model req/s "
        "| two models req/s (sum) | two / one | cores busy while two ran "
        "(CPU s / wall s, of 2) |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for key in ("two_models", "two_models_bundled"):
        two = results.get(key)
        if two is None:
            continue
        med = two["median"]
        busy = ", ".join(
            f"{k} {v:.2f}" for k, v in med.get("two: cores busy", {}).items()
        )
        lines.append(
            f"| {' + '.join(two.get('models', [BUNDLED]))} | {two['size']}"
            f"{' + mask' if two.get('mask') else ''} | {two['requests_per_model']} "
            f"| {med['one rps']:.1f} | {med['two rps']:.1f} "
            f"| {med['two over one']:.3f} | {busy} |"
        )
    return [*lines, ""]


def memory_tables(results: dict[str, Any]) -> list[str]:
    before, after = results["rss_before"], results["rss_after"]
    lines = [
        "## Memory (MiB)",
        "",
        "`VmRSS` (and `RssAnon`, which leaves out mapped shared-memory "
        "segments) from `/proc/PID/status`: before the first request, after "
        "the latency, throughput and two-model sections.",
        "",
        "| process | RSS before | RSS after | anon before | anon after |",
        "|---|---:|---:|---:|---:|",
    ]
    for name in before:
        lines.append(
            f"| {name} | {before[name]['VmRSS']:.1f} | {after[name]['VmRSS']:.1f} "
            f"| {before[name]['RssAnon']:.1f} | {after[name]['RssAnon']:.1f} |"
        )
    soak = results["soak"]
    names = [k for k in soak["samples"][0] if k != "requests"]
    lines += [
        "",
        f"### Soak: {soak['requests']} requests through shared memory "
        f"in {soak['seconds']:.0f} s",
        "",
        "Mixed sizes, mostly small (per 1000: 720 red-mean 64x64, 150 "
        "640x480, 30 1920x1080, 2 4096x4096; 70 brick-texture 64x64, 28 "
        "640x480 with a mask segment), one segment per size as a camera "
        "would reuse. RSS / anonymous RSS in MiB.",
        "",
        "| requests | " + " | ".join(names) + " |",
        "|---:|" + "---:|" * len(names),
    ]
    for sample in soak["samples"]:
        lines.append(
            f"| {sample['requests']} | "
            + " | ".join(
                f"{sample[n]['VmRSS']:.1f} / {sample[n]['RssAnon']:.1f}" for n in names
            )
            + " |"
        )
    return [*lines, ""]


# -- the plot ------------------------------------------------------------------


def draw_plot(results: dict[str, Any], path: Path) -> None:
    """p50 latency bars (log scale) per size and path, p99 as a tick; per model."""
    rows = _latency_rows(results)
    models = list(dict.fromkeys(r["model"] for r in rows))
    width, panel_h, top, left = 1100, 360, 50, 70
    height = top + panel_h * len(models) + 60
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    draw.text((left, 10), "p50 latency at concurrency 1 (bar), p99 (tick), ms, log "
              "scale", fill="black", font=font)  # fmt: skip
    for index, (path_name, color) in enumerate(COLORS.items()):
        x = left + index * 250
        draw.rectangle((x, 28, x + 12, 40), fill=color)
        draw.text((x + 18, 28), PATH_NAMES[path_name], fill="black", font=font)
    values = [
        v
        for r in rows
        for key in ("p50_ms", "p99_ms")
        for v in r["median"][key].values()
    ]
    low = 10 ** math.floor(math.log10(max(min(values), 1e-3)))
    high = 10 ** math.ceil(math.log10(max(values)))
    for panel, model in enumerate(models):
        y0 = top + panel * panel_h + 20
        y1 = y0 + panel_h - 60

        def y_of(ms: float, y0: int = y0, y1: int = y1) -> float:
            share = (math.log10(max(ms, low)) - math.log10(low)) / (
                math.log10(high) - math.log10(low)
            )
            return y1 - share * (y1 - y0)

        draw.text((left, y0 - 14), model, fill="black", font=font)
        decade = low
        while decade <= high:
            y = y_of(decade)
            draw.line((left, y, width - 20, y), fill=(220, 220, 220))
            draw.text((10, y - 6), f"{decade:g}", fill="black", font=font)
            decade *= 10
        mine = [r for r in rows if r["model"] == model]
        group_w = (width - left - 40) / max(1, len(mine))
        bar_w = group_w / (len(COLORS) + 1)
        for g, row in enumerate(mine):
            gx = left + 20 + g * group_w
            draw.text((gx + bar_w, y1 + 6), row["size"], fill="black", font=font)
            for b, path_name in enumerate(COLORS):
                x = gx + b * bar_w
                p50 = row["median"]["p50_ms"][path_name]
                p99 = row["median"]["p99_ms"][path_name]
                draw.rectangle(
                    (x, y_of(p50), x + bar_w - 4, y1), fill=COLORS[path_name]
                )
                draw.line(
                    (x, y_of(p99), x + bar_w - 4, y_of(p99)), fill="black", width=2
                )
        draw.line((left, y1, width - 20, y1), fill="black")
    image.save(path)
