"""scripts/bench.py end to end, with a handful of requests per point."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(90)
def test_quick_bench_writes_every_section(tmp_path: Path) -> None:
    command = [
        sys.executable, str(ROOT / "scripts" / "bench.py"), "--quick",
        "--requests", "3", "--repeats", "1", "--soak", "40",
        "--sizes", "64x64,640x480", "--concurrency", "1,2",
        "--out-dir", str(tmp_path),
    ]  # fmt: skip
    done = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=80, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr

    results = json.loads((tmp_path / "benchmarks.json").read_text())
    for section in (
        "machine",
        "latency",
        "stages",
        "throughput",
        "two_models",
        "rss_before",
        "rss_after",
        "soak",
        "targets",
    ):
        assert section in results, section
    assert len(results["latency"]) == 4  # two models x two sizes
    for row in results["latency"].values():
        for path in ("limit", "shm", "inline", "alternative"):
            assert 0 < row["median"]["p50_ms"][path] <= row["median"]["p99_ms"][path]
    for row in results["throughput"].values():
        rps = row["median"]["rps"]
        assert set(rps) == {
            "limit c1",
            *(f"{p} c{c}" for p in ("shm", "inline", "alternative") for c in (1, 2)),
        }
        assert all(value > 0 for value in rps.values())
        assert row["median"]["cpu_ms_per_request"]["frontend shm"] > 0
    assert results["two_models"]["median"]["two rps"] > 0
    samples = results["soak"]["samples"]
    assert [s["requests"] for s in samples] == [0, 10, 20, 30, 40]
    assert all(s["frontend"]["VmRSS"] > 0 for s in samples)
    assert len(results["targets"]) == 8
    assert all(isinstance(t["met"], bool) for t in results["targets"])

    document = (tmp_path / "benchmarks.md").read_text()
    assert "## Targets" in document and "![" in document
    png = (tmp_path / "benchmarks.png").read_bytes()
    assert png.startswith(b"\x89PNG")
