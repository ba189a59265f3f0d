"""Fixtures: test model components, client-owned segments, a real agent."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from frontend.client import ClientSegment
from tests.agent import Agent, running_agent
from tests.model_factory import write_component


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """red-mean, color-seg, slow, broken components, and a folder without a
    manifest."""
    folder = tmp_path_factory.mktemp("models")
    for name in ("red-mean", "color-seg", "slow"):
        write_component(folder, name)
    broken = folder / "broken"
    broken.mkdir()
    (broken / "manifest.json").write_text('{"format_version": 1, "name": "broken"')
    garbage = write_component(folder, "garbage", "red-mean")
    (garbage / "model.onnx").write_bytes(b"this is not an ONNX graph")
    # A folder that is no component: a graph but no manifest.
    write_component(folder, "no-manifest", "red-mean")
    (folder / "no-manifest" / "manifest.json").unlink()
    return folder


@pytest.fixture(scope="module")
def agent(model_dir: Path) -> Iterator[Agent]:
    """One agent per test module, with red-mean and color-seg RUNNING."""
    yield from running_agent(
        model_dir, "--start", "red-mean", "--start", "color-seg", "--backlog", "4"
    )


@pytest.fixture
def running(agent: Agent) -> Agent:
    for model in ("red-mean", "color-seg"):
        agent.wait_status(model, "RUNNING")
    return agent


@pytest.fixture
def segment() -> Iterator[Callable[[int], ClientSegment]]:
    """Make client-owned segments; each is removed after the test."""
    made: list[ClientSegment] = []

    def make(size: int) -> ClientSegment:
        made.append(ClientSegment(size, prefix="ea-test"))
        return made[-1]

    yield make
    for item in made:
        item.close()
