"""Tests for wrapping anomalib ONNX exports into components.

The exports are made here, in anomalib's two on-disk formats: a 2.x graph
(dynamic float NCHW input, resize and normalisation inside, normalised
named outputs, weights in ``model.onnx.data``) and 1.x graphs (fixed input,
raw ``output`` map, maybe a raw score under a numeric name, and
``metadata.json``). The reference is anomalib's own inference written out
with numpy: run the raw export on the float image, normalise by the 1.x
rule, resize the map bilinearly to the image and cut at 0.5.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from shared.component import load_component
from tests.agent import agent_context
from trainer.anomalib_import import AnomalibImportError, import_export, main
from workers.model import ModelRunner

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)
V2_SIZE = 64
V1_SIZE = (32, 40)  # (height, width): not square, to catch swapped axes
# Raw statistics the fake models are "calibrated" with. The raw map is a
# weighted local mean of the ImageNet-normalised image, within about
# [-2, 2.6]: a bright patch lands well above the cut, noise below.
IMAGE_NORM = {"threshold": 1.5, "min": -1.0, "max": 2.6}
PIXEL_NORM = {"threshold": 1.0, "min": -2.0, "max": 2.6}
# Sizes chosen to upscale, downscale, and mix both.
SIZES = [(64, 64), (120, 90), (48, 200)]
ATOL = 1e-5


# ------------------------------------------------------------ fake exports


def _const(values: Any, name: str, dtype: Any = np.float32) -> TensorProto:
    return numpy_helper.from_array(np.asarray(values, dtype), name)


def _weights() -> np.ndarray:
    """A 3x3 weighted local mean over the three channels."""
    channel = np.array([0.5, 0.3, 0.2], np.float32)
    weights = np.empty((1, 3, 3, 3), np.float32)
    weights[...] = channel[None, :, None, None] / 9
    return weights


def _normalise_nodes(value: str, out: str) -> list[Any]:
    """anomalib's min-max rule as graph nodes (2.x bakes it in)."""
    p = out + "_"
    return [
        helper.make_node("Sub", [value, p + "t"], [p + "s"]),
        helper.make_node("Div", [p + "s", p + "r"], [p + "d"]),
        helper.make_node("Add", [p + "d", p + "h"], [p + "a"]),
        helper.make_node("Clip", [p + "a", p + "lo", p + "hi"], [out]),
    ]


def _normalise_consts(norm: dict[str, float], out: str) -> list[TensorProto]:
    p = out + "_"
    return [
        _const(norm["threshold"], p + "t"),
        _const(norm["max"] - norm["min"], p + "r"),
        _const(0.5, p + "h"),
        _const(0.0, p + "lo"),
        _const(1.0, p + "hi"),
    ]


def _save(model: onnx.ModelProto, folder: Path, *, external: bool) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    onnx.checker.check_model(model, full_check=True)
    onnx.save_model(
        model,
        str(folder / "model.onnx"),
        save_as_external_data=external,
        all_tensors_to_one_file=True,
        location="model.onnx.data",
        # As torch's exporter does: the weights go out, small shape
        # constants stay inline where onnxruntime's shape inference reads them.
        size_threshold=100,
    )
    assert (folder / "model.onnx.data").is_file() == external
    return folder


