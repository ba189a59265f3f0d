"""The bundled `machined-flange` component, its samples, and the renderer that
made them (scripts/flange_photos.py). The full rebuild is left out: its
feature extraction takes a minute or more."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from scripts.flange_photos import DEFECT_KINDS, render
from scripts.make_bundled_model import write_flange_training_photos
from tests.agent import ROOT

COMPONENT = ROOT / "models" / "machined-flange"
SAMPLES = ROOT / "samples" / "machined-flange"
# One feature cell of the 256x256 working size, in pixels of a 320x320 photo.
CELL = 10


@pytest.fixture(scope="module")
def session() -> ort.InferenceSession:
    return ort.InferenceSession(
        str(COMPONENT / "model.onnx"), providers=["CPUExecutionProvider"]
    )


def _read(path: Path, mode: str) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert(mode))


def _grow(mask: np.ndarray) -> np.ndarray:
    """`mask` and every pixel touching it, diagonals included."""
    padded = np.pad(mask, 1)
    height, width = mask.shape
    shifted = [
        padded[y : y + height, x : x + width] for y in range(3) for x in range(3)
    ]
    grown: np.ndarray = np.logical_or.reduce(shifted)
    return grown


def test_manifest() -> None:
    manifest = json.loads((COMPONENT / "manifest.json").read_text())
    assert manifest["name"] == "machined-flange"
    assert manifest["kind"] == "segmentation"
    assert manifest["input_size"] == [256, 256]
    assert manifest["threshold"] == 0.5
    assert manifest["labels"] == [{"name": "anomaly", "color": "#FF0000"}]
    # Trained with the default recipe.
    assert "EfficientNet-Lite0 features" in manifest["description"]
    assert "a Gaussian per feature cell" in manifest["description"]


def test_good_samples_pass(session: ort.InferenceSession) -> None:
    paths = sorted((SAMPLES / "good").glob("*.png"))
    assert len(paths) == 4
    for path in paths:
        score, mask, _ = session.run(None, {"image": _read(path, "RGB")})
        assert score[0] < 0.5, path.name
        assert not mask.any(), path.name


def test_defective_samples_are_caught_where_the_defect_is(
    session: ort.InferenceSession,
) -> None:
    paths = sorted((SAMPLES / "defective").glob("*.png"))
    assert sorted(p.stem for p in paths) == sorted(DEFECT_KINDS)
    for path in paths:
        image = _read(path, "RGB")
        truth = _read(SAMPLES / "defective_masks" / path.name, "L") > 0
        score, mask, anomaly_map = session.run(None, {"image": image})
        assert score[0] >= 0.5, path.name
        predicted = mask == 1
        assert predicted.shape == truth.shape == image.shape[:2]
        # The mask takes in the whole defect, and the map peaks on it; the
        # mask is coarse (feature cells, smoothed), but stays a region.
        assert (predicted & truth).sum() >= 0.95 * truth.sum(), path.name
        peak = np.unravel_index(np.argmax(anomaly_map), anomaly_map.shape)
        rows, cols = np.nonzero(truth)
        assert np.hypot(rows - peak[0], cols - peak[1]).min() <= CELL, path.name
        assert predicted.mean() < 0.25, path.name


def test_training_photos_are_reproducible(tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    for folder in (first, second):
        folder.mkdir()
        write_flange_training_photos(folder, 2)
    names = sorted(p.name for p in first.iterdir())
    assert names == ["flange_000.png", "flange_001.png"]
    for name in names:
        assert (first / name).read_bytes() == (second / name).read_bytes()
    assert (first / names[0]).read_bytes() != (first / names[1]).read_bytes()


def test_seed_decides_the_photo() -> None:
    image, mask = render((5, 0, 0))
    again, _ = render((5, 0, 0))
    other, _ = render((6, 0, 0))
    assert image.shape == (320, 320, 3) and image.dtype == np.uint8
    assert not mask.any()
    assert np.array_equal(image, again)
    assert not np.array_equal(image, other)


@pytest.mark.parametrize("kind", DEFECT_KINDS)
def test_defect_changes_only_its_mask(kind: str) -> None:
    """A defective photo is its good twin with the defect painted in: the
    mask is exact up to the antialiased ring around it."""
    good, _ = render((3, 1, 0))
    image, mask = render((3, 1, 0), kind)
    again, same_mask = render((3, 1, 0), kind)
    assert np.array_equal(image, again) and np.array_equal(mask, same_mask)
    assert 20 <= mask.sum() <= 2000, mask.sum()
    difference = np.abs(image.astype(int) - good.astype(int)).max(axis=2)
    assert not (difference > 0)[~_grow(mask)].any()
    assert (difference[mask] > 0).mean() > 0.9
    assert difference[mask].mean() > 20
