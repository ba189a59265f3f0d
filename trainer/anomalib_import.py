"""Wrap an anomalib ONNX export into an edge-agent model component.

``edge-agent import-anomalib EXPORT_DIR --out MODELS_DIR --name NAME`` reads
an anomalib export (``model.onnx``, maybe ``model.onnx.data`` and, for 1.x,
``metadata.json``), and writes ``MODELS_DIR/NAME/{manifest.json,model.onnx}``.
The export's graph is kept as it is, under the name prefix ``anomalib/``; a
prefix turns the agent's uint8 ``[H, W, 3]`` image into the float NCHW
tensor anomalib expects, and a suffix turns anomalib's outputs into
``score``, ``anomaly_map`` and ``mask`` at the input's size, normalised so
that 0.5 is the decision cut. ``docs/components.md`` states the rules.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import TensorProto, helper, numpy_helper

from shared.component import check_component_name

MODEL_FILE = "model.onnx"
METADATA_FILE = "metadata.json"
EXTERNAL_DATA_FILE = "model.onnx.data"
KINDS = ("classification", "segmentation")
THRESHOLD = 0.5
DEFAULT_LABEL = "anomaly"
DEFAULT_COLOR = "#FF0000"
# Where the export does not say its working size (no static map or input
# shape); the manifest's input_size then only sizes the worker's warm-up.
FALLBACK_INPUT_SIZE = (256, 256)
# Protobuf cannot serialise one message of 2 GiB or more.
PROTOBUF_LIMIT_BYTES = 2**31 - 1
MIN_OPSET = 11
EXPORT_PREFIX = "anomalib/"
V2_OUTPUTS = ("pred_score", "pred_label", "anomaly_map", "pred_mask")
V1_MAP_OUTPUT = "output"
_VERSION_RE = re.compile(r"^\d+\.\d+\.\d+$")
_COLOR_RE = re.compile(r"^#[0-9A-F]{6}$")

# The key spellings accepted in a 1.x metadata.json, first match wins. A
# dotted name is tried as a flat key, then as a path into nested objects.
# anomalib 1.x writes "pred_scores.min" and friends; 0.x and 1.0 wrote one
# "min"/"max" pair shared by the score and the map.
IMAGE_THRESHOLD_KEYS = ("image_threshold",)
PIXEL_THRESHOLD_KEYS = ("pixel_threshold",)
SCORE_MIN_KEYS = ("pred_scores.min", "image_min", "min")
SCORE_MAX_KEYS = ("pred_scores.max", "image_max", "max")
MAP_MIN_KEYS = ("anomaly_maps.min", "pixel_min", "min")
MAP_MAX_KEYS = ("anomaly_maps.max", "pixel_max", "max")


class AnomalibImportError(ValueError):
    """The export cannot be wrapped; the message says what is wrong."""


@dataclass(frozen=True)
class MinMax:
    """anomalib 1.x min-max normalisation of raw values onto [0, 1]."""

    threshold: float
    low: float
    high: float


@dataclass(frozen=True)
class Preprocess:
    """How anomalib's inferencer turns an RGB image into the graph input.

    ``resize_to`` is (height, width), or None to pass the image at its own
    size. The values are scaled by ``scale`` (1/255: RGB in [0, 1]); with
    ``mean``/``std`` (an albumentations Normalize, already multiplied by
    its ``max_pixel_value``) they are normalised from 0..255 instead.
    Albumentations resizes uint8 images and rounds the result to whole grey
    levels; the prefix resizes in float and does not round, so inputs differ
    by at most half a grey level (about 0.002 on the [0, 1] scale). Exact
    rounding cannot be had anyway: OpenCV's fixed-point bilinear breaks the
    frequent ties of a 2x downscale its own way.
    """

    resize_to: tuple[int, int] | None
    scale: float = 1.0 / 255.0
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None


@dataclass(frozen=True)
class ExportPlan:
    """What an export holds and how to wrap it."""

    anomalib: str  # "2.x" or "1.x"
    input_name: str
    preprocess: Preprocess
    score_output: str | None
    map_output: str | None
    map_rank: int
    score_norm: MinMax | None  # None when the graph normalises itself (2.x)
    map_norm: MinMax | None
    default_kind: str
    working_size: tuple[int, int]  # (height, width) the model looks at
    opset: int

    @property
    def can_segment(self) -> bool:
        """Whether a normalised map exists (baked in, or from metadata)."""
        if self.map_output is None:
            return False
        return self.anomalib == "2.x" or self.map_norm is not None


# ---------------------------------------------------------------- reading


def _check_external_data(model: onnx.ModelProto, export_dir: Path) -> None:
    locations = {
        entry.value
        for tensor in _all_tensors(model)
        if tensor.data_location == TensorProto.EXTERNAL
        for entry in tensor.external_data
        if entry.key == "location"
    }
    for location in sorted(locations):
        path = Path(location)
        if path.is_absolute() or ".." in path.parts:
            raise AnomalibImportError(
                f"{export_dir / MODEL_FILE} keeps weights in {location!r}, outside "
                "the export folder; the weights file must sit beside model.onnx"
            )
        if not (export_dir / path).is_file():
            raise AnomalibImportError(
                f"{export_dir / MODEL_FILE} keeps its weights in {location!r}, but "
                f"{export_dir / path} does not exist; copy it from the export "
                "folder next to model.onnx"
            )


def _all_tensors(model: onnx.ModelProto) -> list[TensorProto]:
    tensors = list(model.graph.initializer)
    tensors += [
        attribute.t
        for node in model.graph.node
        for attribute in node.attribute
        if attribute.type == onnx.AttributeProto.TENSOR
    ]
    return tensors


def load_export(export_dir: Path) -> onnx.ModelProto:
    """Read ``model.onnx`` with its external weights, checking they exist."""
    path = export_dir / MODEL_FILE
    if not export_dir.is_dir():
        raise AnomalibImportError(
            f"{export_dir} is not a folder; pass the folder anomalib exported "
            "to (the one holding model.onnx)"
        )
    if not path.is_file():
        raise AnomalibImportError(
            f"{path} does not exist; an anomalib ONNX export folder holds "
            "model.onnx (exported with ExportType.ONNX)"
        )
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, OSError) as exc:
        raise AnomalibImportError(f"{path} is not an ONNX model: {exc}") from exc
    _check_external_data(model, export_dir)
    try:
        onnx.external_data_helper.load_external_data_for_model(model, str(export_dir))
    except (OSError, ValueError) as exc:
        raise AnomalibImportError(
            f"cannot read the weights of {path}: {exc}; copy the export folder "
            "again, whole"
        ) from exc
    return model


def _opset(model: onnx.ModelProto) -> int:
    versions = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
    if not versions or versions[0] < MIN_OPSET:
        found = versions[0] if versions else "none"
        raise AnomalibImportError(
            f"the export uses ONNX opset {found}; opset {MIN_OPSET} or newer is "
            "needed (anomalib 0.7 and later export 11 or newer)"
        )
    return versions[0]


def _dims(value: onnx.ValueInfoProto) -> list[int | str]:
    shape = value.type.tensor_type.shape
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in shape.dim]


def _graph_input(model: onnx.ModelProto) -> tuple[str, list[int | str]]:
    initializers = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise AnomalibImportError(
            f"the graph takes {len(inputs)} inputs "
            f"({', '.join(i.name for i in inputs)}); an anomalib export takes "
            "one, a float32 NCHW RGB image batch"
        )
    value = inputs[0]
    dtype = value.type.tensor_type.elem_type
    dims = _dims(value)
    if (
        dtype != TensorProto.FLOAT
        or len(dims) != 4
        or (isinstance(dims[1], int) and dims[1] not in (0, 3))
    ):
        type_name = TensorProto.DataType.Name(dtype)
        raise AnomalibImportError(
            f"the graph input {value.name!r} is {type_name} {dims}; expected a "
            "float32 NCHW image batch [batch, 3, height, width] as anomalib "
            "exports"
        )
    return value.name, dims


def _static_hw(dims: Sequence[int | str]) -> tuple[int, int] | None:
    height, width = dims[-2], dims[-1]
    if isinstance(height, int) and isinstance(width, int) and height and width:
        return height, width
    return None


def read_metadata(export_dir: Path) -> dict[str, Any]:
    path = export_dir / METADATA_FILE
    if not path.is_file():
        raise AnomalibImportError(
            f"{path} does not exist; an anomalib 1.x export (raw 'output' map) "
            "needs the metadata.json written beside model.onnx, with the "
            "thresholds and min/max used to normalise"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AnomalibImportError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise AnomalibImportError(f"{path}: the top level must be an object")
    return data


def _lookup(metadata: dict[str, Any], key: str) -> Any:
    if key in metadata:
        return metadata[key]
    node: Any = metadata
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _as_number(value: Any) -> float | None:
    # torch tensors were written with .tolist(): a scalar may be [x].
    if isinstance(value, dict) and "value" in value:
        value = value["value"]
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _number(metadata: dict[str, Any], keys: Sequence[str], what: str) -> float:
    for key in keys:
        value = _lookup(metadata, key)
        if value is not None:
            number = _as_number(value)
            if number is None:
                raise AnomalibImportError(
                    f"{METADATA_FILE}: {key!r} is {value!r}; expected a finite "
                    f"number ({what})"
                )
            return number
    raise AnomalibImportError(
        f"{METADATA_FILE} lacks the {what}; expected one of the keys "
        f"{', '.join(repr(k) for k in keys)}"
    )


def _min_max(
    metadata: dict[str, Any],
    threshold_keys: Sequence[str],
    min_keys: Sequence[str],
    max_keys: Sequence[str],
    what: str,
) -> MinMax:
    norm = MinMax(
        threshold=_number(metadata, threshold_keys, f"{what} threshold"),
        low=_number(metadata, min_keys, f"{what} minimum"),
        high=_number(metadata, max_keys, f"{what} maximum"),
    )
    if not norm.high > norm.low:
        raise AnomalibImportError(
            f"{METADATA_FILE}: the {what} maximum {norm.high} is not above the "
            f"minimum {norm.low}; min-max normalisation needs max > min"
        )
    return norm


def _albumentations(metadata: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The transforms of an albumentations ``A.to_dict`` record, if any."""
    record = metadata.get("transform")
    if isinstance(record, str):
        try:
            record = json.loads(record)
        except json.JSONDecodeError:
            return None
    if isinstance(record, dict) and isinstance(record.get("transform"), dict):
        record = record["transform"]
    if not isinstance(record, dict) or not isinstance(record.get("transforms"), list):
        return None
    return [t for t in record["transforms"] if isinstance(t, dict)]