def make_v2_export(folder: Path, *, fixed: bool = False) -> Path:
    """An anomalib 2.x export: named, normalised outputs; external weights.

    ``fixed`` mimics an export made with ``input_size``: the input is
    [1, 3, 64, 64] instead of fully dynamic.
    """
    nodes = [
        helper.make_node("Shape", ["input"], ["shape"]),
        helper.make_node("Slice", ["shape", "zero", "two"], ["nc"]),
        helper.make_node("Concat", ["nc", "hw"], ["sizes"], axis=0),
        helper.make_node(
            "Resize",
            ["input", "", "", "sizes"],
            ["resized"],
            mode="linear",
            coordinate_transformation_mode="half_pixel",
        ),
        helper.make_node("Sub", ["resized", "mean"], ["centred"]),
        helper.make_node("Div", ["centred", "std"], ["normalised"]),
        helper.make_node("Conv", ["normalised", "w"], ["raw_map"], pads=[1] * 4),
        helper.make_node("ReduceMax", ["raw_map", "chw"], ["peak"], keepdims=1),
        helper.make_node("Reshape", ["peak", "b1"], ["raw_score"]),
        *_normalise_nodes("raw_score", "pred_score"),
        *_normalise_nodes("raw_map", "anomaly_map"),
        helper.make_node("Greater", ["pred_score", "half"], ["pred_label"]),
        helper.make_node("Greater", ["anomaly_map", "half"], ["pred_mask"]),
    ]
    initializers = [
        _const([0], "zero", np.int64),
        _const([2], "two", np.int64),
        _const([V2_SIZE, V2_SIZE], "hw", np.int64),
        _const(MEAN.reshape(1, 3, 1, 1), "mean"),
        _const(STD.reshape(1, 3, 1, 1), "std"),
        _const(_weights(), "w"),
        _const([1, 2, 3], "chw", np.int64),
        _const([-1, 1], "b1", np.int64),
        _const(0.5, "half"),
        *_normalise_consts(IMAGE_NORM, "pred_score"),
        *_normalise_consts(PIXEL_NORM, "anomaly_map"),
    ]
    map_shape: list[str | int] = ["batch_size", 1, V2_SIZE, V2_SIZE]
    graph = helper.make_graph(
        nodes,
        "fake-anomalib-2",
        [
            helper.make_tensor_value_info(
                "input",
                TensorProto.FLOAT,
                [1, 3, V2_SIZE, V2_SIZE] if fixed else ["batch", 3, "h", "w"],
            )
        ],
        [
            helper.make_tensor_value_info(
                "pred_score", TensorProto.FLOAT, ["batch_size", 1]
            ),
            helper.make_tensor_value_info(
                "pred_label", TensorProto.BOOL, ["batch_size", 1]
            ),
            helper.make_tensor_value_info("anomaly_map", TensorProto.FLOAT, map_shape),
            helper.make_tensor_value_info("pred_mask", TensorProto.BOOL, map_shape),
        ],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    return _save(model, folder, external=True)


def make_v1_export(
    folder: Path,
    metadata: dict[str, Any] | None,
    *,
    score_output: bool,
    normalise_inside: bool,
    opset: int = 14,
    dynamic: bool = False,
) -> Path:
    """An anomalib 1.x export: fixed input, raw 'output' map, metadata.

    ``dynamic`` mimics anomalib 1.1 and later exported without a size:
    height and width free, and a [batch, height, width] map.
    """
    height: int | str = V1_SIZE[0]
    width: int | str = V1_SIZE[1]
    if dynamic:
        height, width = "height", "width"
    first = "input"
    nodes = []
    if normalise_inside:
        nodes += [
            helper.make_node("Sub", ["input", "mean"], ["centred"]),
            helper.make_node("Div", ["centred", "std"], ["normalised"]),
        ]
        first = "normalised"
    conv = "conv" if dynamic else "output"
    nodes.append(helper.make_node("Conv", [first, "w"], [conv], pads=[1] * 4))
    if dynamic:
        nodes.append(helper.make_node("Squeeze", ["conv", "b"], ["output"]))
    map_dims: list[int | str] = [1, height, width] if dynamic else [1, 1, height, width]
    outputs = [helper.make_tensor_value_info("output", TensorProto.FLOAT, map_dims)]
    if score_output:
        # Like PatchCore: a raw score that is not the map's peak.
        nodes += [
            helper.make_node("ReduceMean", ["output"], ["mean_map"], keepdims=0),
            helper.make_node("Mul", ["mean_map", "four"], ["scaled"]),
            helper.make_node("Reshape", ["scaled", "b"], ["417"]),
        ]
        outputs.append(helper.make_tensor_value_info("417", TensorProto.FLOAT, [1]))
    graph = helper.make_graph(
        nodes,
        "fake-anomalib-1",
        [
            helper.make_tensor_value_info(
                "input", TensorProto.FLOAT, [1, 3, height, width]
            )
        ],
        outputs,
        [
            _const(MEAN.reshape(1, 3, 1, 1), "mean"),
            _const(STD.reshape(1, 3, 1, 1), "std"),
            _const(_weights(), "w"),
            _const(4.0, "four"),
            _const([1], "b", np.int64),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7
    _save(model, folder, external=False)
    if metadata is not None:
        (folder / "metadata.json").write_text(json.dumps(metadata))
    return folder


def albumentations_transform() -> dict[str, Any]:
    """What anomalib 1.0 wrote: ``A.to_dict`` of its inference transform."""
    height, width = V1_SIZE
    return {
        "__version__": "1.3.1",
        "transform": {
            "__class_fullname__": "Compose",
            "p": 1.0,
            "transforms": [
                {
                    "__class_fullname__": "Resize",
                    "height": height,
                    "width": width,
                    "interpolation": 1,
                },
                {
                    "__class_fullname__": "Normalize",
                    "mean": MEAN.tolist(),
                    "std": STD.tolist(),
                    "max_pixel_value": 255.0,
                },
                {"__class_fullname__": "ToTensorV2", "transpose_mask": False},
            ],
        },
    }


def metadata_v1(**overrides: Any) -> dict[str, Any]:
    """anomalib 1.x metadata, with the map statistics nested for variety."""
    data: dict[str, Any] = {
        "task": "segmentation",
        "image_threshold": IMAGE_NORM["threshold"],
        "pixel_threshold": [PIXEL_NORM["threshold"]],
        "pred_scores.min": IMAGE_NORM["min"],
        "pred_scores.max": IMAGE_NORM["max"],
        "anomaly_maps": {"min": PIXEL_NORM["min"], "max": PIXEL_NORM["max"]},
    }
    data.update(overrides)
    return data


# The score's normalisation when metadata.json holds one min/max pair.
SHARED_NORM = {**PIXEL_NORM, "threshold": IMAGE_NORM["threshold"]}


def metadata_v1_shared_min_max() -> dict[str, Any]:
    """anomalib 0.x/1.0 style: one min/max for both score and map."""
    return {
        "task": "segmentation",
        "image_threshold": IMAGE_NORM["threshold"],
        "pixel_threshold": PIXEL_NORM["threshold"],
        "min": PIXEL_NORM["min"],
        "max": PIXEL_NORM["max"],
    }


# ------------------------------------------------------------ the reference


def bilinear(array: np.ndarray, height: int, width: int) -> np.ndarray:
    """cv2.resize INTER_LINEAR / torch bilinear (align_corners=False), 2-D."""

    def taps(out: int, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        x = np.clip((np.arange(out) + 0.5) * (size / out) - 0.5, 0, size - 1)
        low = np.floor(x).astype(int)
        return low, np.minimum(low + 1, size - 1), (x - low).astype(np.float32)

    y0, y1, fy = taps(height, array.shape[0])
    x0, x1, fx = taps(width, array.shape[1])
    top = array[y0][:, x0] * (1 - fx) + array[y0][:, x1] * fx
    bottom = array[y1][:, x0] * (1 - fx) + array[y1][:, x1] * fx
    result: np.ndarray = top * (1 - fy[:, None]) + bottom * fy[:, None]
    return result.astype(np.float32)


def min_max(raw: np.ndarray, norm: dict[str, float]) -> np.ndarray:
    """anomalib 1.x inferencers: clip((x - t) / (max - min) + 0.5, 0, 1)."""
    value = (raw - norm["threshold"]) / (norm["max"] - norm["min"]) + 0.5
    result: np.ndarray = np.clip(value, 0, 1).astype(np.float32)
    return result


def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def reference_v2(
    export: Path, image: np.ndarray, *, fixed: bool = False
) -> dict[str, np.ndarray]:
    """anomalib 2.x: the export's own normalised outputs, map resized."""
    batch = (image.astype(np.float32) / 255).transpose(2, 0, 1)[None]
    if fixed:
        batch = np.array([[bilinear(c, V2_SIZE, V2_SIZE) for c in batch[0]]])
    score, label, grid, _ = _session(export / "model.onnx").run(None, {"input": batch})
    anomaly_map = bilinear(grid[0, 0], *image.shape[:2])
    return {
        "score": score.reshape(1),
        "label": label.reshape(1),
        "anomaly_map": anomaly_map,
        "mask": (anomaly_map >= 0.5).astype(np.uint8),
    }


def reference_v1(
    export: Path,
    image: np.ndarray,
    *,
    albumentations: bool,
    score_norm: dict[str, float] = IMAGE_NORM,
    dynamic: bool = False,
) -> dict[str, np.ndarray]:
    """anomalib 1.x inferencer: preprocess, raw outputs, normalise, resize."""
    height, width = V1_SIZE
    channels = image.astype(np.float32).transpose(2, 0, 1)
    if dynamic:
        batch = channels / 255
    elif albumentations:
        # Albumentations resizes, then normalises from 0..255 (its rounding
        # of the resized uint8 pixels is not reproduced; see the importer).
        resized = np.array([bilinear(c, height, width) for c in channels])
        batch = (resized - MEAN[:, None, None] * 255) * (1 / (STD[:, None, None] * 255))
    else:
        batch = np.array([bilinear(c / 255, height, width) for c in channels])
    outputs = _session(export / "model.onnx").run(
        None, {"input": batch[None].astype(np.float32)}
    )
    raw_map = outputs[0].reshape(outputs[0].shape[-2:])
    peak = raw_map.max(keepdims=True).reshape(1)
    raw_score = outputs[1].reshape(1) if len(outputs) > 1 else peak
    score = min_max(raw_score, score_norm)
    anomaly_map = bilinear(min_max(raw_map, PIXEL_NORM), *image.shape[:2])
    return {
        "score": score,
        "label": raw_score >= IMAGE_NORM["threshold"],
        "anomaly_map": anomaly_map,
        "mask": (anomaly_map >= 0.5).astype(np.uint8),
        "peak_score": min_max(peak, score_norm),
    }


def photo(height: int, width: int, seed: int, *, defect: bool) -> np.ndarray:
    """Mid-grey noise, with a bright patch as the defect."""
    rng = np.random.default_rng(seed)
    image = rng.integers(80, 150, (height, width, 3), dtype=np.uint8)
    if defect:
        image[height // 4 : height // 2, width // 3 : width // 2 + 3] = 250
    return image


def run_component(folder: Path, image: np.ndarray) -> dict[str, np.ndarray]:
    session = _session(folder / "model.onnx")
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, {"image": image}), strict=True))


def assert_matches(got: dict[str, np.ndarray], ref: dict[str, np.ndarray]) -> None:
    np.testing.assert_allclose(got["score"], ref["score"], atol=ATOL)
    assert bool(got["score"][0] >= 0.5) == bool(ref["label"][0])
    assert got["anomaly_map"].shape == ref["anomaly_map"].shape
    np.testing.assert_allclose(got["anomaly_map"], ref["anomaly_map"], atol=ATOL)
    assert got["mask"].dtype == np.uint8
    assert got["mask"].shape == ref["mask"].shape
    # Pixels within float noise of the cut may fall either way.
    clear = np.abs(ref["anomaly_map"] - 0.5) > 1e-4
    np.testing.assert_array_equal(got["mask"][clear], ref["mask"][clear])
    assert 0 < ref["mask"].sum() < ref["mask"].size, "the test image is too plain"


# ------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("anomalib")


@pytest.fixture(scope="module")
def v2_export(root: Path) -> Path:
    return make_v2_export(root / "export-v2")


@pytest.fixture(scope="module")
def v2_component(root: Path, v2_export: Path) -> Path:
    return import_export(v2_export, root / "models", name="fake-v2")


@pytest.fixture(scope="module")
def v1_albu(root: Path) -> tuple[Path, Path]:
    """1.0 style: normalisation in metadata, raw score output, opset 14."""
    metadata = metadata_v1(transform=albumentations_transform())
    export = make_v1_export(
        root / "export-v1-albu", metadata, score_output=True, normalise_inside=False
    )
    return export, import_export(export, root / "models", name="fake-v1-albu")


@pytest.fixture(scope="module")
def v1_map_only(root: Path) -> tuple[Path, Path]:
    """Normalisation in the graph, map only, shared min/max, opset 11."""
    export = make_v1_export(
        root / "export-v1-map",
        metadata_v1_shared_min_max(),
        score_output=False,
        normalise_inside=True,
        opset=11,
    )
    component = import_export(
        export, root / "models", name="fake-v1-map", version="2.1.0", cores=2
    )
    return export, component


# ------------------------------------------------------------ 2.x


def test_v2_manifest_and_self_contained_graph(v2_component: Path) -> None:
    component = load_component(v2_component)
    assert component.name == "fake-v2"
    assert component.kind == "segmentation"
    assert component.threshold == 0.5
    assert component.model_arn == "arn:edge-agent:model/fake-v2/1.0.0"
    assert component.input_size == (V2_SIZE, V2_SIZE)
    assert [(la.name, la.color) for la in component.labels] == [("anomaly", "#FF0000")]
    assert "anomalib 2.x" in component.description
    assert sorted(p.name for p in v2_component.iterdir()) == [
        "manifest.json",
        "model.onnx",
    ]
    model = onnx.load(str(component.model_path), load_external_data=False)
    assert all(t.data_location != TensorProto.EXTERNAL for t in model.graph.initializer)
    onnx.checker.check_model(model, full_check=True)
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 18)]


