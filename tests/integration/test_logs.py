"""Log lines for operators: lifecycle and faults, JSON on request."""

from __future__ import annotations

import json
import signal
from pathlib import Path

from tests.agent import agent_context, wait_until
from tests.integration.test_rpcs import colored_image, inline_request


def test_json_log_lines_name_role_model_and_pid(model_dir: Path) -> None:
    with agent_context(
        model_dir, "--start", "red-mean", "--log-format", "json"
    ) as agent:
        agent.wait_status("red-mean", "RUNNING")
        for _ in range(3):
            agent.stub.DetectAnomalies(inline_request("red-mean", colored_image()))
        worker = agent.worker("red-mean")
        worker.send_signal(signal.SIGKILL)
        wait_until(lambda: "Restarting" in agent.log(), 10, "the restart line")
        agent.wait_status("red-mean", "RUNNING")
        text = agent.log()
    entries = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    assert entries, text
    # gRPC's C core may add lines of its own format; ours are all JSON.
    ours = [line for line in text.splitlines() if "edge-agent" in line.lower()]
    assert all(line.startswith("{") for line in ours), ours
    roles = {e["role"] for e in entries}
    assert roles == {"frontend", "worker"}
    for entry in entries:
        assert {"time", "level", "pid", "role", "logger", "message"} <= set(entry)
        if entry["role"] == "worker":
            assert entry["model"] == "red-mean"
    crash = [e for e in entries if e["message"].startswith("Worker model=")]
    crash = [e for e in crash if "was killed by SIGKILL" in e["message"]]
    assert len(crash) == 1, crash
    assert crash[0]["level"] == "WARNING"  # no request was lost
    assert crash[0]["model"] == "red-mean"
    assert crash[0]["worker_pid"] == worker.pid
    assert crash[0]["pid"] == agent.pid
    # No line per successful request at the default level.
    assert not [e for e in entries if "DetectAnomalies" in e["message"]]