def _transform_name(transform: dict[str, Any]) -> str:
    return str(transform.get("__class_fullname__", "")).rsplit(".", 1)[-1]


def _triple(value: Any, what: str) -> tuple[float, float, float]:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (float(value),) * 3
    if (
        isinstance(value, list)
        and len(value) == 3
        and all(isinstance(v, (int, float)) for v in value)
    ):
        return float(value[0]), float(value[1]), float(value[2])
    raise AnomalibImportError(
        f"{METADATA_FILE}: Normalize {what} is {value!r}; expected 3 numbers"
    )


def _v1_preprocess(
    metadata: dict[str, Any], fixed: tuple[int, int] | None
) -> Preprocess:
    transforms = _albumentations(metadata)
    if transforms is None:
        # anomalib 1.1 and later put resize and normalisation in the graph;
        # a fixed input size still has to be met.
        return Preprocess(resize_to=fixed)
    resize_to: tuple[int, int] | None = None
    mean = std = None
    for transform in transforms:
        name = _transform_name(transform)
        if name == "Resize":
            try:
                resize_to = (int(transform["height"]), int(transform["width"]))
            except (KeyError, TypeError, ValueError):
                raise AnomalibImportError(
                    f"{METADATA_FILE}: Resize {transform} lacks integer "
                    "'height' and 'width'"
                ) from None
            if transform.get("interpolation", 1) != 1:
                raise AnomalibImportError(
                    f"{METADATA_FILE}: Resize interpolation "
                    f"{transform.get('interpolation')} is not supported; only "
                    "bilinear (1) is"
                )
        elif name == "Normalize":
            peak = float(transform.get("max_pixel_value", 255.0))
            mean_raw = _triple(transform.get("mean", (0.485, 0.456, 0.406)), "mean")
            std_raw = _triple(transform.get("std", (0.229, 0.224, 0.225)), "std")
            mean = (mean_raw[0] * peak, mean_raw[1] * peak, mean_raw[2] * peak)
            std = (std_raw[0] * peak, std_raw[1] * peak, std_raw[2] * peak)
        elif name not in ("ToTensorV2", "ToTensor"):
            raise AnomalibImportError(
                f"{METADATA_FILE}: transform {name or transform!r} is not "
                "supported; imports handle Resize, Normalize and ToTensorV2"
            )
    if resize_to is None:
        resize_to = fixed
    elif fixed is not None and resize_to != fixed:
        raise AnomalibImportError(
            f"{METADATA_FILE} resizes to {resize_to[0]}x{resize_to[1]} (HxW) but "
            f"the graph input is fixed at {fixed[0]}x{fixed[1]}"
        )
    # Albumentations without Normalize hands the graph 0..255 values.
    return Preprocess(resize_to=resize_to, scale=1.0, mean=mean, std=std)


