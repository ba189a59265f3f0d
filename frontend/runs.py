"""What one run of the agent leaves on the machine, and clearing dead runs.

A run is named by a token ``<pid>.<process start time in ms>``: a pid alone
can be reused, the pair cannot. Staging segments and the run directory
(the workers' ZeroMQ endpoints and the started components' snapshots)
carry the token, so the next start can tell
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


def snapshot_component(source: Path, run_dir: Path, start: int) -> Path:
    """Copy the component folder ``source`` into the run directory.

    A started model runs its snapshot, not the folder: a restart after a
    crash or a hung worker then loads the very files StartModel loaded,
    even while the folder is being retrained (``train --force``) or edited,
    and a file half-written at that moment cannot turn a good model FAILED.
    Changed files take effect at the next StartModel, which takes a fresh
    snapshot. The copy holds the folder's regular files (manifest, graph,
    external weights); subfolders are not part of the format.

    Returns ``<run_dir>/<name>.start-<start>/<name>``: one parent per model
    and start, and the copy named as the folder so the manifest's name
    check holds. Raises OSError (no space, unreadable).
    """
    target = run_dir / f"{source.name}.start-{start}" / source.name
    target.mkdir(parents=True, mode=0o700)
    try:
        for entry in source.iterdir():
            if entry.is_file():
                shutil.copyfile(entry, target / entry.name)
    except OSError:
        shutil.rmtree(target.parent, ignore_errors=True)
        raise
    return target


def remove_snapshot(snapshot: Path) -> None:
    """Remove what ``snapshot_component`` made (the copy and its parent)."""
    shutil.rmtree(snapshot.parent, ignore_errors=True)
