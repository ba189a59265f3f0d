"""Tests for the component builder's fixed-filter recipe and the bundled
brick-texture component; the pretrained recipe is in test_pretrained.py."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper
from PIL import Image

from trainer import fit, graph
from trainer.cli import main
from trainer.fit import TrainingError

ROOT = Path(__file__).resolve().parents[2]
SIZE = (64, 64)


def build_component(*args: Any, **kwargs: Any) -> Path:
    """The builder with the fixed filters, which these tests cover."""
    return fit.build_component(*args, backbone="fixed", **kwargs)


def _texture(rng: np.random.Generator, height: int = 96, width: int = 96) -> np.ndarray:
    """Diagonal stripes with a random phase plus noise, as RGB uint8."""
    yy, xx = np.mgrid[0:height, 0:width]
    phase = rng.uniform(0, 2 * np.pi)
    base = 128 + 60 * np.sin((xx + yy) * 0.6 + phase)
    gray = base + rng.normal(0, 8, base.shape)
    rgb = np.stack([gray, gray * 0.9, gray * 0.8], axis=-1)
    image: np.ndarray = np.clip(rgb, 0, 255).astype(np.uint8)
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
    root = tmp_path_factory.mktemp("fit")
    good = _write_good(root / "good")
    return build_component(good, root / "models", name="stripes", input_size=SIZE)


def test_manifest(component: Path) -> None:
    manifest = json.loads((component / "manifest.json").read_text())
    assert component.name == "stripes"
    assert manifest["format_version"] == 1
    assert manifest["name"] == "stripes"
    assert manifest["version"] == "1.0.0"
    assert manifest["kind"] == "segmentation"
    assert manifest["model_arn"] == "arn:edge-agent:model/stripes/1.0.0"
    assert manifest["threshold"] == 0.5
    assert manifest["input_size"] == list(SIZE)
    assert manifest["labels"] == [{"name": "anomaly", "color": "#FF0000"}]
    assert manifest["cores"] == 1
    assert isinstance(manifest["description"], str) and manifest["description"]


def test_graph_interface(component: Path) -> None:
    model = onnx.load(str(component / "model.onnx"))
    onnx.checker.check_model(model)
    (image,) = model.graph.input
    assert image.name == "image"
    assert image.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    dims = [d.dim_param or d.dim_value for d in image.type.tensor_type.shape.dim]
    assert dims == ["height", "width", 3]
    assert [o.name for o in model.graph.output] == ["score", "mask", "anomaly_map"]


@pytest.mark.parametrize("height,width", [(80, 100), (130, 70)])
def test_outputs_follow_input_size(component: Path, height: int, width: int) -> None:
    session = _session(component / "model.onnx")
    image = _texture(np.random.default_rng(7), height, width)
    score, mask, amap = session.run(None, {"image": image})
    assert score.dtype == np.float32 and score.shape == (1,)
    assert 0.0 <= float(score[0]) < 1.0
    assert mask.dtype == np.uint8 and mask.shape == (height, width)
    assert amap.dtype == np.float32 and amap.shape == (height, width)
    assert set(np.unique(mask)) <= {0, 1}
    np.testing.assert_array_equal(mask, (amap >= 0.5).astype(np.uint8))


def test_defect_scores_higher_than_good(component: Path) -> None:
    session = _session(component / "model.onnx")
    good = _texture(np.random.default_rng(99))
    bad = good.copy()
    bad[30:60, 30:60] = 15
    (good_score,) = session.run(["score"], {"image": good})[0]
    bad_score, mask, amap = session.run(None, {"image": bad})
    assert good_score < 0.5 <= bad_score[0]
    # The 8x8 feature grid of a 64x64 working size smears the map, so only
    # check that it peaks on the defect, not a tight outline.
    peak = np.unravel_index(int(amap.argmax()), amap.shape)
    assert 20 <= peak[0] < 70 and 20 <= peak[1] < 70
    assert mask[45, 45] == 1


def test_deterministic_for_fixed_seed(tmp_path: Path) -> None:
    good = _write_good(tmp_path / "good", count=4)
    first = build_component(good, tmp_path / "a", name="s", input_size=SIZE, seed=3)
    second = build_component(good, tmp_path / "b", name="s", input_size=SIZE, seed=3)
    for name in ("model.onnx", "manifest.json"):
        assert (first / name).read_bytes() == (second / name).read_bytes()


def test_classification_outputs_score_only(tmp_path: Path) -> None:
    good = _write_good(tmp_path / "good", count=3)
    component = build_component(
        good, tmp_path / "m", name="cls", kind="classification", input_size=SIZE
    )
    manifest = json.loads((component / "manifest.json").read_text())
    assert manifest["kind"] == "classification" and "labels" not in manifest
    outputs = _session(component / "model.onnx").run(
        None, {"image": _texture(np.random.default_rng(1))}
    )
    assert len(outputs) == 1 and outputs[0].shape == (1,)


def test_empty_folder_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "good").mkdir()
    with pytest.raises(TrainingError, match="no PNG or JPEG"):
        build_component(tmp_path / "good", tmp_path / "m", name="x")


def test_a_data_set_root_points_to_its_good_photos(tmp_path: Path) -> None:
    _write_good(tmp_path / "data" / "train" / "good", count=2)
    with pytest.raises(TrainingError) as caught:
        build_component(tmp_path / "data", tmp_path / "m", name="x")
    assert str(caught.value) == (
        f"no PNG or JPEG photos in {tmp_path / 'data'} (an MVTec-layout folder: "
        f"its good photos are in {tmp_path / 'data'}/train/good); put at least 2 "
        "photos of good (defect-free) parts there"
    )


def test_unreadable_image_is_an_error(tmp_path: Path) -> None:
    good = _write_good(tmp_path / "good", count=2)
    (good / "broken.png").write_bytes(b"not an image")
    with pytest.raises(TrainingError, match=r"cannot read .*broken\.png"):
        build_component(good, tmp_path / "m", name="x")


def test_small_image_is_an_error(tmp_path: Path) -> None:
    good = _write_good(tmp_path / "good", count=2)
    Image.new("RGB", (63, 100)).save(good / "tiny.png")
    with pytest.raises(TrainingError, match="at least 64x64"):
        build_component(good, tmp_path / "m", name="x")


def test_single_photo_is_an_error(tmp_path: Path) -> None:
    good = _write_good(tmp_path / "good", count=1)
    with pytest.raises(TrainingError, match="at least 2"):
        build_component(good, tmp_path / "m", name="x")


def test_bad_arguments_are_errors(tmp_path: Path) -> None:
    good = _write_good(tmp_path / "good", count=2)
    with pytest.raises(TrainingError, match="name"):
        build_component(good, tmp_path / "m", name="Bad Name")
    with pytest.raises(TrainingError, match="kind"):
        build_component(good, tmp_path / "m", name="x", kind="detection")
    with pytest.raises(TrainingError, match="input_size"):
        build_component(good, tmp_path / "m", name="x", input_size=(100, 64))


def test_blank_photos_are_an_error(tmp_path: Path) -> None:
    good = tmp_path / "good"
    good.mkdir()
    for i in range(3):
        Image.new("RGB", (96, 96), (120, 120, 120)).save(good / f"blank{i}.png")
    with pytest.raises(TrainingError, match="identical to the training ones"):
        build_component(good, tmp_path / "m", name="x", input_size=SIZE)


def test_existing_component_is_kept_unless_forced(tmp_path: Path) -> None:
    good = _write_good(tmp_path / "good", count=3)
    first = build_component(good, tmp_path / "m", name="x", input_size=SIZE)
    before = (first / "model.onnx").stat().st_mtime_ns
    with pytest.raises(TrainingError, match="exists already"):
        build_component(good, tmp_path / "m", name="x", input_size=SIZE)
    assert (first / "model.onnx").stat().st_mtime_ns == before
    again = build_component(
        good, tmp_path / "m", name="x", input_size=SIZE, overwrite=True
    )
    assert again == first


def test_sixteen_bit_photos_are_scaled_not_clipped(tmp_path: Path) -> None:
    """Pillow's convert("RGB") clips 16-bit gray to white; the builder must not."""
    colour = _write_good(tmp_path / "colour", count=3)
    narrow, wide = tmp_path / "good8", tmp_path / "good16"
    narrow.mkdir()
    wide.mkdir()
    for path in sorted(colour.glob("*.png")):
        gray = np.asarray(Image.open(path).convert("L"))
        Image.fromarray(gray).save(narrow / path.name)
        Image.fromarray(gray.astype(np.uint16) * 257).save(wide / path.name)
    with Image.open(next(wide.glob("*.png"))) as sample:
        assert sample.mode.startswith("I;16")
    eight = build_component(narrow, tmp_path / "m8", name="g", input_size=SIZE)
    sixteen = build_component(wide, tmp_path / "m16", name="g", input_size=SIZE)
    # g * 257 >> 8 == g: the 16-bit photos must train the very same model.
    assert (eight / "model.onnx").read_bytes() == (sixteen / "model.onnx").read_bytes()


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = _write_good(tmp_path / "good", count=3)
    argv = [str(good), "--out", str(tmp_path / "m"), "--name", "cli"]
    argv += ["--backbone", "fixed"]
    assert main([*argv, "--input-size", "64x64"]) == 0
    assert (tmp_path / "m" / "cli" / "model.onnx").is_file()
    out = capsys.readouterr().out
    assert "loaded 3 good photos" in out
    # 3 photos leave 1 held out: the threshold rule needs more, and says so.
    assert "warning: only 1 good photo(s) held out" in out
    assert "give at least 50 good photos" in out
    assert main([str(tmp_path / "missing"), "--out", "o", "--name", "x"]) == 2
    assert "not a folder" in capsys.readouterr().err