def _is_map(dims: Sequence[int | str]) -> bool:
    """[batch, height, width] or [batch, 1, height, width]; 1 may be symbolic."""
    if len(dims) == 3:
        return True
    return len(dims) == 4 and (dims[1] == 1 or isinstance(dims[1], str))


def _output_rank(value: onnx.ValueInfoProto) -> int:
    return len(value.type.tensor_type.shape.dim)


def _plan_v2(
    model: onnx.ModelProto, input_name: str, input_dims: list[int | str]
) -> ExportPlan:
    outputs = {o.name: o for o in model.graph.output}
    if "pred_score" not in outputs:
        raise AnomalibImportError(
            "the export has anomalib 2.x outputs but no 'pred_score'; expected "
            f"{', '.join(V2_OUTPUTS)}"
        )
    map_value = outputs.get("anomaly_map")
    if map_value is not None and not _is_map(_dims(map_value)):
        raise AnomalibImportError(
            f"'anomaly_map' is {_dims(map_value)}; expected [batch, 1, height, "
            "width] as anomalib 2.x exports"
        )
    working = None
    if map_value is not None:
        working = _static_hw(_dims(map_value))
    working = working or _static_hw(input_dims) or FALLBACK_INPUT_SIZE
    return ExportPlan(
        anomalib="2.x",
        input_name=input_name,
        # The graph resizes itself; only an export made with a fixed
        # input_size must be fed that size.
        preprocess=Preprocess(resize_to=_static_hw(input_dims)),
        score_output="pred_score",
        map_output="anomaly_map" if map_value is not None else None,
        map_rank=_output_rank(map_value) if map_value is not None else 0,
        score_norm=None,
        map_norm=None,
        default_kind="segmentation" if map_value is not None else "classification",
        working_size=working,
        opset=_opset(model),
    )