@pytest.mark.parametrize(("height", "width"), SIZES)
def test_v2_matches_anomalib(
    v2_export: Path, v2_component: Path, height: int, width: int
) -> None:
    image = photo(height, width, seed=height, defect=True)
    ref = reference_v2(v2_export, image)
    assert ref["label"][0], "the defect photo should be anomalous"
    assert_matches(run_component(v2_component, image), ref)


def test_v2_good_photo_scores_below_the_cut(
    v2_export: Path, v2_component: Path
) -> None:
    image = photo(80, 96, seed=5, defect=False)
    got, ref = run_component(v2_component, image), reference_v2(v2_export, image)
    np.testing.assert_allclose(got["score"], ref["score"], atol=ATOL)
    assert got["score"][0] < 0.5
    assert not got["mask"].any()


def test_v2_runs_in_the_worker(v2_export: Path, v2_component: Path) -> None:
    runner = ModelRunner(load_component(v2_component), threads=1)
    for height, width in SIZES[1:]:
        image = photo(height, width, seed=width, defect=True)
        prediction = runner.predict(image)
        ref = reference_v2(v2_export, image)
        assert prediction.score == pytest.approx(float(ref["score"][0]), abs=ATOL)
        assert prediction.label_mask is not None
        assert prediction.label_mask.shape == (height, width)
        clear = np.abs(ref["anomaly_map"] - 0.5) > 1e-4
        np.testing.assert_array_equal(prediction.label_mask[clear], ref["mask"][clear])
    assert runner.warm_up(runs=1) > 0


