"""frontend.worker.describe_exit: a worker's exit in an operator's words."""

from __future__ import annotations

import pytest

from frontend.worker import describe_exit


@pytest.mark.parametrize(
    ("returncode", "text"),
    [
        (0, "exited with status 0"),
        (1, "exited with status 1"),
        (3, "exited with status 3"),
        (255, "exited with status 255"),
        (-9, "was killed by SIGKILL (out of memory, or killed by an operator)"),
        (-7, "was killed by SIGBUS (a client's segment shrank while it was read?)"),
        (-11, "was killed by SIGSEGV (a crash in the runtime)"),
        (-15, "was killed by SIGTERM"),
        (-6, "was killed by SIGABRT"),
    ],
)
def test_describe_exit(returncode: int, text: str) -> None:
    assert describe_exit(returncode) == text


@pytest.mark.parametrize("signum", [32, 40, 99])
def test_describe_exit_of_a_signal_without_a_name(signum: int) -> None:
    """Real-time signals have no Signals member; the text must still come."""
    assert describe_exit(-signum) == f"was killed by signal {signum}"
