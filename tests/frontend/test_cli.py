"""The edge-agent command against a real agent serving the bundled model."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from PIL import Image

from tests.agent import ROOT, Agent, running_agent, wait_until
from tests.model_factory import write_component

SAMPLES = ROOT / "samples"


@pytest.fixture(scope="module")
def bundled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Agent]:
    models = tmp_path_factory.mktemp("bundled")
    shutil.copytree(ROOT / "models" / "brick-texture", models / "brick-texture")
    write_component(models, "slow")
    yield from running_agent(models, "--start", "brick-texture")


def cli(
    agent: Agent, *args: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "frontend", *args, "--socket", agent.address],
        capture_output=True,
        text=True,
        timeout=60,
        check=check,
        cwd=ROOT,
    )


def client_segments() -> set[str]:
    return {n for n in os.listdir("/dev/shm") if n.startswith("edge-agent-client")}


@pytest.mark.parametrize("sample", sorted((SAMPLES / "defective").glob("*.png")))
@pytest.mark.parametrize("inline", [False, True])
def test_defective_samples_are_anomalous(
    bundled: Agent, sample: Path, inline: bool
) -> None:
    bundled.wait_status("brick-texture", "RUNNING")
    before = client_segments()
    out = cli(bundled, "detect", str(sample), *(["--inline"] if inline else []))
    result = json.loads(out.stdout)
    assert result["is_anomalous"] is True
    assert result["anomaly_score"] >= result["anomaly_threshold"] == 0.5
    names = [a["name"] for a in result["anomalies"]]
    assert names == ["background", "anomaly"]
    assert client_segments() == before, "the client removes its segment"


@pytest.mark.parametrize("sample", sorted((SAMPLES / "good").glob("*.png")))
def test_good_samples_are_normal(bundled: Agent, sample: Path) -> None:
    bundled.wait_status("brick-texture", "RUNNING")
    result = json.loads(cli(bundled, "detect", str(sample)).stdout)
    assert result["is_anomalous"] is False
    assert result["anomaly_score"] < 0.5
    assert result["confidence"] == pytest.approx(1 - result["anomaly_score"], abs=1e-5)
    assert [a["name"] for a in result["anomalies"]] == ["background"]


@pytest.mark.parametrize("in_segment", [False, True])
def test_mask_is_saved_as_png(bundled: Agent, tmp_path: Path, in_segment: bool) -> None:
    bundled.wait_status("brick-texture", "RUNNING")
    sample = SAMPLES / "defective" / "bright-blob.png"
    # The suffix is compared without regard to case.
    mask_path = tmp_path / ("mask.PNG" if in_segment else "mask.png")
    extra = ["--mask-in-segment"] if in_segment else []
    result = json.loads(
        cli(bundled, "detect", str(sample), "--mask", str(mask_path), *extra).stdout
    )
    mask = np.asarray(Image.open(mask_path).convert("RGB"))
    with Image.open(sample) as picture:
        assert mask.shape == (picture.height, picture.width, 3)
    red = np.all(mask == (255, 0, 0), axis=2)
    white = np.all(mask == (255, 255, 255), axis=2)
    assert np.all(red | white)
    area = {a["name"]: a["total_percentage_area"] for a in result["anomalies"]}
    assert area["anomaly"] == pytest.approx(red.mean(), abs=1e-5)
    truth = np.asarray(Image.open(SAMPLES / "defective_masks" / sample.name)) > 0
    if truth.ndim == 3:
        truth = truth.any(axis=2)
    assert (red & truth).sum() > 0.5 * truth.sum(), "the mask covers the defect"


def test_model_commands(bundled: Agent) -> None:
    models = json.loads(cli(bundled, "models").stdout)
    assert {m["model_component"]: m["status"] for m in models} == {
        "brick-texture": "RUNNING",
        "slow": "STOPPED",
    }
    assert cli(bundled, "start", "slow").stdout.strip() == "STARTING"
    bundled.wait_status("slow", "RUNNING")
    described = json.loads(cli(bundled, "describe", "slow").stdout)
    assert described["status"] == "RUNNING"
    assert described["lookout_vision_model_arn"].endswith("slow/1.0.0")
    again = cli(bundled, "start", "slow", check=False)
    assert again.returncode == 1
    assert "FAILED_PRECONDITION" in again.stderr and "already RUNNING" in again.stderr
    assert cli(bundled, "stop", "slow").stdout.strip() == "STOPPED"
    waited = cli(bundled, "start", "slow", "--wait")
    assert json.loads(waited.stdout.split("\n", 1)[1])["status"] == "RUNNING"
    cli(bundled, "stop", "slow")


def test_client_commands_default_to_edge_agent_socket(
    bundled: Agent, tmp_path: Path
) -> None:
    def models(env_socket: str, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "frontend", "models", *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            cwd=ROOT,
            env={**os.environ, "EDGE_AGENT_SOCKET": env_socket},
        )

    done = models(str(bundled.socket_path))
    assert done.returncode == 0, done.stderr
    assert "brick-texture" in done.stdout
    # A flag still wins over the environment.
    done = models(f"unix://{tmp_path}/nobody.sock", "--socket", bundled.address)
    assert done.returncode == 0, done.stderr
    done = models("agent.sock")
    assert done.returncode == 2
    assert "EDGE_AGENT_SOCKET 'agent.sock' is not an address" in done.stderr


@pytest.mark.parametrize("name", ["mask.jpg", "mask.JPEG", "mask"])
def test_mask_must_be_png(tmp_path: Path, name: str) -> None:
    """Refused before any call: nobody answers on this socket."""
    done = subprocess.run(
        [
            sys.executable, "-m", "frontend", "detect",
            str(SAMPLES / "good" / "good_1.png"),
            "--mask", str(tmp_path / name),
            "--socket", f"unix://{tmp_path}/nobody.sock",
        ],
        capture_output=True, text=True, timeout=60, check=False, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 2
    assert "the mask is saved as PNG only; give a path ending in .png" in done.stderr
    assert "UNAVAILABLE" not in done.stderr
    assert not (tmp_path / name).exists()


def _detect_nobody(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """`detect` against a socket nobody listens on."""
    return subprocess.run(
        [
            sys.executable, "-m", "frontend", "detect",
            str(SAMPLES / "good" / "good_1.png"),
            "--socket", f"unix://{tmp_path}/nobody.sock", *extra,
        ],
        capture_output=True, text=True, timeout=60, check=False, cwd=ROOT,
    )  # fmt: skip


def test_mask_folder_must_exist(tmp_path: Path) -> None:
    """Refused before any call, like a wrong suffix."""
    done = _detect_nobody(tmp_path, "--mask", str(tmp_path / "nodir" / "mask.png"))
    assert done.returncode == 2
    assert f"the folder {tmp_path / 'nodir'} does not exist" in done.stderr
    assert "UNAVAILABLE" not in done.stderr


def test_no_agent_is_named_with_what_to_do(tmp_path: Path) -> None:
    done = _detect_nobody(tmp_path)
    assert done.returncode == 1
    assert "edge-agent: UNAVAILABLE: " in done.stderr
    assert (
        f"no agent answers at unix://{tmp_path}/nobody.sock; start one "
        "(./run.sh or edge-agent serve), or name its socket with --socket or "
        "EDGE_AGENT_SOCKET"
    ) in done.stderr


def test_unreadable_image_is_a_clear_error(bundled: Agent, tmp_path: Path) -> None:
    bogus = tmp_path / "not-an-image.png"
    bogus.write_text("hello")
    out = cli(bundled, "detect", str(bogus), check=False)
    assert out.returncode == 1
    assert "cannot read" in out.stderr and "as an image" in out.stderr


def test_ctrl_c_removes_the_client_segment(bundled: Agent, tmp_path: Path) -> None:
    """A detect interrupted while it waits still removes its segment."""
    if bundled.status("slow") != "RUNNING":
        bundled.start_model("slow")
    image = np.zeros((64, 64, 3), np.uint8)
    image[0, 0, 0] = 60  # about 2 s of work
    path = tmp_path / "slow.png"
    Image.fromarray(image).save(path)
    before = client_segments()
    process = subprocess.Popen(
        [sys.executable, "-m", "frontend", "detect", str(path), "--model", "slow",
         "--socket", bundled.address],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=ROOT,
    )  # fmt: skip
    try:
        wait_until(lambda: client_segments() - before, 20, "the client's segment")
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=20) == 130
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert client_segments() == before
    cli(bundled, "stop", "slow")


def test_sixteen_bit_photo_scores_like_its_eight_bit_version(
    bundled: Agent, tmp_path: Path
) -> None:
    bundled.wait_status("brick-texture", "RUNNING")
    gray = np.asarray(Image.open(SAMPLES / "good" / "good_1.png").convert("L"))
    eight, sixteen = tmp_path / "g8.png", tmp_path / "g16.png"
    Image.fromarray(gray).save(eight)
    Image.fromarray(gray.astype(np.uint16) * 257).save(sixteen)
    first = json.loads(cli(bundled, "detect", str(eight)).stdout)
    second = json.loads(cli(bundled, "detect", str(sixteen)).stdout)
    assert second == first
    assert first["is_anomalous"] is False


def test_mask_options_that_cannot_be_met(bundled: Agent, tmp_path: Path) -> None:
    if bundled.status("slow") != "RUNNING":
        bundled.start_model("slow")
    image = np.zeros((64, 64, 3), np.uint8)
    path = tmp_path / "black.png"
    Image.fromarray(image).save(path)
    mask = tmp_path / "m.png"
    out = cli(bundled, "detect", str(path), "--model", "slow", "--mask", str(mask))
    assert "returns no mask" in out.stderr
    assert not mask.exists()
    cli(bundled, "stop", "slow")
    sample = str(SAMPLES / "defective" / "chip.png")
    # A folder in the way is only found when the mask is written.
    taken = tmp_path / "taken.png"
    taken.mkdir()
    out = cli(bundled, "detect", sample, "--mask", str(taken), check=False)
    assert out.returncode == 1
    assert "cannot save the mask" in out.stderr and "Traceback" not in out.stderr


def test_client_refuses_arrays_that_are_not_rgb888(bundled: Agent) -> None:
    image = np.zeros((64, 64, 3), np.float64)
    with pytest.raises(TypeError, match="uint8 arrays of shape"):
        bundled.client.detect("brick-texture", image)
    with pytest.raises(TypeError, match="uint8 arrays of shape"):
        bundled.client.detect("brick-texture", np.zeros((64, 64, 4), np.uint8))


def test_readme_shows_what_a_python_caller_catches(bundled: Agent) -> None:
    """The client raises grpc.RpcError; the README's example handles it."""
    with pytest.raises(grpc.RpcError) as info:
        bundled.client.detect("nope", np.zeros((64, 64, 3), np.uint8))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND

    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, re.DOTALL)
    example = next(b for b in blocks if "RESOURCE_EXHAUSTED" in b)

    class Refusal(grpc.RpcError):
        def __init__(self, code: grpc.StatusCode) -> None:
            self._code = code

        def code(self) -> grpc.StatusCode:
            return self._code

    class FakeAgent:
        def __init__(self, code: grpc.StatusCode) -> None:
            self.code = code

        def detect(self, model: str, image: object) -> None:
            raise Refusal(self.code)

    # A full backlog is caught; any other refusal goes on up.
    exec(example, {"agent": FakeAgent(grpc.StatusCode.RESOURCE_EXHAUSTED), "image": 0})
    with pytest.raises(Refusal):
        exec(example, {"agent": FakeAgent(grpc.StatusCode.NOT_FOUND), "image": 0})