def _plan_v1(
    model: onnx.ModelProto,
    export_dir: Path,
    input_name: str,
    input_dims: list[int | str],
) -> ExportPlan:
    outputs = {o.name: o for o in model.graph.output}
    extra = [name for name in outputs if name != V1_MAP_OUTPUT]
    if len(extra) > 1 or (extra and not extra[0].isdigit()):
        raise AnomalibImportError(
            f"unknown outputs {extra} beside 'output'; an anomalib 1.x export "
            "returns the raw map as 'output' and at most one raw score under a "
            "numeric name"
        )
    metadata = read_metadata(export_dir)
    main_rank = _output_rank(outputs[V1_MAP_OUTPUT])
    map_output: str | None
    score_output: str | None
    # The 1.x inferencers read a rank-1 'output' as a classifier's score.
    if main_rank in (1, 2) and not extra:
        map_output, score_output = None, V1_MAP_OUTPUT
    elif _is_map(_dims(outputs[V1_MAP_OUTPUT])):
        map_output, score_output = V1_MAP_OUTPUT, (extra[0] if extra else None)
    else:
        raise AnomalibImportError(
            f"'output' is {_dims(outputs[V1_MAP_OUTPUT])}; expected an anomaly map "
            "[batch, 1, height, width] or [batch, height, width], or a score "
            "[batch]"
        )
    task = str(metadata.get("task", "")).lower()
    score_norm = _min_max(
        metadata, IMAGE_THRESHOLD_KEYS, SCORE_MIN_KEYS, SCORE_MAX_KEYS, "image"
    )
    map_norm = None
    if map_output is not None:
        try:
            map_norm = _min_max(
                metadata, PIXEL_THRESHOLD_KEYS, MAP_MIN_KEYS, MAP_MAX_KEYS, "pixel"
            )
        except AnomalibImportError:
            # A classifier may lack pixel statistics; its map then serves
            # only as the source of the score.
            if task != "classification":
                raise
    fixed = _static_hw(input_dims)
    preprocess = _v1_preprocess(metadata, fixed)
    map_dims = _dims(outputs[map_output]) if map_output else []
    working = (
        preprocess.resize_to
        or (_static_hw(map_dims) if map_dims else None)
        or FALLBACK_INPUT_SIZE
    )
    segments = map_norm is not None and task != "classification"
    return ExportPlan(
        anomalib="1.x",
        input_name=input_name,
        preprocess=preprocess,
        score_output=score_output,
        map_output=map_output,
        map_rank=_output_rank(outputs[map_output]) if map_output else 0,
        score_norm=score_norm,
        map_norm=map_norm,
        default_kind="segmentation" if segments else "classification",
        working_size=working,
        opset=_opset(model),
    )