def _rgb(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def test_bundled_component_labels_samples() -> None:
    component = ROOT / "models" / "brick-texture"
    manifest = json.loads((component / "manifest.json").read_text())
    assert manifest["name"] == "brick-texture" and manifest["kind"] == "segmentation"
    session = _session(component / "model.onnx")
    good = sorted((ROOT / "samples" / "good").glob("*.png"))
    defective = sorted((ROOT / "samples" / "defective").glob("*.png"))
    assert len(good) >= 3 and len(defective) >= 3
    for path in good:
        score, mask, _ = session.run(None, {"image": _rgb(path)})
        assert score[0] < 0.45, path.name
        assert mask.sum() == 0, path.name
    for path in defective:
        image = _rgb(path)
        score, mask, _ = session.run(None, {"image": image})
        assert score[0] >= 0.55, path.name
        with Image.open(ROOT / "samples" / "defective_masks" / path.name) as img:
            truth = np.asarray(img.convert("L")) > 0
        predicted = mask == 1
        assert predicted.shape == truth.shape == image.shape[:2]
        iou = (predicted & truth).sum() / (predicted | truth).sum()
        assert iou > 0.1, (path.name, iou)


def _smoothed(dist: np.ndarray) -> np.ndarray:
    """The graph's 5x5 Gaussian smoothing with edge padding, in numpy."""
    kernel = graph.gaussian_kernel(graph.SMOOTH_SIGMA)[0, 0]
    padded = np.pad(dist, 2, mode="edge")
    height, width = dist.shape
    return np.array(
        [
            [float((padded[i : i + 5, j : j + 5] * kernel).sum()) for j in range(width)]
            for i in range(height)
        ]
    )


def _mahalanobis_map(
    cells: np.ndarray,
    *,
    weight: np.ndarray,
    bias: np.ndarray,
    means: np.ndarray,
    whiten: np.ndarray,
    block: int,
) -> np.ndarray:
    """Per-cell distance ||(W f + b - mean)^T L_block||, cells [C, h, w]."""
    _, height, width = cells.shape
    z = np.einsum("dc,chw->dhw", weight, cells) + bias[:, None, None] - means
    factors = whiten.astype(np.float16).astype(np.float64)
    out = np.empty((height, width))
    for i in range(height):
        for j in range(width):
            factor = factors[(i // block) * (width // block) + j // block]
            out[i, j] = np.linalg.norm(z[:, i, j] @ factor)
    return out


def test_gaussian_graph_matches_numpy_with_a_fine_model() -> None:
    """Image score: the full model's smoothed map maximum; pixel map: the
    geometric mean of the full and the fine (leading channels) maps."""
    size, block, seed = (32, 48), 2, 0
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (40, 52, 3), dtype=np.uint8)
    features = ort.InferenceSession(
        graph.build_feature_model(size, seed).SerializeToString(),
        providers=["CPUExecutionProvider"],
    )
    (cells,) = features.run(["features"], {"image": image})
    channels = cells.shape[1]
    grid = (size[1] // graph.GRID_STRIDE, size[0] // graph.GRID_STRIDE)
    blocks = (grid[0] // block) * (grid[1] // block)

    def random_model(dims: int, inputs: int) -> tuple[np.ndarray, ...]:
        weight = rng.normal(0, 0.3, (dims, inputs))
        bias = rng.normal(0, 0.1, dims)
        means = rng.normal(0, 0.5, (dims, *grid)).astype(np.float32)
        lower = np.tril(rng.normal(0, 0.2, (blocks, dims, dims)))
        whiten = (lower + 2 * np.eye(dims)).astype(np.float32)
        return weight, bias, means, whiten

    main_w, main_b, main_means, main_whiten = random_model(6, channels)
    fine_w, fine_b, fine_means, fine_whiten = random_model(4, 10)
    scoring = graph.GaussianScoring(
        main_w,
        main_b,
        main_means,
        main_whiten,
        block,
        1.0,
        1.0,
        local=graph.LocalGaussian(10, fine_w, fine_b, fine_means, fine_whiten),
    )
    session = ort.InferenceSession(
        graph.build_component_model(
            size, seed, scoring, segmentation=True, raw_outputs=True
        ).SerializeToString(),
        providers=["CPUExecutionProvider"],
    )
    raw_score, raw_map = session.run(["raw_score", "raw_map"], {"image": image})

    f = cells[0].astype(np.float64)
    full = _smoothed(
        _mahalanobis_map(
            f,
            weight=main_w,
            bias=main_b,
            means=main_means,
            whiten=main_whiten,
            block=block,
        )
    )
    fine = _smoothed(
        _mahalanobis_map(
            f[:10],
            weight=fine_w,
            bias=fine_b,
            means=fine_means,
            whiten=fine_whiten,
            block=block,
        )
    )
    assert raw_score[0] == pytest.approx(full.max(), rel=1e-4)
    np.testing.assert_allclose(raw_map[0, 0], np.sqrt(full * fine), rtol=1e-4)
    # The maps differ, so the test tells which one each output uses.
    assert not np.allclose(full, fine, rtol=0.05)

    # A classifier has no pixel map, so its graph leaves the fine model out.
    classifier = graph.build_component_model(size, seed, scoring, segmentation=False)
    names = {init.name.rsplit("_", 1)[0] for init in classifier.graph.initializer}
    assert "proj_wt" in names and "local_wt" not in names
    (score,) = ort.InferenceSession(
        classifier.SerializeToString(), providers=["CPUExecutionProvider"]
    ).run(["score"], {"image": image})
    assert score[0] == pytest.approx(full.max() / (full.max() + 1.0), rel=1e-4)


def test_outlying_marks_scores_past_the_fence_and_the_gap() -> None:
    # Log scores spread evenly over 3 +- 0.15: quartiles 3 -+ 0.075, so the
    # fence is at 3 + 0.075 + 1.5 x 0.15 = 3.3 (a score of 27.1); the bulk
    # ends at 23.3, so the gap asks for more than 1.15 x 23.3 = 26.8.
    scores = list(np.exp(np.linspace(2.85, 3.15, 70)))
    bulk_max = max(scores)
    far = fit.outlying([*scores, 48.0, 2.5 * bulk_max])
    assert far.tolist() == [False] * 70 + [True, True]
    # A score just above the bulk's largest is inside the fence.
    assert not fit.outlying([*scores, 1.02 * bulk_max]).any()
    # Past the fence, but within the gap of a score that stays: kept.
    assert not fit.outlying([*scores, 26.0, 28.0]).any()
    # The gap is to the largest score kept, so 60 goes and 28 stays.
    assert fit.outlying([*scores, 26.0, 28.0, 60.0]).tolist() == [False] * 72 + [True]


def test_outlying_needs_enough_scores_few_marks_and_a_scale() -> None:
    # Under MIN_HELD_FOR_FENCE scores the quartiles mean little: none marked.
    bulk = [1.0] * (fit.MIN_HELD_FOR_FENCE - 1)
    assert not fit.outlying([*bulk[1:], 50.0], max_share=0.4).any()
    assert fit.outlying([*bulk, 50.0], max_share=0.4).tolist() == [False] * len(
        bulk
    ) + [True]
    # At most MAX_OUTLYING_SHARE (5%) are marked: five high scores of 100 go,
    # six are a mode of good parts, and none clears the gap over the sixth.
    assert fit.outlying([10.0] * 95 + [100.0] * 5).sum() == 5
    assert not fit.outlying([10.0] * 94 + [100.0] * 6).any()
    # An even ramp above a flat bulk (IQR 0): past the fence, but each step
    # is within the gap of the next, so none is an outlier.
    assert not fit.outlying([10.0] * 80 + [11.0 + i for i in range(20)]).any()
    # The others all about 0: no scale to be far from, nothing marked.
    assert not fit.outlying([0.0] * 25 + [0.5]).any()
    # A share of 0 turns the rule off (the benchmark's previous rule).
    assert not fit.outlying([10.0] * 95 + [100.0] * 5, max_share=0.0).any()
    with pytest.raises(ValueError, match="max_share"):
        fit.outlying([1.0] * 30, max_share=0.5)


def test_a_score_that_is_not_a_number_is_an_error() -> None:
    raw = [(1.0, np.zeros(1)), (float("nan"), np.zeros(1)), (np.inf, np.zeros(1))]
    with pytest.raises(TrainingError, match=r"b\.png, c\.png got a score"):
        fit._check_finite(raw, ["a.png", "b.png", "c.png"])


def _write_spot_defects(root: Path) -> Path:
    """An MVTec-layout folder of three photos with a dark square."""
    rng = np.random.default_rng(7)
    (root / "test" / "spot").mkdir(parents=True)
    (root / "ground_truth" / "spot").mkdir(parents=True)
    for i in range(3):
        image = _texture(rng)
        mask = np.zeros(image.shape[:2], dtype=np.uint8)
        image[30:60, 30:60] = 0
        mask[30:60, 30:60] = 255
        Image.fromarray(image).save(root / "test" / "spot" / f"{i}.png")
        Image.fromarray(mask).save(root / "ground_truth" / "spot" / f"{i}.png")
    return root


@pytest.mark.parametrize("with_defects", [False, True])
def test_outlying_held_out_photo_does_not_set_the_threshold(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], with_defects: bool
) -> None:
    """One odd photo among the held-out ones used to set the threshold alone
    (with --defects, its floor), so the model passed everything that scored
    below it; now it is left out, named, and the model flags it."""
    count, seed = 110, 0
    good = _write_good(tmp_path / "good", count=count)
    n_hold = round(fit.HOLDOUT_FRACTION * count)
    odd_index = int(np.random.default_rng(seed).permutation(count)[0])
    assert n_hold >= fit.MIN_HELD_FOR_FENCE
    odd = _texture(np.random.default_rng(99))
    odd[20:80, 20:80] = (255, 0, 255)
    # The builder takes the photos sorted by name.
    odd_name = sorted(f"good_{i}.png" for i in range(count))[odd_index]
    Image.fromarray(odd).save(good / odd_name)
    defects = _write_spot_defects(tmp_path / "defects") if with_defects else None

    component = fit.build_component(
        good,
        tmp_path / "models",
        name="odd",
        input_size=SIZE,
        backbone="fixed",
        seed=seed,
        defects_dir=defects,
        progress=print,
    )
    out = capsys.readouterr().out
    assert f"1 of the {n_hold} held-out good photos scores far above" in out
    assert odd_name in out
    description = json.loads((component / "manifest.json").read_text())["description"]
    rule = (
        f"best F1 on {n_hold - 1} held-out good and 3 defective photos"
        if with_defects
        else f"max of {n_hold - 1} held-out good values"
    )
    assert f"{rule}, 1 outlying left out" in description
    session = _session(component / "model.onnx")
    (odd_score,) = session.run(["score"], {"image": odd})[0]
    assert odd_score >= 0.5
    plain = _texture(np.random.default_rng(1234))
    assert session.run(["score"], {"image": plain})[0][0] < 0.5


def _resize_modes(model: onnx.ModelProto) -> list[str]:
    """The `mode` of each Resize node, in graph order."""
    return [
        helper.get_attribute_value(attr).decode()
        for node in model.graph.node
        if node.op_type == "Resize"
        for attr in node.attribute
        if attr.name == "mode"
    ]


def _resized(
    image: np.ndarray,
    size: tuple[int, int],
    resample: str | None,
    backbone: onnx.GraphProto | None = None,
) -> tuple[np.ndarray, str]:
    """The working-size image [3, h, w] that a stand-in backbone passing the
    pixels through sees (the fixed filters' features without one), and the
    Resize mode of the stage's graph."""
    model = graph.build_feature_model(size, 0, backbone, resample=resample)
    modes = _resize_modes(model)
    assert len(modes) == 1, modes
    session = ort.InferenceSession(
        model.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    (out,) = session.run(["features"], {"image": image})
    return (out[0] if backbone is None else _pixels(out[0])), modes[0]


def _pass_through_backbone() -> onnx.GraphProto:
    """Pixels [1, 3, H, W] rearranged, losslessly, into "features" [1, 3 x 64,
    H/8, W/8] (SpaceToDepth); `_pixels` undoes it."""
    stride = graph.GRID_STRIDE
    return helper.make_graph(
        [helper.make_node("SpaceToDepth", ["pixels"], ["features"], blocksize=stride)],
        "pass_through",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, None)],
    )


def _pixels(features: np.ndarray) -> np.ndarray:
    """[3 x 64, h, w] from `_pass_through_backbone` back to [3, 8h, 8w]."""
    stride = graph.GRID_STRIDE
    _, h, w = features.shape
    blocks = features.reshape(stride, stride, 3, h, w)
    pixels: np.ndarray = blocks.transpose(2, 3, 0, 4, 1)
    return pixels.reshape(3, h * stride, w * stride)


def test_pretrained_backbones_see_a_bicubic_resize_and_fixed_filters_bilinear() -> None:
    image = np.zeros((40, 40, 3), np.uint8)
    assert _resized(image, SIZE, None, _pass_through_backbone())[1] == "cubic"
    assert _resized(image, SIZE, "linear", _pass_through_backbone())[1] == "linear"
    # The fixed filter bank was tuned on bilinear, and keeps it.
    _, mode = _resized(image, SIZE, None)
    assert mode == "linear"
    with pytest.raises(ValueError, match="resample must be one of"):
        graph.build_feature_model(SIZE, 0, _pass_through_backbone(), resample="area")


@pytest.mark.parametrize("resample", graph.RESAMPLERS)
def test_resize_keeps_a_photo_at_the_working_size_exact(resample: str) -> None:
    image = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    pixels, _ = _resized(image, SIZE, resample, _pass_through_backbone())
    np.testing.assert_array_equal(pixels, image.transpose(2, 0, 1).astype(np.float32))


def test_bicubic_resize_keeps_a_small_spot_more_visible_than_bilinear() -> None:
    """Why pretrained backbones get the bicubic kernel: a 3-pixel spot on a
    600-pixel photo, shrunk to 256, stays darker than under the bilinear
    one (measured 52 against 69 on a background of 160)."""
    image = np.full((600, 600, 3), 160, np.uint8)
    image[299:302, 299:302] = 20
    size = (256, 256)
    cubic, _ = _resized(image, size, "cubic", _pass_through_backbone())
    linear, _ = _resized(image, size, "linear", _pass_through_backbone())
    assert cubic.min() < linear.min() - 10
    # Away from the spot both leave the flat background as it was.
    assert np.allclose(cubic[:, :100, :100], 160, atol=1e-3)
    assert np.allclose(linear[:, :100, :100], 160)


def test_bicubic_resize_is_pillows_kernel_away_from_the_border() -> None:
    """Keys' kernel with a = -0.5, antialiased, in float: what Pillow's
    BICUBIC computes, except within 3 pixels of the border."""
    image = np.random.default_rng(2).integers(0, 256, (150, 200, 3), dtype=np.uint8)
    size = (64, 48)
    pixels, _ = _resized(image, size, "cubic", _pass_through_backbone())
    for channel in range(3):
        plane = Image.fromarray(image[..., channel].astype(np.float32), mode="F")
        expected = np.asarray(plane.resize(size, Image.Resampling.BICUBIC))
        np.testing.assert_allclose(
            pixels[channel, 3:-3, 3:-3], expected[3:-3, 3:-3], atol=1e-3
        )


def test_recipe_resample_reaches_every_graph_the_builder_makes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The feature graph (fit, refit, prototypes), the calibration graph and
    the saved component all get the recipe's resize."""
    seen: list[Any] = []
    for name in ("build_feature_model", "build_component_model"):
        original = getattr(graph, name)

        def spy(*args: Any, _original: Any = original, **kwargs: Any) -> Any:
            seen.append(kwargs.get("resample"))
            return _original(*args, **kwargs)

        monkeypatch.setattr(graph, name, spy)
    recipe = dataclasses.replace(fit.RECIPES["fixed", "gaussian"], resample="cubic")
    component = fit.build_component(
        _write_good(tmp_path / "good", count=6),
        tmp_path / "models",
        name="cubic",
        input_size=SIZE,
        recipe=recipe,
    )
    assert seen == ["cubic"] * 3  # features, calibration, the component
    modes = _resize_modes(onnx.load(str(component / "model.onnx")))
    # The image's resize, then the anomaly map's (bilinear, to the photo).
    assert modes[0] == "cubic"
    with pytest.raises(TrainingError, match="resample 'area' is invalid"):
        fit.build_component(
            tmp_path / "good",
            tmp_path / "models",
            name="area",
            input_size=SIZE,
            recipe=dataclasses.replace(recipe, resample="area"),
        )


def test_each_label_gets_the_pixel_threshold_of_its_own_cells() -> None:
    """A strong kind whose map spreads around its defects, and a faint,
    small one: the threshold over all cells sits above the faint kind's
    cells; one per label marks both."""
    size = (32, 32)  # a 4x4 grid of 8-pixel cells
    grid = (4, 4)
    # Cells of the top half take label 0, of the bottom half label 1.
    labels = np.repeat([0, 1], 8)
    second = np.full(grid, 1.5)
    second[2:] = 2.5  # the good cells of label 1 reach 2.5
    held_raw = [(1.0, np.full(grid, 1.0)), (1.5, second)]
    strong_mask = np.zeros((32, 32), dtype=bool)
    strong_mask[:8] = True  # the top row of cells
    strong = np.full(grid, 1.0)
    strong[0] = 9.0
    strong[1] = 5.0  # the map spreads into the next row, outside the mask
    faint_mask = np.zeros((32, 32), dtype=bool)
    faint_mask[24:, :16] = True  # two cells of the bottom row
    faint = np.full(grid, 1.0)
    faint[3, :2] = 3.0
    faint[3, 2:] = 2.8  # beside it, outside its mask: good cells too
    defects = [
        fit.Defect("strong", Path("strong.png"), np.zeros((32, 32, 3)), strong_mask),
        fit.Defect("faint", Path("faint.png"), np.zeros((32, 32, 3)), faint_mask),
    ]
    defect_raw = [(9.0, strong), (3.0, faint)]
    # The threshold over all cells pays for the spread and loses the faint.
    _, shared = fit.defect_thresholds(held_raw, defect_raw, defects, size)
    assert shared > 5.0

    def per_label(fallback: float) -> np.ndarray:
        return fit.label_thresholds(
            held_raw,
            [labels, labels],
            defect_raw,
            [labels, labels],
            defects=defects,
            input_size=size,
            count=3,
            fallback=fallback,
        )

    thresholds = per_label(shared)
    # Each in the gap between its own label's good cells (held-out photos,
    # and defect photos outside their masks) and its defect cells.
    assert 5.0 < thresholds[0] <= shared
    assert 2.8 < thresholds[1] < 3.0
    # No cell takes label 2: it keeps the threshold over all labels.
    assert thresholds[2] == shared
    # A label's own best never raises it above the threshold over all.
    capped = per_label(4.0)
    assert capped[0] == 4.0 and capped[1] == thresholds[1] and capped[2] == 4.0


@pytest.mark.parametrize("window", [1, graph.LABEL_WINDOW])
def test_the_graph_normalises_each_cell_by_its_labels_threshold(
    window: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`anomaly_map` is raw / (raw + t[label]) and `mask` is label + 1 where
    that is at least 0.5, each cell's label that of the nearest prototype
    at the strongest cell within the window (`fit.peak_labels`); checked on
    a photo the size of the cell grid, so the map is not resized. Window 1
    (each cell its own) makes sure both labels occur."""
    monkeypatch.setattr(graph, "LABEL_WINDOW", window)
    size, block, seed = (96, 96), 2, 0
    grid = (size[1] // graph.GRID_STRIDE, size[0] // graph.GRID_STRIDE)
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (grid[0], grid[1], 3), dtype=np.uint8)
    (cells,) = ort.InferenceSession(
        graph.build_feature_model(size, seed).SerializeToString(),
        providers=["CPUExecutionProvider"],
    ).run(["features"], {"image": image})
    channels = cells.shape[1]
    dims = 5
    weight = rng.normal(0, 0.3, (dims, channels))
    bias = rng.normal(0, 0.1, dims)
    rows = cells[0].reshape(channels, -1).T.astype(np.float64) @ weight.T + bias
    # Prototypes at two real cells, so both labels occur.
    prototypes = rows[[0, len(rows) - 1]].astype(np.float32)
    blocks = (grid[0] // block) * (grid[1] // block)
    scoring = graph.GaussianScoring(
        weight,
        bias,
        rng.normal(0, 0.5, (dims, *grid)).astype(np.float32),
        np.repeat(np.eye(dims, dtype=np.float32)[None], blocks, axis=0),
        block,
        1.0,
        1.0,
        prototypes=prototypes,
    )
    model = graph.build_component_model(
        size, seed, scoring, segmentation=True, raw_outputs=True
    )
    session = ort.InferenceSession(
        model.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    (raw_map,) = session.run(["raw_map"], {"image": image})
    raw = raw_map[0, 0].astype(np.float64)
    nearest = fit.nearest_prototype(rows, prototypes.astype(np.float64))
    label = fit.peak_labels(nearest, raw).reshape(grid)
    if window == 1:
        np.testing.assert_array_equal(label.ravel(), nearest)
        assert set(np.unique(label)) == {0, 1}
    # Thresholds that split each label's cells.
    per_label = np.array(
        [np.median(raw[label == k]) if (label == k).any() else 1.0 for k in (0, 1)]
    )
    labelled = dataclasses.replace(scoring, label_thresholds=per_label)
    session = ort.InferenceSession(
        graph.build_component_model(
            size, seed, labelled, segmentation=True
        ).SerializeToString(),
        providers=["CPUExecutionProvider"],
    )
    _, mask, amap = session.run(None, {"image": image})
    expected = raw / (raw + per_label[label])
    np.testing.assert_allclose(amap, expected, rtol=1e-4)
    np.testing.assert_array_equal(mask, np.where(expected >= 0.5, label + 1, 0))
    assert mask.any() and not mask.all()
    if window == 1:
        assert {1, 2} <= set(np.unique(mask))


def test_cells_take_the_label_of_the_strongest_cell_nearby(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A defect's core is nearest to its own kind, the cells its map spreads
    over are nearest to another (they look almost normal): within the
    window they take the core's label."""
    monkeypatch.setattr(graph, "LABEL_WINDOW", 3)
    rows, cols = np.mgrid[0:5, 0:6]
    raw_map = 10.0 - np.hypot(rows - 2, cols - 2)  # one peak, at (2, 2)
    nearest = np.zeros(30, dtype=np.int64)
    nearest[2 * 6 + 2] = 1  # only the core is nearest to kind 1
    labels = fit.peak_labels(nearest, raw_map).reshape(5, 6)
    expected = np.zeros((5, 6), dtype=np.int64)
    expected[1:4, 1:4] = 1  # the cells whose 3x3 window holds the peak
    np.testing.assert_array_equal(labels, expected)
