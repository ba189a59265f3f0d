"""ONNX graph construction for anomaly-detection model components.

One builder produces both the feature graph (uint8 image -> patch features)
that the trainer runs on the good photos, and the shipped component graph,
which is the same feature stage followed by memory-bank scoring. Sharing the
code means training features and deployed features cannot drift apart.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 18  # Resize gained `antialias` in opset 18.
IR_VERSION = 8  # The IR version that goes with opset 18.
GRID_STRIDE = 8  # Working-size pixels per feature cell.
KERNEL = 5
N_SCALES = 4
SMOOTH_SIGMA = 1.0  # In feature cells; removes single-cell speckle.
# How the photo is resized to the working size (see _working_nchw).
RESAMPLERS = ("linear", "cubic")
# Labelled segmentation: each cell takes the label of the strongest cell of
# the pixel map within this window (cells per side, centred on it).
LABEL_WINDOW = 7

# ITU-R BT.601 luma plus two colour differences, scaled from bytes to [0, 1].
_LUMA = np.array([0.299, 0.587, 0.114]) / 255.0
_CHROMA = np.array([[-0.299, -0.587, 0.886], [0.701, -0.587, -0.114]]) / 255.0


def filter_bank(seed: int, n_random: int = 2) -> np.ndarray:
    """Return the fixed luma filter bank, shape [K, 1, KERNEL, KERNEL].

    Low-frequency 2-D DCT-II basis functions (1 <= u+v <= 4, no DC term) give
    orientation and frequency selectivity; a few seeded zero-mean random
    filters add non-separable structure. Every filter has unit L2 norm so all
    channels start on a comparable scale.
    """
    n = np.arange(KERNEL)
    basis = [np.cos(np.pi * (n + 0.5) * u / KERNEL) for u in range(KERNEL)]
    filters = [
        np.outer(basis[u], basis[total - u])
        for total in range(1, 5)
        for u in range(total + 1)
        if u < KERNEL and total - u < KERNEL
    ]
    rng = np.random.default_rng(seed)
    for _ in range(n_random):
        f = rng.standard_normal((KERNEL, KERNEL))
        filters.append(f - f.mean())
    bank = np.stack(filters)
    bank /= np.linalg.norm(bank, axis=(1, 2), keepdims=True)
    return bank[:, None].astype(np.float32)


def feature_channels(bank: np.ndarray) -> int:
    """Number of feature channels the feature stage emits for `bank`."""
    return int(N_SCALES * bank.shape[0] + 3)


def gaussian_kernel(sigma: float) -> np.ndarray:
    """Normalised 2-D Gaussian, shape [1, 1, 5, 5]."""
    x = np.arange(5) - 2.0
    g = np.exp(-(x**2) / (2 * sigma**2))
    k = np.outer(g, g)
    kernel: np.ndarray = (k / k.sum())[None, None].astype(np.float32)
    return kernel


@dataclass(frozen=True)
class Scoring:
    """Fitted parameters of the scoring stage.

    `proj_w` [d, D] and `proj_b` [d] fold per-channel standardisation and PCA
    into one 1x1 convolution; `bank` [M, d] holds the coreset of normal
    patches in that projected space. Thresholds are raw distances.
    """

    proj_w: np.ndarray
    proj_b: np.ndarray
    bank: np.ndarray
    image_threshold: float
    pixel_threshold: float
    # [K, d] mean projected feature of each labelled defect kind; anomalous
    # pixels take the label of the nearest one. None: a single "anomaly".
    prototypes: np.ndarray | None = None
    # [K] raw pixel threshold for the cells given each label (with
    # prototypes only); None: `pixel_threshold` for every cell.
    label_thresholds: np.ndarray | None = None


@dataclass(frozen=True)
class GaussianScoring:
    """Fitted parameters of the per-location Gaussian (PaDiM-style) stage.

    `proj_w` [d, D] and `proj_b` [d] are the projection as in `Scoring`;
    `means` [d, h/8, w/8] is the mean projected feature of every cell;
    `whiten` [blocks, d, d] holds, per `block` x `block` group of cells, a
    factor L of the inverse covariance (L L^T = C^-1), so that the
    Mahalanobis distance of a centred feature x is ||x^T L||.
    """

    proj_w: np.ndarray
    proj_b: np.ndarray
    means: np.ndarray
    whiten: np.ndarray
    block: int
    image_threshold: float
    pixel_threshold: float
    prototypes: np.ndarray | None = None
    label_thresholds: np.ndarray | None = None  # as in Scoring
    # A second Gaussian per cell on the fine (leading) feature channels
    # only. With it the image score stays the maximum of this model's map,
    # and the pixel map is the geometric mean of the two maps: the context
    # channels decide whether a photo is defective, the fine ones sharpen
    # where.
    local: LocalGaussian | None = None


@dataclass(frozen=True)
class LocalGaussian:
    """A per-cell Gaussian on the first `channels` feature channels, with
    its own projection; the covariance blocks are its GaussianScoring's."""

    channels: int
    proj_w: np.ndarray
    proj_b: np.ndarray
    means: np.ndarray
    whiten: np.ndarray