def plan_export(model: onnx.ModelProto, export_dir: Path) -> ExportPlan:
    """Recognise the export's anomalib format from its outputs."""
    input_name, input_dims = _graph_input(model)
    names = [o.name for o in model.graph.output]
    if V1_MAP_OUTPUT in names:
        return _plan_v1(model, export_dir, input_name, input_dims)
    if names and all(name in V2_OUTPUTS for name in names):
        return _plan_v2(model, input_name, input_dims)
    raise AnomalibImportError(
        f"unknown output names {names}; expected anomalib 2.x outputs "
        f"({', '.join(V2_OUTPUTS)}) or an anomalib 1.x 'output' (raw map) with "
        "metadata.json"
    )


# ---------------------------------------------------------------- building


class _Builder:
    """Nodes and constants of the prefix and suffix, at the export's opset."""

    def __init__(self, opset: int) -> None:
        self.opset = opset
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[TensorProto] = []
        self._count = 0

    def name(self, hint: str) -> str:
        self._count += 1
        return f"ea/{hint}_{self._count}"

    def const(self, values: Any, dtype: type = np.float32, hint: str = "c") -> str:
        name = self.name(hint)
        array: np.ndarray = np.asarray(values, dtype=dtype)
        self.initializers.append(numpy_helper.from_array(array, name))
        return name

    def op(
        self,
        op_type: str,
        inputs: Sequence[str],
        output: str | None = None,
        **attrs: Any,
    ) -> str:
        out = output or self.name(op_type.lower())
        self.nodes.append(
            helper.make_node(op_type, list(inputs), [out], name=out, **attrs)
        )
        return out

    def unsqueeze0(self, value: str) -> str:
        if self.opset >= 13:
            return self.op("Unsqueeze", [value, self.const([0], np.int64)])
        return self.op("Unsqueeze", [value], axes=[0])

    def resize(self, value: str, sizes: str) -> str:
        # Bilinear with half-pixel centres and no antialiasing: what
        # cv2.resize(INTER_LINEAR) and torch's bilinear (align_corners
        # False) compute, so the wrapped graph matches anomalib's resizes.
        if self.opset >= 13:
            inputs = [value, "", "", sizes]
        else:
            empty = self.const(np.zeros(0, np.float32), hint="empty")
            inputs = [value, empty, empty, sizes]
        return self.op(
            "Resize",
            inputs,
            mode="linear",
            coordinate_transformation_mode="half_pixel",
        )

    def at_least(self, value: str, cut: float, output: str) -> str:
        cut_name = self.const(np.float32(cut), hint="cut")
        if self.opset >= 12:
            flag = self.op("GreaterOrEqual", [value, cut_name])
        else:
            flag = self.op("Not", [self.op("Less", [value, cut_name])])
        return self.op("Cast", [flag], output, to=TensorProto.UINT8)

    def min_max(self, value: str, norm: MinMax) -> str:
        shifted = self.op("Sub", [value, self.const(np.float32(norm.threshold))])
        scaled = self.op("Div", [shifted, self.const(np.float32(norm.high - norm.low))])
        centred = self.op("Add", [scaled, self.const(np.float32(0.5))])
        low, high = self.const(np.float32(0.0)), self.const(np.float32(1.0))
        return self.op("Clip", [centred, low, high])