def test_v2_as_classification(root: Path, v2_export: Path) -> None:
    folder = import_export(
        v2_export, root / "models", name="fake-v2-cls", kind="classification"
    )
    component = load_component(folder)
    assert component.kind == "classification"
    assert component.labels == ()
    image = photo(70, 50, seed=3, defect=True)
    got = run_component(folder, image)
    assert sorted(got) == ["score"]
    prediction = ModelRunner(component, threads=1).predict(image)
    assert prediction.label_mask is None
    ref = reference_v2(v2_export, image)
    assert prediction.score == pytest.approx(float(ref["score"][0]), abs=ATOL)


# ------------------------------------------------------------ 1.x


@pytest.mark.parametrize(("height", "width"), SIZES)
def test_v1_albumentations_with_score_output(
    v1_albu: tuple[Path, Path], height: int, width: int
) -> None:
    export, component = v1_albu
    image = photo(height, width, seed=width, defect=True)
    ref = reference_v1(export, image, albumentations=True)
    # The score must come from the numeric output, not from the map's peak.
    assert abs(float(ref["score"][0] - ref["peak_score"][0])) > 0.01
    assert_matches(run_component(component, image), ref)


@pytest.mark.parametrize(("height", "width"), SIZES)
def test_v1_map_only_score_is_the_peak(
    v1_map_only: tuple[Path, Path], height: int, width: int
) -> None:
    export, component = v1_map_only
    image = photo(height, width, seed=height + 1, defect=True)
    assert_matches(
        run_component(component, image),
        reference_v1(export, image, albumentations=False, score_norm=SHARED_NORM),
    )


