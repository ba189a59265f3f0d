"""Log lines of the frontend process that need no running agent."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from frontend.config import AgentConfig
from frontend.server import _log_rescan
from frontend.supervisor import RescanResult


@pytest.mark.parametrize(
    ("result", "says"),
    [
        (
            RescanResult(added=("a",), kept=("ff2",)),
            "added a; kept ff2: its folder is gone but the model is running; "
            "it is dropped at the first rescan after it stops",
        ),
        (
            RescanResult(kept=("x", "y")),
            "kept x, y: their folders are gone but the models are running; "
            "each is dropped at the first rescan after it stops",
        ),
        (RescanResult(), "no change"),
    ],
)
def test_rescan_line_is_plain_english(
    caplog: pytest.LogCaptureFixture, result: RescanResult, says: str
) -> None:
    config = AgentConfig(model_dir=Path("models"))
    with caplog.at_level(logging.INFO, logger="frontend.server"):
        _log_rescan(config, result)
    assert caplog.messages == [f"Rescanned model directory models on SIGHUP: {says}"]