def _prefix(b: _Builder, plan: ExportPlan, image: str) -> tuple[str, str]:
    """uint8 [H, W, 3] -> the export's input; returns it and int64 [H, W]."""
    image_hw = b.op(
        "Slice",
        [
            b.op("Shape", [image]),
            b.const([0], np.int64),
            b.const([2], np.int64),
            b.const([0], np.int64),
        ],
    )
    pixels = b.op("Cast", [image], to=TensorProto.FLOAT)
    batch = b.unsqueeze0(b.op("Transpose", [pixels], perm=[2, 0, 1]))
    pre = plan.preprocess
    if pre.resize_to is not None:
        batch = b.resize(batch, b.const([1, 3, *pre.resize_to], np.int64))
    if pre.mean is not None and pre.std is not None:
        mean = np.asarray(pre.mean, np.float32).reshape(1, 3, 1, 1)
        inverse = (1.0 / np.asarray(pre.std, np.float32)).reshape(1, 3, 1, 1)
        batch = b.op("Sub", [batch, b.const(mean)])
        batch = b.op("Mul", [batch, b.const(inverse)])
    elif pre.scale != 1.0:
        batch = b.op("Mul", [batch, b.const(np.float32(pre.scale))])
    return batch, image_hw


def _suffix(
    b: _Builder, plan: ExportPlan, kind: str, image_hw: str, prefixed: dict[str, str]
) -> None:
    """anomalib's outputs -> score [1], anomaly_map [H, W], mask [H, W]."""
    raw_map = prefixed[plan.map_output] if plan.map_output else None
    one = b.const([1], np.int64)
    if plan.score_output is not None:
        score = b.op("Reshape", [prefixed[plan.score_output], one])
    else:
        assert raw_map is not None
        # As the 1.x inferencers do: the image's raw score is the map's peak.
        score = b.op("Reshape", [b.op("ReduceMax", [raw_map], keepdims=0), one])
    if plan.score_norm is not None:
        score = b.min_max(score, plan.score_norm)
    b.op("Identity", [score], "score")
    if kind != "segmentation":
        return
    assert raw_map is not None
    grid = raw_map if plan.map_norm is None else b.min_max(raw_map, plan.map_norm)
    if plan.map_rank == 3:
        # The batch is 1, so [1, h, w] gains its channel axis in front.
        grid = b.unsqueeze0(grid)
    sizes = b.op("Concat", [b.const([1, 1], np.int64), image_hw], axis=0)
    resized = b.resize(grid, sizes)
    anomaly_map = b.op("Reshape", [resized, image_hw], "anomaly_map")
    b.at_least(anomaly_map, THRESHOLD, "mask")