AnyScoring = Scoring | GaussianScoring


class _Builder:
    """Accumulates nodes and initialisers with unique, readable names."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._count = 0

    def _name(self, stem: str) -> str:
        self._count += 1
        return f"{stem}_{self._count}"

    def const(self, stem: str, value: np.ndarray) -> str:
        name = self._name(stem)
        self.inits.append(numpy_helper.from_array(value, name))
        return name

    def ints(self, stem: str, values: list[int]) -> str:
        return self.const(stem, np.array(values, dtype=np.int64))

    def floats(self, stem: str, values: list[float]) -> str:
        return self.const(stem, np.array(values, dtype=np.float32))

    def op(
        self, op_type: str, inputs: list[str], out: str | None = None, **attrs: Any
    ) -> str:
        name = out or self._name(op_type.lower())
        self.nodes.append(
            helper.make_node(op_type, inputs, [name], name=f"n_{name}", **attrs)
        )
        return name


def _conv_reflect(b: _Builder, x: str, weight: str, stride: int) -> str:
    # Reflect padding: zero padding would make the image border look like a
    # strong edge, and every border patch would then be an outlier.
    pad = KERNEL // 2
    pads = b.ints("pads", [0, 0, pad, pad, 0, 0, pad, pad])
    padded = b.op("Pad", [x, pads], mode="reflect")
    return b.op("Conv", [padded, weight], strides=[stride, stride])


def _pool(b: _Builder, x: str, size: int) -> str:
    return b.op("AveragePool", [x], kernel_shape=[size, size], strides=[size, size])


def _working_nchw(
    b: _Builder, image: str, input_size: tuple[int, int], resample: str
) -> str:
    """The uint8 HWC image as float NCHW (0..255) at the working size.

    Both resamplers antialias, so that large camera frames do not alias
    the fine texture the features look at. `resample` is "linear" or
    "cubic", the default with a pretrained backbone. The bicubic kernel is
    Keys' with a = -0.5, the one Pillow's BICUBIC uses; it matches Pillow
    away from the border, and differs within 3 pixels of it, where ORT
    keeps the weights that fall outside the photo (`exclude_outside` 0).
    It overshoots at hard edges (about -30 to 280 on noise) and is not
    clipped: the trainer sees the same values the agent does.

    On magnetic tiles the bicubic kernel kept small blowholes and thin
    breaks visible to the pretrained backbones, and raised the share of
    defective photos caught at 2% false alarms from 87% to 93% over eight
    split seeds (docs/model-quality.md, fifth round). It resizes in float:
    ORT's uint8 bicubic rounds and clips between its two passes (up to 31
    levels off on hard edges), and was no faster.
    """
    width, height = input_size
    batched = b.op("Unsqueeze", [image, b.ints("axes", [0])])
    sizes = b.ints("sizes", [1, height, width, 3])
    if resample not in RESAMPLERS:
        raise ValueError(f"resample must be one of {RESAMPLERS}, got {resample!r}")
    if resample == "cubic":
        as_float = b.op("Cast", [batched], to=TensorProto.FLOAT)
        small = b.op(
            "Resize",
            [as_float, "", "", sizes],
            mode="cubic",
            cubic_coeff_a=-0.5,
            antialias=1,
        )
    else:
        # Downscale while still uint8 (cheapest).
        small = b.op("Resize", [batched, "", "", sizes], mode="linear", antialias=1)
        small = b.op("Cast", [small], to=TensorProto.FLOAT)
    return b.op("Transpose", [small], perm=[0, 3, 1, 2])


def _features(
    b: _Builder, image: str, input_size: tuple[int, int], seed: int, resample: str
) -> str:
    """Add the feature stage; returns the [1, D, h/8, w/8] feature tensor."""
    rgb = _working_nchw(b, image, input_size, resample)
    luma = b.op(
        "Conv", [rgb, b.const("luma_w", _LUMA.reshape(1, 3, 1, 1).astype(np.float32))]
    )
    chroma = b.op(
        "Conv",
        [rgb, b.const("chroma_w", _CHROMA.reshape(2, 3, 1, 1).astype(np.float32))],
    )

    weight = b.const("bank_w", filter_bank(seed))
    energies = []
    level = luma
    for scale in range(N_SCALES):
        if scale > 0:
            level = _pool(b, level, 2)
        # The finest scale uses a strided conv: it is by far the biggest and
        # its output is pooled by 8 anyway.
        stride = 2 if scale == 0 else 1
        response = b.op("Abs", [_conv_reflect(b, level, weight, stride)])
        remaining = GRID_STRIDE // (stride * 2**scale)
        energies.append(_pool(b, response, remaining) if remaining > 1 else response)
    # sqrt compresses the heavy tail of filter energies so that no single
    # strong edge dominates the distance.
    energy = b.op("Sqrt", [b.op("Concat", energies, axis=1)])
    colour = _pool(b, chroma, GRID_STRIDE)
    stacked = b.op("Concat", [energy, level, colour], axis=1)
    # A 3x3 neighbourhood average gives every patch some spatial context.
    return b.op(
        "AveragePool",
        [stacked],
        kernel_shape=[3, 3],
        strides=[1, 1],
        pads=[1, 1, 1, 1],
        count_include_pad=0,
    )


def _image_input() -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(
        "image", TensorProto.UINT8, ["height", "width", 3]
    )


def _finish(
    b: _Builder, outputs: list[onnx.ValueInfoProto], name: str
) -> onnx.ModelProto:
    graph = helper.make_graph(b.nodes, name, [_image_input()], outputs, b.inits)
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="edge-agent-trainer",
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    return model


def _pretrained_features(
    b: _Builder,
    image: str,
    input_size: tuple[int, int],
    backbone: onnx.GraphProto,
    resample: str,
) -> str:
    """Resize and cast the image, then splice in the exported backbone graph.

    `backbone` maps a float NCHW image in bytes (0..255) at the working size
    to features [1, D, h/8, w/8]; its one input and one output are rewired,
    and every other name gets a prefix so it cannot collide with ours.
    """
    nchw = _working_nchw(b, image, input_size, resample)
    source = backbone.input[0].name
    result = backbone.output[0].name
    out = b.op("Identity", [nchw])  # reserves a unique name for the result
    feats = b._name("backbone_features")

    def rename(name: str) -> str:
        if name == "":
            return name
        if name == source:
            return out
        if name == result:
            return feats
        return f"bb/{name}"

    for init in backbone.initializer:
        if (
            init.data_type == TensorProto.FLOAT
            and math.prod(init.dims) >= _HALF_MIN_SIZE
        ):
            # Weights stored as float16 halve the backbone's share of the
            # file; ORT folds the Cast at load, so inference runs in float32
            # on exactly the weights the trainer's features came from.
            half = numpy_helper.to_array(init).astype(np.float16)
            b.op(
                "Cast",
                [b.const("bb_half", half)],
                out=rename(init.name),
                to=TensorProto.FLOAT,
            )
            continue
        tensor = onnx.TensorProto()
        tensor.CopyFrom(init)
        tensor.name = rename(init.name)
        b.inits.append(tensor)
    for node in backbone.node:
        spliced = onnx.NodeProto()
        spliced.CopyFrom(node)
        spliced.name = f"bb/{node.name}"
        spliced.input[:] = [rename(n) for n in node.input]
        spliced.output[:] = [rename(n) for n in node.output]
        b.nodes.append(spliced)
    return feats


# Backbone tensors of at least this many values are stored as float16.
_HALF_MIN_SIZE = 1024


def _stage(
    b: _Builder,
    input_size: tuple[int, int],
    seed: int,
    backbone: onnx.GraphProto | None,
    resample: str | None,
) -> str:
    """The feature stage; `resample` None is bicubic with a pretrained
    backbone and bilinear with the fixed filters (tuned with it)."""
    if backbone is None:
        return _features(b, "image", input_size, seed, resample or "linear")
    return _pretrained_features(b, "image", input_size, backbone, resample or "cubic")


def build_feature_model(
    input_size: tuple[int, int],
    seed: int,
    backbone: onnx.GraphProto | None = None,
    *,
    resample: str | None = None,
) -> onnx.ModelProto:
    """Graph `image` -> `features` [1, D, h/8, w/8], used during training.

    Without `backbone` the features are the fixed filter bank; with it, the
    exported pretrained network (see `trainer.backbones`). `resample` as in
    `_stage`.
    """
    b = _Builder()
    b.op("Identity", [_stage(b, input_size, seed, backbone, resample)], out="features")
    grid = [input_size[1] // GRID_STRIDE, input_size[0] // GRID_STRIDE]
    if backbone is None:
        channels: int | str = feature_channels(filter_bank(seed))
    else:
        channels = "channels"
    out = helper.make_tensor_value_info(
        "features", TensorProto.FLOAT, [1, channels, *grid]
    )
    return _finish(b, [out], "edge_agent_features")


def build_component_model(
    input_size: tuple[int, int],
    seed: int,
    scoring: AnyScoring,
    *,
    segmentation: bool,
    raw_outputs: bool = False,
    backbone: onnx.GraphProto | None = None,
    resample: str | None = None,
) -> onnx.ModelProto:
    """The full component graph (`resample` as in `_stage`).

    With `raw_outputs` the un-normalised `raw_score` [1] and `raw_map`
    [1, 1, h/8, w/8] are exposed too; the trainer uses them for calibration.
    """
    b = _Builder()
    feats = _stage(b, input_size, seed, backbone, resample)
    grid_h, grid_w = input_size[1] // GRID_STRIDE, input_size[0] // GRID_STRIDE
    # Features as [D, cells] (a free reshape of NCHW); patches go in rows
    # so that reductions run along the contiguous last axis (ReduceMin
    # over the channel axis of a conv output was measured ~10x slower).
    columns = b.op("Reshape", [feats, b.ints("shape", [-1, grid_h * grid_w])])
    rows = _project_rows(b, columns, scoring.proj_w, scoring.proj_b, "proj")
    if isinstance(scoring, GaussianScoring):
        dist = _mahalanobis(
            b,
            rows,
            (grid_h, grid_w),
            means=scoring.means,
            whiten=scoring.whiten,
            k=scoring.block,
        )
    else:
        dist_rows = _nearest_distance(b, rows, scoring.bank, reduce="min")
        dist = b.op("Reshape", [dist_rows, b.ints("shape", [1, 1, grid_h, grid_w])])
    score_map = _smooth(b, dist)
    raw_map = score_map
    gaussian = scoring if isinstance(scoring, GaussianScoring) else None
    local = gaussian.local if gaussian is not None else None
    # The fine model only shapes the pixel map: a classifier skips it.
    if gaussian is not None and local is not None and (segmentation or raw_outputs):
        fine = b.op(
            "Slice",
            [
                columns,
                b.ints("start", [0]),
                b.ints("end", [local.channels]),
                b.ints("axes", [0]),
            ],
        )
        fine_rows = _project_rows(b, fine, local.proj_w, local.proj_b, "local")
        fine_map = _smooth(
            b,
            _mahalanobis(
                b,
                fine_rows,
                (grid_h, grid_w),
                means=local.means,
                whiten=local.whiten,
                k=gaussian.block,
            ),
        )
        raw_map = b.op("Sqrt", [b.op("Mul", [score_map, fine_map])])
    raw_score = b.op(
        "Reshape",
        [b.op("ReduceMax", [score_map], keepdims=0), b.ints("shape", [1])],
    )
    # s / (s + t) maps [0, inf) onto [0, 1) with the threshold landing on 0.5.
    t_img = b.floats("t_image", [scoring.image_threshold])
    b.op("Div", [raw_score, b.op("Add", [raw_score, t_img])], out="score")
    outputs = [helper.make_tensor_value_info("score", TensorProto.FLOAT, [1])]

    if segmentation:
        outputs += _segmentation(b, raw_map, rows, scoring, (grid_h, grid_w))
    if raw_outputs:
        b.op("Identity", [raw_score], out="raw_score")
        b.op("Identity", [raw_map], out="raw_map")
        outputs += [
            helper.make_tensor_value_info("raw_score", TensorProto.FLOAT, [1]),
            helper.make_tensor_value_info(
                "raw_map",
                TensorProto.FLOAT,
                [1, 1, grid_h, grid_w],
            ),
        ]
    return _finish(b, outputs, "edge_agent_component")


def _project_rows(
    b: _Builder, columns: str, weight: np.ndarray, bias: np.ndarray, stem: str
) -> str:
    """Projected cells [cells, d] from features [D, cells]: one Gemm with
    the transpose folded in (a Conv then a Transpose cost 0.9 ms more at
    200 dims)."""
    return b.op(
        "Gemm",
        [
            columns,
            b.const(f"{stem}_wt", np.ascontiguousarray(weight.T, dtype=np.float32)),
            b.const(f"{stem}_b", bias.astype(np.float32)),
        ],
        transA=1,
    )


def _smooth(b: _Builder, dist: str) -> str:
    """The distance map smoothed by a 5x5 Gaussian, edges padded."""
    padded = b.op("Pad", [dist, b.ints("pads", [0, 0, 2, 2, 0, 0, 2, 2])], mode="edge")
    return b.op("Conv", [padded, b.const("smooth_w", gaussian_kernel(SMOOTH_SIGMA))])


def _mahalanobis(
    b: _Builder,
    rows: str,
    grid: tuple[int, int],
    *,
    means: np.ndarray,
    whiten: np.ndarray,
    k: int,
) -> str:
    """Per-cell Mahalanobis distance to that cell's Gaussian, [1, 1, h, w].

    `rows` [h*w, d] holds the projected cells in row-major order; cells in
    a `k` x `k` block share one whitening factor.
    """
    d = means.shape[0]
    gh, gw = grid[0] // k, grid[1] // k
    # [h*w, d] -> [blocks, k*k, d]: the cells that share one covariance
    # become rows of one batched MatMul with that block's factor. The
    # feature axis stays last, so the transpose moves whole rows (moving
    # it from first to last, from NCHW, cost 1.5 ms at 200 dims).
    split = b.op("Reshape", [rows, b.ints("shape", [gh, k, gw, k, d])])
    grouped = b.op(
        "Reshape",
        [
            b.op("Transpose", [split], perm=[0, 2, 1, 3, 4]),
            b.ints("shape", [gh * gw, k * k, d]),
        ],
    )
    grouped_means = (
        means.transpose(1, 2, 0)
        .reshape(gh, k, gw, k, d)
        .transpose(0, 2, 1, 3, 4)
        .reshape(gh * gw, k * k, d)
    )
    centred = b.op("Sub", [grouped, b.const("means", grouped_means.astype(np.float32))])
    # Stored as float16 to halve the file; ORT folds the Cast at load time.
    factor = b.op(
        "Cast",
        [b.const("whiten", whiten.astype(np.float16))],
        to=TensorProto.FLOAT,
    )
    squared = b.op(
        "ReduceSumSquare",
        [b.op("MatMul", [centred, factor]), b.ints("axes", [2])],
        keepdims=0,
    )
    cells = b.op(
        "Transpose",
        [b.op("Reshape", [squared, b.ints("shape", [gh, gw, k, k])])],
        perm=[0, 2, 1, 3],
    )
    return b.op(
        "Sqrt", [b.op("Reshape", [cells, b.ints("shape", [1, 1, grid[0], grid[1]])])]
    )


def _nearest_distance(
    b: _Builder, rows: str, points: np.ndarray, *, reduce: str
) -> str:
    """Distance of each row to its nearest point (`reduce="min"`, [N, 1]), or
    the index of that point (`reduce="argmin"`, int64 [N])."""
    points = points.astype(np.float32)
    cross = b.op(
        "Add",
        [
            b.op(
                "MatMul",
                [rows, b.const("bank_neg2_t", np.ascontiguousarray(-2.0 * points.T))],
            ),
            b.const("bank_sq", (points**2).sum(axis=1).astype(np.float32)),
        ],
    )
    if reduce == "argmin":
        # ||z||^2 is the same for every point, so it does not change the order.
        return b.op("ArgMin", [cross], axis=1, keepdims=0)
    nearest = b.op("ReduceMin", [cross, b.ints("axes", [1])], keepdims=1)
    z_sq = b.op("ReduceSumSquare", [rows, b.ints("axes", [1])], keepdims=1)
    # Relu clips tiny negative values left by float cancellation.
    return b.op("Sqrt", [b.op("Relu", [b.op("Add", [nearest, z_sq])])])


def _segmentation(
    b: _Builder,
    raw_map: str,
    rows: str,
    scoring: AnyScoring,
    grid: tuple[int, int],
) -> list[onnx.ValueInfoProto]:
    """Add `mask` and `anomaly_map` at the input image's size.

    With labelled defect kinds each cell takes the label of the nearest
    prototype, and is anomalous from that label's threshold on: the map is
    normalised by it, so 0.5 stays the cut everywhere.
    """
    index = None
    if scoring.prototypes is not None:
        nearest = _nearest_distance(b, rows, scoring.prototypes, reduce="argmin")
        # A defect's map spreads over the cells around it, whose features
        # look normal and so nearest to whichever kind is faintest; they
        # take the label of the strongest cell nearby instead (on a part
        # with three kinds, the faint kind's label covered more of the
        # mask than the true kind's on 15 of 16 photos).
        radius = LABEL_WINDOW // 2
        peak_at = b._name("peak_at")
        b.nodes.append(
            helper.make_node(
                "MaxPool",
                [raw_map],
                [b._name("peak"), peak_at],
                name=b._name("label_window"),
                kernel_shape=[LABEL_WINDOW, LABEL_WINDOW],
                pads=[radius] * 4,
                strides=[1, 1],
            )
        )
        index = b.op(
            "Gather",
            [nearest, b.op("Reshape", [peak_at, b.ints("shape", [-1])])],
            axis=0,
        )
    if index is not None and scoring.label_thresholds is not None:
        assert scoring.prototypes is not None  # as index is set
        if len(scoring.label_thresholds) != len(scoring.prototypes):
            raise ValueError(
                f"{len(scoring.label_thresholds)} label thresholds for "
                f"{len(scoring.prototypes)} prototypes; give one per prototype"
            )
        per_cell = b.op(
            "Gather",
            [b.floats("t_label", list(scoring.label_thresholds)), index],
            axis=0,
        )
        t_pix = b.op("Reshape", [per_cell, b.ints("shape", [1, 1, *grid])])
    else:
        t_pix = b.floats("t_pixel", [scoring.pixel_threshold])
    norm_map = b.op("Div", [raw_map, b.op("Add", [raw_map, t_pix])])
    # Normalise on the small grid, then upsample: far cheaper than doing
    # the division per full-resolution pixel, and monotone either way.
    hw = b.op(
        "Slice",
        [b.op("Shape", ["image"]), b.ints("start", [0]), b.ints("end", [2])],
    )
    # Resize the 2-D grid straight to [H, W]: no reshape copy of the
    # full-resolution result afterwards.
    flat_map = b.op("Reshape", [norm_map, b.ints("shape", list(grid))])
    amap = b.op("Resize", [flat_map, "", "", hw], out="anomaly_map", mode="linear")
    anomalous = b.op("GreaterOrEqual", [amap, b.floats("half", [0.5])])
    if index is None:
        b.op("Cast", [anomalous], out="mask", to=TensorProto.UINT8)
    else:
        # Label k+1 for the defect kind whose prototype is nearest to the
        # cell's feature; the label grid is upsampled by nearest neighbour
        # so labels never blend into values that name another kind.
        labels = b.op(
            "Add",
            [
                b.op("Cast", [index], to=TensorProto.FLOAT),
                b.floats("one", [1.0]),
            ],
        )
        label_grid = b.op("Reshape", [labels, b.ints("shape", list(grid))])
        label_full = b.op(
            "Resize",
            [label_grid, "", "", hw],
            mode="nearest",
            nearest_mode="floor",
            coordinate_transformation_mode="asymmetric",
        )
        b.op(
            "Cast",
            [b.op("Where", [anomalous, label_full, b.floats("zero", [0.0])])],
            out="mask",
            to=TensorProto.UINT8,
        )
    return [
        helper.make_tensor_value_info("mask", TensorProto.UINT8, ["height", "width"]),
        helper.make_tensor_value_info(
            "anomaly_map", TensorProto.FLOAT, ["height", "width"]
        ),
    ]
