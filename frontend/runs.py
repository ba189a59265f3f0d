"""What one run of the agent leaves on the machine, and clearing dead runs.

A run is named by a token ``<pid>.<process start time in ms>``: a pid alone
can be reused, the pair cannot. Staging segments and the run directory
(the workers' ZeroMQ endpoints) carry the token, so the next start can tell
what a dead run left behind and remove it.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import tempfile
from pathlib import Path

import psutil

log = logging.getLogger(__name__)

RUN_DIR_PREFIX = "edge-agent-run."


def run_token(process: psutil.Process | None = None) -> str:
    process = process or psutil.Process()
    return f"{process.pid}.{int(process.create_time() * 1000)}"


def is_live_run(pid: str, start_ms: str) -> bool:
    """Whether the run ``<pid>.<start_ms>`` is still going."""
    if not (pid.isdigit() and start_ms.isdigit()):
        return True  # not ours to judge
    try:
        process = psutil.Process(int(pid))
        # A killed agent its parent has not reaped yet is dead all the same.
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        return run_token(process) == f"{pid}.{start_ms}"
    except psutil.NoSuchProcess:
        return False


def make_run_dir(base: Path | None = None) -> Path:
    """This run's private directory (mode 0700) for the workers' sockets."""
    path = (base or Path(tempfile.gettempdir())) / f"{RUN_DIR_PREFIX}{run_token()}"
    path.mkdir(mode=0o700)
    return path


def remove_dead_run_dirs(base: Path | None = None) -> int:
    """Remove the run directories of agents that are no longer running."""
    base = base or Path(tempfile.gettempdir())
    removed = 0
    for entry in base.glob(f"{RUN_DIR_PREFIX}*"):
        parts = entry.name[len(RUN_DIR_PREFIX) :].split(".")
        if len(parts) != 2 or is_live_run(*parts):
            continue
        # Only a real directory of this user: never follow a planted link.
        info = entry.lstat()
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed += 1
    if removed:
        log.warning("Removed %d run director(ies) of dead agent runs", removed)
    return removed