def test_v2_fixed_input_size(root: Path) -> None:
    export = make_v2_export(root / "export-v2-fixed", fixed=True)
    folder = import_export(export, root / "models", name="fake-v2-fixed")
    for height, width in SIZES[1:]:
        image = photo(height, width, seed=width + 7, defect=True)
        assert_matches(
            run_component(folder, image), reference_v2(export, image, fixed=True)
        )


def test_v1_dynamic_input_rank3_map(root: Path) -> None:
    """anomalib 1.1+ without a size: the image goes in at its own size."""
    export = make_v1_export(
        root / "export-v1-dyn",
        metadata_v1(),
        score_output=True,
        normalise_inside=True,
        dynamic=True,
    )
    folder = import_export(export, root / "models", name="fake-v1-dyn")
    for height, width in SIZES[1:]:
        image = photo(height, width, seed=width + 3, defect=True)
        ref = reference_v1(export, image, albumentations=False, dynamic=True)
        assert_matches(run_component(folder, image), ref)


def test_v1_manifest(
    v1_albu: tuple[Path, Path], v1_map_only: tuple[Path, Path]
) -> None:
    albu = load_component(v1_albu[1])
    assert albu.kind == "segmentation"
    assert albu.input_size == (V1_SIZE[1], V1_SIZE[0])
    assert "anomalib 1.x" in albu.description
    assert "image threshold 1.5" in albu.description
    plain = load_component(v1_map_only[1])
    assert plain.version == "2.1.0"
    assert plain.cores == 2
    assert plain.model_arn == "arn:edge-agent:model/fake-v1-map/2.1.0"
    model = onnx.load(str(plain.model_path))
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 11)]


