"""Log set-up shared by the frontend and the workers.

Every line carries the process id and its role; a worker's lines also name
its model, so an operator can tell workers apart in one merged stream.
Lines are human-readable text, or JSON objects one per line for log
collectors; in JSON the ``model=`` token of a message becomes a field, and
its ``pid=`` token, naming the worker a frontend line is about,
``worker_pid``.
"""

from __future__ import annotations

import datetime
import json
import logging
import re
import sys

_TOKEN = re.compile(r"\b(model|pid)=([^\s,;()]+)")


class JsonFormatter(logging.Formatter):
    def __init__(self, role: str, model: str | None) -> None:
        super().__init__()
        self.role = role
        self.model = model

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        entry: dict[str, object] = {
            # RFC 3339 in UTC, to the millisecond: lines of one request
            # fall within the same second.
            "time": datetime.datetime.fromtimestamp(
                record.created, tz=datetime.timezone.utc
            ).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "pid": record.process,
            "role": self.role,
            "logger": record.name,
            "message": message,
        }
        if self.model:
            entry["model"] = self.model
        for key, value in _TOKEN.findall(message):
            if key == "pid":
                # "pid" is the writing process; a pid named in the message
                # is the worker the line is about.
                if value.isdigit() and int(value) != record.process:
                    entry.setdefault("worker_pid", int(value))
            else:
                entry.setdefault(key, value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, separators=(",", ":"))


def configure_logging(
    level: str, *, role: str, model: str | None = None, fmt: str = "text"
) -> None:
    """Send this process's log lines to stderr, one per line."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter(role, model))
    else:
        who = f"{role} model={model}" if model else role
        handler.setFormatter(
            logging.Formatter(
                f"%(asctime)s %(levelname)s [%(process)d] {who} %(name)s: %(message)s"
            )
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