def wrap_export(model: onnx.ModelProto, plan: ExportPlan, kind: str) -> onnx.ModelProto:
    """The component graph: prefix, the export (renamed), suffix."""
    inner = onnx.compose.add_prefix(model, EXPORT_PREFIX)
    b = _Builder(plan.opset)
    batch, image_hw = _prefix(b, plan, "image")
    prefix_nodes = list(b.nodes)
    b.nodes.clear()
    prefixed = {o.name: EXPORT_PREFIX + o.name for o in model.graph.output}
    _suffix(b, plan, kind, image_hw, prefixed)
    feed = helper.make_node(
        "Identity", [batch], [EXPORT_PREFIX + plan.input_name], name="ea/feed"
    )
    graph = onnx.GraphProto()
    graph.name = "edge-agent-anomalib"
    graph.node.extend([*prefix_nodes, feed, *inner.graph.node, *b.nodes])
    graph.initializer.extend([*b.initializers, *inner.graph.initializer])
    graph.sparse_initializer.extend(inner.graph.sparse_initializer)
    graph.value_info.extend(inner.graph.value_info)
    graph.input.append(
        helper.make_tensor_value_info(
            "image", TensorProto.UINT8, ["height", "width", 3]
        )
    )
    graph.output.append(helper.make_tensor_value_info("score", TensorProto.FLOAT, [1]))
    if kind == "segmentation":
        graph.output.append(
            helper.make_tensor_value_info(
                "mask", TensorProto.UINT8, ["height", "width"]
            )
        )
        graph.output.append(
            helper.make_tensor_value_info(
                "anomaly_map", TensorProto.FLOAT, ["height", "width"]
            )
        )
    wrapped = helper.make_model(
        graph,
        opset_imports=list(inner.opset_import),
        producer_name="edge-agent import-anomalib",
    )
    wrapped.ir_version = inner.ir_version
    wrapped.functions.extend(inner.functions)
    return wrapped


# ---------------------------------------------------------------- writing


def _check_args(name: str, kind: str | None, version: str, cores: int) -> None:
    problem = check_component_name(name)
    if problem is not None:
        raise AnomalibImportError(problem.replace("model_component", "--name", 1))
    if kind is not None and kind not in KINDS:
        raise AnomalibImportError(f"kind {kind!r} is not one of {', '.join(KINDS)}")
    if not _VERSION_RE.fullmatch(version):
        raise AnomalibImportError(f"version {version!r} must be MAJOR.MINOR.PATCH")
    if cores < 1:
        raise AnomalibImportError(f"cores must be at least 1, not {cores}")


def _describe(plan: ExportPlan, export_dir: Path) -> str:
    text = (
        f"Imported from an anomalib {plan.anomalib} ONNX export "
        f"('{export_dir.name}', opset {plan.opset}) by edge-agent import-anomalib."
    )
    if plan.anomalib == "2.x":
        return text + " Scores and map normalised by the export itself; cut 0.5."
    norms = [("image", plan.score_norm), ("pixel", plan.map_norm)]
    for what, norm in norms:
        if norm is not None:
            text += (
                f" Raw {what} threshold {norm.threshold:.6g}, min {norm.low:.6g}, "
                f"max {norm.high:.6g}."
            )
    return text


def _manifest(
    plan: ExportPlan,
    *,
    name: str,
    version: str,
    kind: str,
    cores: int,
    text: str,
    label: str,
    color: str,
) -> dict[str, object]:
    height, width = plan.working_size
    manifest: dict[str, object] = {
        "format_version": 1,
        "name": name,
        "version": version,
        "kind": kind,
        "model_arn": f"arn:edge-agent:model/{name}/{version}",
        "threshold": THRESHOLD,
        "input_size": [width, height],
    }
    if kind == "segmentation":
        manifest["labels"] = [{"name": label, "color": color}]
    manifest["cores"] = cores
    manifest["description"] = text
    return manifest


