"""Telling a dead run's leftovers from a live one's."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil

from frontend.runs import (
    RUN_DIR_PREFIX,
    is_live_run,
    make_run_dir,
    remove_dead_run_dirs,
    run_token,
)
from tests.agent import wait_until


def test_this_run_is_live() -> None:
    pid, start_ms = run_token().split(".")
    assert is_live_run(pid, start_ms)
    assert not is_live_run(pid, str(int(start_ms) - 1)), "a reused pid is not us"


def test_a_killed_unreaped_process_is_dead() -> None:
    """A SIGKILLed agent whose parent has not reaped it yet is a zombie."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        token = run_token(psutil.Process(child.pid))
        os.kill(child.pid, signal.SIGKILL)
        wait_until(
            lambda: psutil.Process(child.pid).status() == psutil.STATUS_ZOMBIE,
            10,
            "the child to become a zombie",
        )
        assert not is_live_run(*token.split("."))
    finally:
        child.kill()
        child.wait()
    assert not is_live_run(*token.split("."))


def test_run_dirs_of_dead_runs_are_removed(tmp_path: Path) -> None:
    mine = make_run_dir(tmp_path)
    assert mine.stat().st_mode & 0o777 == 0o700
    dead = tmp_path / f"{RUN_DIR_PREFIX}999999999.1700000000000"
    dead.mkdir()
    (dead / "model.1.zmq").write_bytes(b"")
    planted = tmp_path / f"{RUN_DIR_PREFIX}999999998.1700000000000"
    planted.symlink_to(mine)
    assert remove_dead_run_dirs(tmp_path) == 1
    assert mine.is_dir() and not dead.exists()
    assert planted.is_symlink(), "a link is never followed or removed"