def test_v1_runs_in_the_worker(v1_albu: tuple[Path, Path]) -> None:
    export, folder = v1_albu
    runner = ModelRunner(load_component(folder), threads=1)
    image = photo(90, 130, seed=9, defect=True)
    prediction = runner.predict(image)
    ref = reference_v1(export, image, albumentations=True)
    assert prediction.score == pytest.approx(float(ref["score"][0]), abs=ATOL)
    assert prediction.label_mask is not None
    assert prediction.label_mask.shape == (90, 130)


def test_v1_classification_task(root: Path) -> None:
    metadata = {
        "task": "classification",
        "image_threshold": IMAGE_NORM["threshold"],
        "pred_scores": {"min": IMAGE_NORM["min"], "max": IMAGE_NORM["max"]},
    }
    export = make_v1_export(
        root / "export-v1-cls", metadata, score_output=False, normalise_inside=True
    )
    folder = import_export(export, root / "models", name="fake-v1-cls")
    component = load_component(folder)
    assert component.kind == "classification"
    image = photo(50, 60, seed=2, defect=True)
    batch = np.array(
        [
            bilinear(c / 255, *V1_SIZE)
            for c in image.astype(np.float32).transpose(2, 0, 1)
        ]
    )
    (raw_map,) = _session(export / "model.onnx").run(
        None, {"input": batch[None].astype(np.float32)}
    )
    expected = min_max(raw_map.max(keepdims=True).reshape(1), IMAGE_NORM)
    prediction = ModelRunner(component, threads=1).predict(image)
    assert prediction.score == pytest.approx(float(expected[0]), abs=ATOL)
    with pytest.raises(AnomalibImportError, match="pixel"):
        import_export(export, root / "models", name="x", kind="segmentation")


# ------------------------------------------------------------ errors


def _expect(export: Path, out: Path, *words: str, **kwargs: Any) -> AnomalibImportError:
    with pytest.raises(AnomalibImportError) as info:
        import_export(export, out, name=kwargs.pop("name", "broken"), **kwargs)
    message = str(info.value)
    for word in words:
        assert word in message, message
    assert not (out / "broken").exists()
    return info.value


def test_error_missing_model(tmp_path: Path) -> None:
    (tmp_path / "export").mkdir()
    _expect(tmp_path / "export", tmp_path / "models", "model.onnx", "does not exist")
    _expect(tmp_path / "nowhere", tmp_path / "models", "not a folder")


def test_error_missing_external_data(tmp_path: Path) -> None:
    export = make_v2_export(tmp_path / "export")
    (export / "model.onnx.data").unlink()
    _expect(export, tmp_path / "models", "model.onnx.data", "does not exist")


def test_error_unknown_outputs(tmp_path: Path) -> None:
    export = make_v2_export(tmp_path / "export")
    model = onnx.load(str(export / "model.onnx"))
    model.graph.output[1].name = "logits"
    model.graph.node[-2].output[0] = "logits"
    _save(model, tmp_path / "renamed", external=False)
    _expect(tmp_path / "renamed", tmp_path / "models", "unknown output", "logits")


def test_error_v1_without_metadata(tmp_path: Path) -> None:
    export = make_v1_export(
        tmp_path / "export", None, score_output=False, normalise_inside=True
    )
    _expect(export, tmp_path / "models", "metadata.json", "does not exist")


@pytest.mark.parametrize(
    ("drop", "words"),
    [
        ("image_threshold", ("image threshold", "'image_threshold'")),
        ("pred_scores.max", ("image maximum", "'pred_scores.max'")),
        ("pixel_threshold", ("pixel threshold",)),
    ],
)
def test_error_v1_missing_keys(tmp_path: Path, drop: str, words: tuple[str]) -> None:
    metadata = metadata_v1()
    del metadata[drop]
    export = make_v1_export(
        tmp_path / "export", metadata, score_output=True, normalise_inside=True
    )
    _expect(export, tmp_path / "models", "metadata.json", *words)


