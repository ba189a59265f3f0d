"""Inline images sent as ZeroMQ frames give the same answers as segments."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from frontend.client import ClientSegment
from tests.agent import Agent, agent_segments, running_agent
from tests.integration.test_rpcs import colored_image, inline_request, shm_request


@pytest.fixture(scope="module")
def frame_agent(model_dir: Path) -> Iterator[Agent]:
    yield from running_agent(
        model_dir,
        "--start",
        "red-mean",
        "--start",
        "color-seg",
        "--inline-transport",
        "frame",
    )


@pytest.mark.parametrize("model", ["red-mean", "color-seg"])
def test_frame_transport_matches_shared_memory(
    frame_agent: Agent, segment: Callable[[int], ClientSegment], model: str
) -> None:
    frame_agent.wait_status(model, "RUNNING")
    image = colored_image(1920, 1080)
    by_frame = frame_agent.stub.DetectAnomalies(inline_request(model, image))
    seg = segment(image.nbytes)
    by_shm = frame_agent.stub.DetectAnomalies(shm_request(model, image, seg))
    assert by_frame == by_shm
    result = by_frame.detect_anomaly_result
    if model == "color-seg":
        mask = np.frombuffer(result.anomaly_mask.byte_data, np.uint8)
        assert mask.size == image.nbytes
        assert result.anomaly_score == pytest.approx(0.625)
    else:
        assert result.anomaly_score == pytest.approx(200 / 255 / 2, abs=1e-6)
    # No staging segment is made on this path.
    assert agent_segments(frame_agent.pid) == []
