"""Tests for the JSON log lines (the text format is read by people)."""

from __future__ import annotations

import datetime
import json
import logging

from shared.logs import JsonFormatter


def _record(message: str, created: float) -> logging.LogRecord:
    record = logging.LogRecord(
        "frontend.x", logging.WARNING, __file__, 1, message, (), None
    )
    record.created = created
    return record


def test_time_is_utc_to_the_millisecond() -> None:
    created = 1796400000.123456  # 2026-12-04T16:00:00.123456Z
    entry = json.loads(JsonFormatter("frontend", None).format(_record("x", created)))
    assert entry["time"] == "2026-12-04T16:00:00.123+00:00"
    parsed = datetime.datetime.fromisoformat(entry["time"])
    assert abs(parsed.timestamp() - created) < 1e-3


def test_tokens_become_fields() -> None:
    formatter = JsonFormatter("worker", "red-mean")
    record = _record("Worker pid=999999 of model=other crashed", 0.0)
    entry = json.loads(formatter.format(record))
    assert entry["model"] == "red-mean"  # the worker's own model wins
    assert entry["worker_pid"] == 999999
    assert entry["level"] == "WARNING" and entry["role"] == "worker"
