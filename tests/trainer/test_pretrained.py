"""Tests for the pretrained (EfficientNet-Lite0) recipe of the trainer.

Tiny photos and tiny memory banks keep these fast; quality is measured by
scripts/benchmark_quality.py, not here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from PIL import Image

from trainer import fit
from trainer.fit import TrainingError, build_component

torch = pytest.importorskip("torch")
backbones = pytest.importorskip("trainer.backbones")

ROOT = Path(__file__).resolve().parents[2]
SIZE = (64, 64)
BANK = 64


def _texture(rng: np.random.Generator, height: int = 96, width: int = 96) -> np.ndarray:
    """Grey blotchy texture with noise, as RGB uint8."""
    coarse = rng.normal(128, 20, (height // 8 + 1, width // 8 + 1))
    base = np.kron(coarse, np.ones((8, 8)))[:height, :width]
    gray = base + rng.normal(0, 6, base.shape)
    image: np.ndarray = np.clip(np.stack([gray] * 3, axis=-1), 0, 255).astype(np.uint8)
    return image


def _write_good(folder: Path, count: int = 6, seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        Image.fromarray(_texture(rng)).save(folder / f"good_{i}.png")
    return folder


def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def component(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pretrained")
    good = _write_good(root / "good", count=12)
    return build_component(
        good, root / "models", name="blotches", input_size=SIZE, bank_size=BANK
    )


@pytest.mark.parametrize("name", ["lite0", "lite1", "lite2"])
def test_backbone_loads_strictly_and_is_deterministic(name: str) -> None:
    net = backbones.load_backbone(name)
    variant = backbones.VARIANTS[name]
    state = torch.load(backbones.weights_path(variant), weights_only=True)
    assert set(net.state_dict()) == set(state)
    # The taps are the last blocks of the stride-8, 16 and 32 stages.
    widths = [state[f"_blocks.{t}._project_conv.weight"].shape[0] for t in variant.taps]
    assert tuple(widths) == variant.channels
    spec = backbones.feature_spec(name)
    extractor = backbones.FeatureExtractor(net, spec)
    pixels = torch.from_numpy(
        np.random.default_rng(0).uniform(0, 255, (1, 3, 64, 96)).astype(np.float32)
    )
    with torch.no_grad():
        first = extractor(pixels)
        second = extractor(pixels)
    assert first.shape == (1, spec.dims, 8, 12)
    assert torch.equal(first, second)
    assert bool(torch.isfinite(first).all()) and float(first.abs().max()) > 0


def test_feature_strides_choose_the_taps() -> None:
    spec = backbones.feature_spec("lite0")
    assert (spec.taps, spec.channels, spec.dims) == ((4, 10, 14), (40, 112, 192), 344)
    earlier = backbones.feature_spec("lite0", (16, 8))
    assert (earlier.taps, earlier.dims) == ((4, 10), 152)
    assert backbones.feature_spec("lite2", (32,)).channels == (208,)
    for bad in ((), (8, 64)):
        with pytest.raises(ValueError, match="use some of 4, 8, 16, 32"):
            backbones.feature_spec("lite0", bad)


def test_component_runs_at_two_input_sizes(component: Path) -> None:
    model = onnx.load(str(component / "model.onnx"))
    onnx.checker.check_model(model, full_check=True)
    assert [o.name for o in model.graph.output] == ["score", "mask", "anomaly_map"]
    session = _session(component / "model.onnx")
    rng = np.random.default_rng(7)
    for height, width in ((80, 100), (130, 70)):
        score, mask, amap = session.run(None, {"image": _texture(rng, height, width)})
        assert score.shape == (1,) and score.dtype == np.float32
        assert 0.0 <= score[0] < 1.0
        assert mask.shape == (height, width) and mask.dtype == np.uint8
        assert amap.shape == (height, width) and amap.dtype == np.float32
        assert np.array_equal(mask, (amap >= 0.5).astype(np.uint8))


def test_defect_scores_higher_than_good(component: Path) -> None:
    session = _session(component / "model.onnx")
    good = _texture(np.random.default_rng(99))
    bad = good.copy()
    # A 4-pixel checkerboard: nothing like the blotches, at any scale.
    yy, xx = np.mgrid[0:30, 0:30]
    bad[30:60, 30:60] = (255 * (((yy // 4) + (xx // 4)) % 2))[..., None]
    good_score = session.run(["score"], {"image": good})[0][0]
    bad_score, mask, _ = session.run(None, {"image": bad})
    assert good_score < 0.5 <= bad_score[0]
    assert mask[30:60, 30:60].mean() > mask.mean()


def test_deterministic_for_fixed_seed(tmp_path: Path) -> None:
    good = _write_good(tmp_path / "good", count=4)
    kwargs = {"name": "s", "input_size": SIZE, "seed": 3, "bank_size": BANK}
    first = build_component(good, tmp_path / "a", **kwargs)  # type: ignore[arg-type]
    second = build_component(good, tmp_path / "b", **kwargs)  # type: ignore[arg-type]
    assert (first / "model.onnx").read_bytes() == (second / "model.onnx").read_bytes()


def _write_defects(root: Path) -> Path:
    """An MVTec-layout folder with two kinds: dark and bright squares."""
    rng = np.random.default_rng(5)
    for kind, value in (("bright", 255), ("dark", 0)):
        (root / "test" / kind).mkdir(parents=True)
        (root / "ground_truth" / kind).mkdir(parents=True)
        for i in range(3):
            image = _texture(rng)
            mask = np.zeros(image.shape[:2], dtype=np.uint8)
            y, x = 16 + 12 * i, 40 - 8 * i
            image[y : y + 28, x : x + 28] = value
            mask[y : y + 28, x : x + 28] = 255
            Image.fromarray(image).save(root / "test" / kind / f"{i:03d}.png")
            Image.fromarray(mask).save(root / "ground_truth" / kind / f"{i:03d}.png")
    return root


def test_defects_give_labelled_segmentation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    good = _write_good(tmp_path / "good")
    defects = _write_defects(tmp_path / "defects")
    shared: list[float] = []
    per_label: list[np.ndarray] = []

    def spy_shared(*args: Any) -> tuple[float, float]:
        image_t, pixel_t = original_shared(*args)
        shared.append(pixel_t)
        return image_t, pixel_t

    def spy_labels(*args: Any, **kwargs: Any) -> np.ndarray:
        assert kwargs["fallback"] == shared[-1]
        thresholds = original_labels(*args, **kwargs)
        per_label.append(thresholds)
        return thresholds

    original_shared, original_labels = fit.defect_thresholds, fit.label_thresholds
    monkeypatch.setattr(fit, "defect_thresholds", spy_shared)
    monkeypatch.setattr(fit, "label_thresholds", spy_labels)
    component = build_component(
        good,
        tmp_path / "m",
        name="labelled",
        input_size=SIZE,
        bank_size=BANK,
        defects_dir=defects,
    )
    manifest = json.loads((component / "manifest.json").read_text())
    assert [label["name"] for label in manifest["labels"]] == ["bright", "dark"]
    assert len({label["color"] for label in manifest["labels"]}) == 2
    assert "best F1" in manifest["description"]
    assert "pixel threshold per label: bright " in manifest["description"]
    # Two labels; the kind with the stronger map keeps the threshold over
    # all, the other gets its own, lower one.
    (thresholds,) = per_label
    assert len(thresholds) == 2 and max(thresholds) == shared[0]
    assert min(thresholds) < shared[0]
    session = _session(component / "model.onnx")
    rng = np.random.default_rng(11)
    for label, value in ((1, 255), (2, 0)):
        image = _texture(rng)
        # The bright squares' map runs lower than the dark ones': with one
        # pixel threshold for both labels this one came out unmarked.
        image[30:60, 30:60] = value
        score, mask, _ = session.run(None, {"image": image})
        assert score[0] >= 0.5
        flagged = mask[mask > 0]
        assert flagged.size > 0
        assert np.bincount(flagged, minlength=3).argmax() == label


def test_defects_folder_errors(tmp_path: Path) -> None:
    good = _write_good(tmp_path / "good", count=3)
    with pytest.raises(TrainingError, match="no test/ folder"):
        build_component(
            good, tmp_path / "m", name="x", input_size=SIZE, defects_dir=tmp_path
        )
    with pytest.raises(TrainingError, match=r"folder .*nowhere does not exist"):
        build_component(
            good,
            tmp_path / "m",
            name="x",
            input_size=SIZE,
            defects_dir=tmp_path / "nowhere",
        )
    defects = _write_defects(tmp_path / "defects")
    # A kind folder left empty (photos not copied) is not silently dropped.
    (defects / "test" / "crack").mkdir()
    with pytest.raises(TrainingError, match=r"test/crack holds no PNG or JPEG"):
        build_component(
            good, tmp_path / "m", name="x", input_size=SIZE, defects_dir=defects
        )
    (defects / "test" / "crack").rmdir()
    (defects / "ground_truth" / "dark" / "001.png").unlink()
    with pytest.raises(TrainingError, match=r"no mask for .*001\.png"):
        build_component(
            good, tmp_path / "m", name="x", input_size=SIZE, defects_dir=defects
        )
    masks = defects / "ground_truth" / "dark"
    Image.fromarray(np.full((10, 10), 255, np.uint8)).save(masks / "001.png")
    with pytest.raises(
        TrainingError, match=r"001\.png is 10x10 but photo .* is 96x96; a mask must"
    ):
        build_component(
            good, tmp_path / "m", name="x", input_size=SIZE, defects_dir=defects
        )
    for i in range(3):
        Image.fromarray(np.zeros((96, 96), np.uint8)).save(masks / f"{i:03d}.png")
    with pytest.raises(TrainingError, match=r"kind\(s\) dark are empty"):
        build_component(
            good, tmp_path / "m", name="x", input_size=SIZE, defects_dir=defects
        )


def test_empty_and_small_folders_are_errors(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(TrainingError, match="no PNG or JPEG"):
        build_component(tmp_path / "empty", tmp_path / "m", name="x")
    small = tmp_path / "small"
    small.mkdir()
    for i in range(2):
        Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(small / f"{i}.png")
    with pytest.raises(TrainingError, match="at least 64x64"):
        build_component(small, tmp_path / "m", name="x")


def test_missing_torch_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    good = _write_good(tmp_path / "good", count=2)
    # None in sys.modules makes `from trainer import backbones` raise
    # ImportError, as on a machine without the train extra.
    monkeypatch.setitem(sys.modules, "trainer.backbones", None)
    with pytest.raises(TrainingError, match=r"pip install -e '\.\[train\]'"):
        build_component(good, tmp_path / "m", name="x", input_size=SIZE)


def test_fixed_backbone_does_not_import_torch(tmp_path: Path) -> None:
    good = _write_good(tmp_path / "good", count=3)
    code = (
        "import sys\n"
        "from trainer.fit import build_component\n"
        f"build_component({str(good)!r}, {str(tmp_path / 'm')!r}, name='f',"
        " backbone='fixed', input_size=(64, 64))\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "m" / "f" / "model.onnx").is_file()


def test_memory_bank_method_runs(tmp_path: Path) -> None:
    good = _write_good(tmp_path / "good", count=4)
    component = build_component(
        good,
        tmp_path / "m",
        name="bank",
        input_size=SIZE,
        bank_size=32,
        method="patchcore",
    )
    assert (
        "32-patch nearest-neighbour memory bank"
        in json.loads((component / "manifest.json").read_text())["description"]
    )
    session = _session(component / "model.onnx")
    score, mask, amap = session.run(None, {"image": _texture(np.random.default_rng(3))})
    assert score.shape == (1,) and mask.shape == amap.shape == (96, 96)


@pytest.mark.parametrize("name", ["lite1", "lite2"])
def test_larger_backbones_train_and_flag_a_defect(tmp_path: Path, name: str) -> None:
    good = _write_good(tmp_path / "good", count=12)
    component = build_component(
        good, tmp_path / "m", name="big", input_size=SIZE, backbone=name
    )
    manifest = json.loads((component / "manifest.json").read_text())
    assert f"EfficientNet-{name.capitalize()} features" in manifest["description"]
    session = _session(component / "model.onnx")
    clean = _texture(np.random.default_rng(99))
    spoiled = clean.copy()
    spoiled[30:60, 30:60] = 255
    clean_score = session.run(["score"], {"image": clean})[0][0]
    spoiled_score = session.run(["score"], {"image": spoiled})[0][0]
    assert clean_score < 0.5 <= spoiled_score


def test_gaussian_working_size_fits_the_covariance_blocks(tmp_path: Path) -> None:
    good = _write_good(tmp_path / "good", count=2)
    with pytest.raises(TrainingError, match=r"multiples of 32 \(covariance blocks"):
        build_component(good, tmp_path / "m", name="x", input_size=(80, 64))