def test_error_v1_bad_values(tmp_path: Path) -> None:
    metadata = metadata_v1(**{"pred_scores.max": -1.0})
    export = make_v1_export(
        tmp_path / "export", metadata, score_output=True, normalise_inside=True
    )
    _expect(export, tmp_path / "models", "max > min")
    (export / "metadata.json").write_text(json.dumps(metadata_v1(image_threshold="x")))
    _expect(export, tmp_path / "models", "'image_threshold'", "number")


@pytest.mark.parametrize(
    ("dtype", "shape"),
    [
        (TensorProto.UINT8, ["batch", 3, "height", "width"]),
        (TensorProto.FLOAT, ["height", "width", 3]),
        (TensorProto.FLOAT, [1, 32, 40, 3]),
    ],
)
def test_error_input_not_float_nchw(
    tmp_path: Path, dtype: int, shape: list[Any]
) -> None:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["input"], ["output"])],
        "not-nchw",
        [helper.make_tensor_value_info("input", dtype, shape)],
        [helper.make_tensor_value_info("output", dtype, shape)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    _save(model, tmp_path / "export", external=False)
    (tmp_path / "export" / "metadata.json").write_text(json.dumps(metadata_v1()))
    _expect(tmp_path / "export", tmp_path / "models", "NCHW", "'input'")


def test_error_bad_arguments_and_existing_component(
    tmp_path: Path, v2_export: Path
) -> None:
    out = tmp_path / "models"
    _expect(v2_export, out, "--name", name="../escape")
    _expect(v2_export, out, "MAJOR.MINOR.PATCH", version="1.0")
    _expect(v2_export, out, "#FFFFFF", color="#ffffff")
    # The message echoes what the user wrote, not its upper-case form.
    _expect(v2_export, out, "color 'red' must be #RRGGBB", color="red")
    first = import_export(v2_export, out, name="twice")
    with pytest.raises(AnomalibImportError, match="--force"):
        import_export(v2_export, out, name="twice")
    assert import_export(v2_export, out, name="twice", overwrite=True) == first
    assert sorted(p.name for p in out.iterdir()) == ["twice"]


def test_cli(
    tmp_path: Path, v2_export: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "models"
    argv = [str(v2_export), "--out", str(out), "--name", "cli", "--version", "3.0.1"]
    argv += ["--label", "scratch", "--color", "#00ff00", "--cores", "2"]
    assert main(argv) == 0
    assert str(out / "cli") in capsys.readouterr().out
    component = load_component(out / "cli")
    assert component.version == "3.0.1"
    assert [(la.name, la.color) for la in component.labels] == [("scratch", "#00FF00")]
    assert main([str(tmp_path / "none"), "--out", str(out), "--name", "x"]) == 2
    assert "not a folder" in capsys.readouterr().err


# ------------------------------------------------------------ end to end


def test_agent_detects_like_anomalib(tmp_path: Path, v2_export: Path) -> None:
    models = tmp_path / "models"
    import_export(v2_export, models, name="imported")
    image = photo(96, 128, seed=11, defect=True)
    ref = reference_v2(v2_export, image)
    with agent_context(models, "--start", "imported") as agent:
        agent.wait_status("imported", "RUNNING")
        result = agent.client.detect("imported", image)
    assert result.anomaly_score == pytest.approx(float(ref["score"][0]), abs=ATOL)
    assert result.is_anomalous == bool(ref["label"][0])
    assert result.anomaly_threshold == 0.5
    assert result.mask is not None
    assert result.mask.shape == (96, 128, 3)
    expected = np.where(ref["mask"][..., None] == 1, [255, 0, 0], [255, 255, 255])
    clear = np.abs(ref["anomaly_map"] - 0.5) > 1e-4
    np.testing.assert_array_equal(result.mask[clear], expected[clear])
    by_name = {a["name"]: a for a in result.anomalies}
    assert by_name["anomaly"]["hex_color"] == "#FF0000"
    assert by_name["anomaly"]["total_percentage_area"] == pytest.approx(
        ref["mask"].mean(), abs=0.01
    )