def _save(model: onnx.ModelProto, folder: Path) -> None:
    path = folder / MODEL_FILE
    if model.ByteSize() < PROTOBUF_LIMIT_BYTES:
        onnx.save_model(model, str(path))
    else:
        # Too big for one protobuf message: the weights go beside the graph,
        # where onnxruntime finds them from model.onnx's own folder.
        onnx.save_model(
            model,
            str(path),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=EXTERNAL_DATA_FILE,
        )
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise AnomalibImportError(
            f"the wrapped graph does not pass onnx.checker: {exc}"
        ) from exc


def import_export(
    export_dir: Path,
    out_dir: Path,
    *,
    name: str,
    kind: str | None = None,
    version: str = "1.0.0",
    cores: int = 1,
    label: str = DEFAULT_LABEL,
    color: str = DEFAULT_COLOR,
    overwrite: bool = False,
) -> Path:
    """Wrap the anomalib export in ``export_dir`` as ``out_dir/name``.

    ``kind`` defaults to segmentation when the export has an anomaly map.
    Returns the component folder. Raises AnomalibImportError for an export
    that cannot be wrapped, and when the component exists already unless
    ``overwrite``: a running agent may serve it.
    """
    export_dir, out_dir = Path(export_dir), Path(out_dir)
    _check_args(name, kind, version, cores)
    given, color = color, color.upper()
    if not _COLOR_RE.fullmatch(color) or color == "#FFFFFF":
        raise AnomalibImportError(
            f"color {given!r} must be #RRGGBB, and not #FFFFFF (the background)"
        )
    if not label or label == "background":
        raise AnomalibImportError("label must be non-empty and not 'background'")
    target = out_dir / name
    if target.exists() and not overwrite:
        raise AnomalibImportError(
            f"{target} exists already; pick another --name, or replace it with --force"
        )

    model = load_export(export_dir)
    plan = plan_export(model, export_dir)
    kind = kind or plan.default_kind
    if kind == "segmentation" and not plan.can_segment:
        raise AnomalibImportError(
            "a segmentation component needs an anomaly map with pixel "
            "normalisation; this export has none, import it with --kind "
            "classification"
        )
    wrapped = wrap_export(model, plan, kind)

    out_dir.mkdir(parents=True, exist_ok=True)
    # Built aside and moved in whole, so an agent scanning out_dir never
    # sees half a component. The dot keeps the scratch folder out of scans.
    scratch = out_dir / f".{name}.import-{os.getpid()}"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir()
    try:
        _save(wrapped, scratch)
        manifest = _manifest(
            plan,
            name=name,
            version=version,
            kind=kind,
            cores=cores,
            text=_describe(plan, export_dir),
            label=label,
            color=color,
        )
        (scratch / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        if target.exists():
            shutil.rmtree(target)
        scratch.rename(target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


# ---------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edge-agent import-anomalib",
        description="Wrap an anomalib ONNX export (1.x or 2.x) into a component.",
    )
    parser.add_argument("export_dir", type=Path, help="folder holding model.onnx")
    parser.add_argument("--out", type=Path, required=True, help="models folder")
    parser.add_argument("--name", required=True, help="component name")
    parser.add_argument(
        "--kind", choices=KINDS, help="default: segmentation when there is a map"
    )
    parser.add_argument("--version", default="1.0.0", help="MAJOR.MINOR.PATCH")
    parser.add_argument("--cores", type=int, default=1)
    parser.add_argument("--label", default=DEFAULT_LABEL, help="mask label name")
    parser.add_argument("--color", default=DEFAULT_COLOR, help="label #RRGGBB")
    parser.add_argument(
        "--force", action="store_true", help="replace an existing component"
    )
    return parser


def main(argv: list[str]) -> int:
    """Run the import CLI; ``argv`` excludes the ``import-anomalib`` word."""
    args = _parser().parse_args(argv)
    try:
        component = import_export(
            args.export_dir,
            args.out,
            name=args.name,
            kind=args.kind,
            version=args.version,
            cores=args.cores,
            label=args.label,
            color=args.color,
            overwrite=args.force,
        )
    except AnomalibImportError as exc:
        print(f"edge-agent import-anomalib: error: {exc}", file=sys.stderr)
        return 2
    print(f"done: {component}")
    return 0
