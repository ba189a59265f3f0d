"""Log set-up shared by the frontend and the workers.

Every line carries the process id and its role; a worker's lines also name
its model, so an operator can tell workers apart in one merged stream.
"""

from __future__ import annotations

import logging
import sys


def configure_logging(level: str, *, role: str, model: str | None = None) -> None:
    """Send this process's log lines to stderr, one per line."""
    who = f"{role} model={model}" if model else role
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter(
            f"%(asctime)s %(levelname)s [%(process)d] {who} %(name)s: %(message)s"
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
