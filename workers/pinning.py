"""Pinning the worker process, every thread of it, to its cores."""

from __future__ import annotations

import os


def parse_cores(text: str) -> list[int]:
    cores = sorted({int(part) for part in text.split(",") if part.strip()})
    if not cores:
        raise ValueError("--cores names no core")
    return cores


def pin_from_argv(argv: list[str]) -> None:
    """Pin to the ``--cores`` of ``argv``, if given; argparse checks later."""
    for index, arg in enumerate(argv):
        if arg == "--cores" and index + 1 < len(argv):
            pin_all_threads(parse_cores(argv[index + 1]))
        elif arg.startswith("--cores="):
            pin_all_threads(parse_cores(arg.split("=", 1)[1]))


def pin_all_threads(cores: list[int]) -> None:
    """Set the affinity of every thread of this process to ``cores``."""
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), cores)
        except ProcessLookupError:
            continue  # the thread ended meanwhile
