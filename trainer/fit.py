"""Fit a model component from a folder of good (defect-free) photos.

Steps: load and check the photos, split off a calibration hold-out, extract
patch features with the component's own feature graph (ImageNet-pretrained
EfficientNet-Lite0, or the fixed filter bank), fit a standardise+PCA
projection, model normal cells (a Gaussian per cell, or a greedy coreset
memory bank), calibrate thresholds on the hold-out (and on labelled defects
when given), then write the component.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

import numpy as np
import onnx
import onnxruntime as ort
from PIL import Image

from shared.component import MAX_INPUT_SIDE, check_component_name
from shared.images import ImageError, load_rgb
from trainer import graph

FORMAT_VERSION = 1
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg"})
MIN_SIDE = 64
MAX_SIDE = MAX_INPUT_SIDE
HOLDOUT_FRACTION = 0.2
# Fewer held-out photos than this get a warning: their maximum is a poor
# estimate of a high quantile of good parts.
FEW_HELD_OUT = 10
# The threshold sits this far above the worst held-out good score, so that
# good photos a little unlike the hold-out still pass.
CALIBRATION_MARGIN = 1.5
# A held-out good photo whose raw score lies above Tukey's upper fence,
# Q3 + OUTLIER_FENCE x IQR of the log scores, and OUTLIER_GAP times above
# every photo kept, is left out of the threshold: one such photo used to
# set it alone. On magnetic tiles, split seeds 1, 2, 3, 5 and 7 put an
# over-exposed good photo among the 72 held out, and those models caught
# 6-32% of the defective photos; with the rule, 54-83%, at 0-1.9% false
# alarms either way (docs/model-quality.md).
OUTLIER_FENCE = 1.5
# The fence alone also fires on clean data whose tail is long (maxima of
# many cells are): in a simulation of 72 Gumbel-like scores it left one
# out most of the time, raising the expected false alarms from 1.2% to
# 3.5%; requiring the gap brings that to 2.3%.
OUTLIER_GAP = 1.15
# Quartiles of fewer values mean little: below this the fence is not used.
MIN_HELD_FOR_FENCE = 20
# Never more than this share of the held-out photos is left out: a larger
# group of high scores is a mode of good parts, not a few odd photos.
MAX_OUTLYING_SHARE = 0.05
MAX_PROJECTED_DIMS = 24
DEFAULT_BANK_SIZE = 768
MAX_BANK_CANDIDATES = 100_000
ANOMALY_LABEL = {"name": "anomaly", "color": "#FF0000"}
# Colours for labelled defect kinds, in order; never #FFFFFF (background).
LABEL_COLORS = (
    "#FF0000",
    "#00C000",
    "#0060FF",
    "#FFB000",
    "#C000C0",
    "#00C0C0",
    "#804000",
    "#808080",
)
PRETRAINED = ("lite0", "lite1", "lite2")
BACKBONES = (*PRETRAINED, "fixed")
KINDS = ("classification", "segmentation")
# Pretrained features: the ends of the stride-8, 16 and 32 stages (the
# same default as trainer.backbones, which needs torch to import).
DEFAULT_STRIDES = (8, 16, 32)
_VERSION_RE = re.compile(r"^\d+\.\d+\.\d+$")

Progress = Callable[[str], None]
T = TypeVar("T")


class Bar(Protocol):
    """Wraps a sequence to report progress while it is iterated."""

    def __call__(self, label: str, items: Sequence[T], /) -> Iterator[T]: ...


class TrainingError(ValueError):
    """The inputs cannot produce a component; the message says what to fix."""


def _quiet(_message: str) -> None:
    pass


def _bar(label: str, items: Sequence[T]) -> Iterator[T]:
    """Yield `items`, drawing a plain-text counter on stderr as it goes."""
    total = len(items)
    # On a terminal the counter redraws one line; in a log file it would be
    # one endless line, so there it is a line every tenth of the way.
    terminal = sys.stderr.isatty()
    step = max(1, total // (100 if terminal else 10))
    for i, item in enumerate(items):
        if i % step == 0:
            if terminal:
                sys.stderr.write(f"\r{label}: {i}/{total}")
            else:
                sys.stderr.write(f"{label}: {i}/{total}\n")
            sys.stderr.flush()
        yield item
    sys.stderr.write(
        f"\r{label}: {total}/{total}\n" if terminal else f"{label}: done\n"
    )
    sys.stderr.flush()


def _no_bar(_label: str, items: Sequence[T]) -> Iterator[T]:
    yield from items


def load_good_images(good_dir: Path) -> list[tuple[Path, np.ndarray]]:
    """Load every PNG/JPEG in `good_dir` (sorted by name) as RGB uint8 HWC."""
    if not good_dir.is_dir():
        raise TrainingError(f"{good_dir} is not a folder; pass a folder of photos")
    paths = sorted(
        p
        for p in good_dir.iterdir()
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    )
    if not paths:
        hint = ""
        if (good_dir / "train" / "good").is_dir():
            hint = f" (an MVTec-layout folder: its good photos are in {good_dir}"
            hint += "/train/good)"
        raise TrainingError(
            f"no PNG or JPEG photos in {good_dir}{hint}; put at least 2 photos "
            "of good (defect-free) parts there"
        )
    images = [(path, _load_checked(path)) for path in paths]
    if len(images) < 2:
        raise TrainingError(
            f"only 1 photo in {good_dir}; at least 2 are needed because part of "
            "them is held out to calibrate the threshold"
        )
    return images


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    # One thread keeps float reductions in a fixed order: same seed, same bytes.
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )


def extract_patches(
    session: ort.InferenceSession,
    images: Sequence[np.ndarray],
    bar: Bar = _no_bar,
) -> np.ndarray:
    """Run the feature graph; returns patch features [n_images * cells, D]
    as the graph's float32 (sums over them are taken in float64)."""
    rows: np.ndarray | None = None
    for i, image in enumerate(bar("features", images)):
        (feats,) = session.run(["features"], {"image": image})
        cells = feats[0].reshape(feats.shape[1], -1).T
        if rows is None:
            # Filled in place: a list of per-photo arrays joined at the end
            # would hold every feature twice at the peak.
            rows = np.empty((len(images) * len(cells), cells.shape[1]), np.float32)
        rows[i * len(cells) : (i + 1) * len(cells)] = cells
    assert rows is not None, "extract_patches needs at least one image"
    return rows


_GRAM_CHUNK = 65_536


def fit_projection(patches: np.ndarray, max_dims: int) -> tuple[np.ndarray, np.ndarray]:
    """Standardise each channel, then project on the leading principal axes.

    Returns (weight [d, D], bias [d]) so that z = weight @ f + bias.
    """
    mean = patches.mean(axis=0, dtype=np.float64)
    # The centred Gram matrix in float64, a chunk of rows at a time: a full
    # float64 copy of the patches would be 0.8 GB per 287 photos at 344
    # channels.
    gram = np.zeros((patches.shape[1], patches.shape[1]))
    for start in range(0, len(patches), _GRAM_CHUNK):
        centred = patches[start : start + _GRAM_CHUNK].astype(np.float64) - mean
        gram += centred.T @ centred
    std = np.sqrt(np.diag(gram) / len(patches))
    # Channels that never vary (e.g. colour on grey parts) would divide by ~0.
    std = np.where(std > 1e-6, std, 1.0)
    cov = gram / np.outer(std, std) / len(patches)
    eigvals, eigvecs = np.linalg.eigh(cov)
    order = np.argsort(eigvals)[::-1][:max_dims]
    axes = eigvecs[:, order].T
    # eigh's sign per vector is arbitrary; fix it so the model is reproducible.
    signs = np.sign(axes[np.arange(len(axes)), np.abs(axes).argmax(axis=1)])
    axes *= signs[:, None]
    weight = axes / std
    bias = -weight @ mean
    return weight, bias


def greedy_coreset(
    points: np.ndarray,
    size: int,
    rng: np.random.Generator,
    bar: Bar = _no_bar,
) -> np.ndarray:
    """Indices of a k-center greedy coreset: each pick is the point farthest
    from all picks so far, so rare-but-normal patches are kept."""
    count = len(points)
    if size >= count:
        return np.arange(count)
    chosen = np.empty(size, dtype=np.int64)
    chosen[0] = rng.integers(count)
    nearest = ((points - points[chosen[0]]) ** 2).sum(axis=1)
    for i in bar("coreset", range(1, size)):
        pick = int(np.argmax(nearest))
        chosen[i] = pick
        np.minimum(nearest, ((points - points[pick]) ** 2).sum(axis=1), out=nearest)
    return chosen


def _check_args(name: str, kind: str, version: str, cores: int) -> None:
    problem = check_component_name(name)
    if problem is not None:
        raise TrainingError(problem.replace("model_component", "component name"))
    if kind not in KINDS:
        raise TrainingError(f"kind {kind!r} is invalid; use one of {', '.join(KINDS)}")
    if not _VERSION_RE.match(version):
        raise TrainingError(f"version {version!r} is invalid; use MAJOR.MINOR.PATCH")
    if cores < 1:
        raise TrainingError(f"cores must be at least 1, got {cores}")


def _check_size(input_size: tuple[int, int], recipe: Recipe) -> None:
    """Sides from MIN_SIDE to MAX_SIDE, in whole covariance blocks; and a
    known resize (checked here, before any photo is loaded)."""
    if recipe.resample is not None and recipe.resample not in graph.RESAMPLERS:
        raise TrainingError(
            f"resample {recipe.resample!r} is invalid; use one of "
            f"{', '.join(graph.RESAMPLERS)}, or None for the backbone's default"
        )
    cell = graph.GRID_STRIDE * recipe.block
    if len(input_size) != 2 or any(
        side < MIN_SIDE or side > MAX_SIDE or side % cell for side in input_size
    ):
        blocks = (
            f" (covariance blocks of {recipe.block}x{recipe.block} cells of "
            f"{graph.GRID_STRIDE} pixels)"
            if recipe.block > 1
            else f" ({graph.GRID_STRIDE}-pixel feature cells)"
        )
        raise TrainingError(
            f"input_size {tuple(input_size)} is invalid for the {recipe.backbone} "
            f"{recipe.method} recipe; width and height must be multiples of "
            f"{cell}{blocks}, from {max(MIN_SIDE, cell)} to {MAX_SIDE // cell * cell}"
        )


@dataclass(frozen=True)
class Recipe:
    """Settings of one training recipe; the same for every data set."""

    backbone: str
    # "gaussian": a Gaussian per feature cell (PaDiM-style); "patchcore": a
    # nearest-neighbour memory bank shared by all cells.
    method: str
    max_dims: int
    bank_size: int
    # Cells per side that share one covariance (gaussian only): more samples
    # per estimate, a smaller file and a faster graph. At 200 dims the
    # whitening MatMul took 0.56 ms with 4x4 blocks against 3.0 ms with
    # 2x2, whose 41 MB of factors do not stay in cache.
    block: int = 1
    # Threshold = margin x the largest held-out good value (no --defects);
    # None: 1 + 1/held-out photos, wide for a few photos and close to 1 for
    # many, where the largest value is itself a high quantile of good parts.
    margin: float | None = CALIBRATION_MARGIN
    # The largest share of held-out photos that may be left out of the
    # threshold as outlying (see `outlying`); 0 keeps them all.
    outlier_share: float = MAX_OUTLYING_SHARE
    # Pretrained backbones: the strides of the stages whose outputs are the
    # patch features (see trainer.backbones).
    strides: tuple[int, ...] = DEFAULT_STRIDES
    # gaussian only: the leading strides that feed a second, fine Gaussian
    # (its own projection to `local_dims`); the pixel map becomes the
    # geometric mean of both maps, the image score stays the full model's.
    local_strides: tuple[int, ...] | None = None
    local_dims: int = 100
    # How photos are resized to the working size: "linear" or "cubic";
    # None is the feature stage's default (trainer.graph._stage).
    resample: str | None = None


def _feature_graph(
    backbone: str,
    input_size: tuple[int, int],
    strides: tuple[int, ...] = DEFAULT_STRIDES,
) -> onnx.GraphProto | None:
    """The exported pretrained feature stage, or None for the fixed filters."""
    if backbone == "fixed":
        return None
    try:
        # Imported on demand: serving and the fixed recipe must work without
        # torch, which trainer.backbones needs.
        backbones = importlib.import_module("trainer.backbones")
    except ImportError as exc:
        raise TrainingError(
            f"the {backbone!r} backbone needs PyTorch ({exc}); install the training "
            "extra with: pip install -e '.[train]', or train with --backbone fixed"
        ) from exc
    try:
        exported: onnx.GraphProto = backbones.export_features(
            input_size, backbone=backbone, strides=strides
        )
    except backbones.BackboneUnavailableError as exc:
        raise TrainingError(str(exc)) from exc
    return exported


def _taps(backbone: str, strides: tuple[int, ...]) -> tuple[int, ...]:
    backbones = importlib.import_module("trainer.backbones")
    taps: tuple[int, ...] = backbones.feature_spec(backbone, strides).taps
    return taps


def build_component(
    good_dir: Path,
    out_dir: Path,
    *,
    name: str,
    kind: str = "segmentation",
    version: str = "1.0.0",
    cores: int = 1,
    seed: int = 0,
    input_size: tuple[int, int] = (256, 256),
    bank_size: int | None = None,
    backbone: str = "lite0",
    method: str | None = None,
    defects_dir: Path | None = None,
    description: str | None = None,
    progress: Progress | None = None,
    overwrite: bool = False,
    recipe: Recipe | None = None,
) -> Path:
    """Fit a component from the good photos in `good_dir`.

    `backbone` is "lite0", "lite1" or "lite2" (ImageNet-pretrained
    EfficientNet-Lite, needs torch to train) or "fixed" (the filter bank,
    numpy only). `method` is
    "gaussian" (a Gaussian per cell: parts in a fixed pose; lite0's default)
    or "patchcore" (a memory bank shared by all cells: textures and parts
    in any position; fixed's default). `defects_dir`,
    an MVTec-layout folder, calibrates the thresholds on real defects and
    labels each defect kind in the mask. `recipe` replaces the backbone's
    default settings (the benchmark compares recipes this way).

    Writes `out_dir/name/{manifest.json,model.onnx}` and returns that folder.
    Raises TrainingError for unusable inputs, and when the component exists
    already unless ``overwrite``: it may be one a running agent serves.
    """
    say = progress or _quiet
    bar = _bar if progress is not None else _no_bar
    good_dir, out_dir = Path(good_dir), Path(out_dir)
    input_size = (int(input_size[0]), int(input_size[1]))
    _check_args(name, kind, version, cores)
    if recipe is None:
        recipe = _recipe(backbone, method, bank_size)
    backbone = recipe.backbone
    _check_size(input_size, recipe)
    if (out_dir / name).exists() and not overwrite:
        raise TrainingError(
            f"{out_dir / name} exists already; pick another name, or replace it "
            "with --force (an agent serving it keeps its copy until the model is "
            "restarted)"
        )
    rng = np.random.default_rng(seed)

    loaded = load_good_images(good_dir)
    defects = load_defects(Path(defects_dir)) if defects_dir is not None else []
    say(f"loaded {len(loaded)} good photos from {good_dir}")
    order = rng.permutation(len(loaded))
    n_hold = max(1, round(HOLDOUT_FRACTION * len(loaded)))
    held = [loaded[i][1] for i in order[:n_hold]]
    train = [loaded[i][1] for i in order[n_hold:]]
    say(f"split: {len(train)} to fit the model, {n_hold} held out for calibration")
    if n_hold < FEW_HELD_OUT and not defects:
        say(
            f"warning: only {n_hold} good photo(s) held out to set the threshold, "
            f"so it will be loose and defects may pass; give at least "
            f"{round(FEW_HELD_OUT / HOLDOUT_FRACTION)} good photos, or calibrate "
            "on real defects with --defects"
        )

    feature_graph = _feature_graph(backbone, input_size, recipe.strides)
    features = _session(
        graph.build_feature_model(
            input_size, seed, feature_graph, resample=recipe.resample
        )
    )
    provisional = _fit_scoring(
        features=features,
        train=train,
        recipe=recipe,
        input_size=input_size,
        rng=rng,
        say=say,
        bar=bar,
    )
    scoring, rule, labels = _calibrate(
        provisional=provisional,
        recipe=recipe,
        features=features,
        feature_graph=feature_graph,
        held=held,
        held_names=[loaded[i][0].name for i in order[:n_hold]],
        defects=defects,
        input_size=input_size,
        seed=seed,
        say=say,
        bar=bar,
    )
    if isinstance(scoring, graph.GaussianScoring):
        scoring = _refit_gaussians(
            scoring, features, [*train, *held], recipe, input_size, bar=bar
        )
        say(f"Gaussians refitted on all {len(loaded)} photos")
    say(
        f"calibrated ({rule}): image threshold {scoring.image_threshold:.4f}, "
        f"pixel threshold {scoring.pixel_threshold:.4f}"
    )

    model = graph.build_component_model(
        input_size,
        seed,
        scoring,
        segmentation=kind == "segmentation",
        backbone=feature_graph,
        resample=recipe.resample,
    )
    method = (
        f"Fixed DCT/random filter bank at {graph.N_SCALES} scales"
        if backbone == "fixed"
        else f"ImageNet EfficientNet-{backbone.capitalize()} features (blocks "
        f"{', '.join(map(str, _taps(backbone, recipe.strides)))})"
    )
    text = description or f"Trained on good photos from '{good_dir.name}'."
    refit = ""
    if isinstance(scoring, graph.GaussianScoring):
        refit = " (the Gaussians then refitted on all photos)"
        model_text = (
            f"a Gaussian per feature cell (covariance per {scoring.block}x"
            f"{scoring.block} cells), Mahalanobis distance"
        )
        if scoring.local is not None:
            model_text += (
                f"; the pixel map is its geometric mean with a second Gaussian "
                f"on the first {scoring.local.channels} channels "
                f"({scoring.local.proj_w.shape[0]} dims)"
            )
    else:
        model_text = f"{len(scoring.bank)}-patch nearest-neighbour memory bank"
    text += (
        f" Fitted on {len(train)} photos, {n_hold} held out for "
        f"calibration{refit}, seed {seed}. {method}, projected to "
        f"{scoring.proj_w.shape[0]} dims, {model_text}. Raw image threshold "
        f"{scoring.image_threshold:.5g}, pixel threshold "
        f"{scoring.pixel_threshold:.5g} ({rule}); score = s/(s+t)."
    )
    manifest = build_manifest(
        name=name,
        version=version,
        kind=kind,
        cores=cores,
        input_size=input_size,
        description=text,
        labels=labels,
    )
    component = out_dir / name
    component.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, component / "model.onnx")
    (component / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    size_kb = (component / "model.onnx").stat().st_size / 1024
    say(f"wrote {component} (model.onnx {size_kb:.0f} KiB)")
    return component


def _recipe(backbone: str, method: str | None, bank_size: int | None) -> Recipe:
    if backbone not in BACKBONES:
        raise TrainingError(
            f"backbone {backbone!r} is invalid; use one of {', '.join(BACKBONES)}"
        )
    if method is not None and method not in METHODS:
        raise TrainingError(
            f"method {method!r} is invalid; use one of {', '.join(METHODS)}"
        )
    default = RECIPES[backbone, method or DEFAULT_METHOD[backbone]]
    size = default.bank_size if bank_size is None else bank_size
    if size < 1 and default.method == "patchcore":
        raise TrainingError(f"bank_size must be at least 1, got {size}")
    return dataclasses.replace(default, bank_size=size)


def _fit_scoring(
    *,
    features: ort.InferenceSession,
    train: Sequence[np.ndarray],
    recipe: Recipe,
    input_size: tuple[int, int],
    rng: np.random.Generator,
    say: Progress,
    bar: Bar,
) -> graph.AnyScoring:
    """Projection and model of normal cells from the training photos, with
    provisional thresholds of 1."""
    patches = extract_patches(features, train, bar)
    say(f"extracted {len(patches)} patch features of {patches.shape[1]} channels")
    weight, bias = fit_projection(patches, min(recipe.max_dims, patches.shape[1]))
    if recipe.method == "gaussian":
        grid = (input_size[1] // graph.GRID_STRIDE, input_size[0] // graph.GRID_STRIDE)
        projected = (patches @ weight.T + bias).reshape(len(train), *grid, -1)
        means, whiten = fit_gaussians(projected, recipe.block)
        say(
            f"Gaussians: {grid[0]}x{grid[1]} cells of {projected.shape[-1]} dims, "
            f"covariance shared by {recipe.block}x{recipe.block} cells"
        )
        local = None
        if recipe.local_strides is not None:
            channels = _local_channels(recipe)
            fine = patches[:, :channels]
            local_w, local_b = fit_projection(fine, min(recipe.local_dims, channels))
            local_means, local_whiten = fit_gaussians(
                (fine @ local_w.T + local_b).reshape(len(train), *grid, -1),
                recipe.block,
            )
            local = graph.LocalGaussian(
                channels, local_w, local_b, local_means, local_whiten
            )
            say(
                f"fine Gaussians: the first {channels} channels, "
                f"{local_w.shape[0]} dims"
            )
        return graph.GaussianScoring(
            weight, bias, means, whiten, recipe.block, 1.0, 1.0, local=local
        )
    if len(patches) > MAX_BANK_CANDIDATES:
        patches = patches[rng.choice(len(patches), MAX_BANK_CANDIDATES, replace=False)]
    projected = (patches @ weight.T + bias).astype(np.float32)
    bank = projected[greedy_coreset(projected, recipe.bank_size, rng, bar)]
    say(f"memory bank: {len(bank)} patches of {bank.shape[1]} dims (greedy coreset)")
    return graph.Scoring(weight, bias, bank, 1.0, 1.0)


def _refit_gaussians(
    scoring: graph.GaussianScoring,
    features: ort.InferenceSession,
    photos: Sequence[np.ndarray],
    recipe: Recipe,
    input_size: tuple[int, int],
    *,
    bar: Bar,
) -> graph.GaussianScoring:
    """The Gaussians refitted on every photo, held-out ones too, with the
    projection and thresholds kept.

    On magnetic tiles the 25% more photos per estimate gained 0.005 image
    AUROC on both defect kinds; a new good photo then scores lower than
    under the model the thresholds were calibrated on, so the false-alarm
    rate can only fall.
    """
    patches = extract_patches(features, photos, bar)
    grid = (input_size[1] // graph.GRID_STRIDE, input_size[0] // graph.GRID_STRIDE)
    projected = (patches @ scoring.proj_w.T + scoring.proj_b).reshape(
        len(photos), *grid, -1
    )
    means, whiten = fit_gaussians(projected, recipe.block)
    local = scoring.local
    if local is not None:
        fine = patches[:, : local.channels] @ local.proj_w.T + local.proj_b
        local_means, local_whiten = fit_gaussians(
            fine.reshape(len(photos), *grid, -1), recipe.block
        )
        local = dataclasses.replace(local, means=local_means, whiten=local_whiten)
    return dataclasses.replace(scoring, means=means, whiten=whiten, local=local)


def _local_channels(recipe: Recipe) -> int:
    """Feature channels of the recipe's `local_strides`, which must be its
    leading strides (the features are concatenated fine to coarse)."""
    local = tuple(sorted(set(recipe.local_strides or ())))
    if not local or local != tuple(sorted(recipe.strides))[: len(local)]:
        raise TrainingError(
            f"local_strides {recipe.local_strides} must be the leading strides "
            f"of {recipe.strides}"
        )
    backbones = importlib.import_module("trainer.backbones")
    channels: int = backbones.feature_spec(recipe.backbone, local).dims
    return channels


def fit_gaussians(projected: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-cell means [d, h, w] and per-block whitening factors [blocks, d, d].

    `projected` is [photos, h, w, d]. Each block of `block` x `block` cells
    pools its centred samples into one covariance C, shrunk towards the
    identity (see GAUSSIAN_SHRINK); the factor is the Cholesky L of C^-1,
    so x^T C^-1 x = ||x^T L||^2.
    """
    n, h, w, d = projected.shape
    means = projected.mean(axis=0)
    centred = projected - means
    k = block
    samples = n * k * k
    # One block's samples at a time (a BLAS product each), so no regrouped
    # copy of every centred feature is made.
    cov = np.empty(((h // k) * (w // k), d, d))
    for index, (row, col) in enumerate(np.ndindex(h // k, w // k)):
        cells = centred[:, row * k : (row + 1) * k, col * k : (col + 1) * k]
        cells = cells.reshape(samples, d)
        cov[index] = cells.T @ cells / max(1, samples - 1)
    scale = np.trace(cov.mean(axis=0)) / d
    shrink = GAUSSIAN_SHRINK + d / samples
    cov += (shrink * max(scale, _MIN_THRESHOLD)) * np.eye(d)
    whiten = np.linalg.cholesky(np.linalg.inv(cov))
    return means.transpose(2, 0, 1).astype(np.float32), whiten.astype(np.float32)


def _calibrate(
    *,
    provisional: graph.AnyScoring,
    recipe: Recipe,
    features: ort.InferenceSession,
    feature_graph: onnx.GraphProto | None,
    held: Sequence[np.ndarray],
    held_names: Sequence[str],
    defects: Sequence[Defect],
    input_size: tuple[int, int],
    seed: int,
    say: Progress,
    bar: Bar,
) -> tuple[graph.AnyScoring, str, list[dict[str, str]]]:
    """Thresholds (and defect prototypes) from the held-out photos and the
    defects; returns the final scoring, the rule used, and the labels.

    Held-out photos that score far above the others (`outlying`) are left
    out of both thresholds, and named in a warning.
    """
    scorer = _session(
        graph.build_component_model(
            input_size,
            seed,
            provisional,
            segmentation=False,
            raw_outputs=True,
            backbone=feature_graph,
            resample=recipe.resample,
        )
    )
    all_raw = [_raw(scorer, image) for image in bar("calibrating", held)]
    _check_finite(all_raw, held_names)
    far = outlying([score for score, _ in all_raw], recipe.outlier_share)
    held_raw = [raw for raw, out in zip(all_raw, far, strict=True) if not out]
    left_out = ""
    if far.any():
        left_out = f", {int(far.sum())} outlying left out"
        say(_outlier_warning(all_raw, held_names, far))
    if not defects:
        margin = recipe.margin or 1.0 + 1.0 / len(held_raw)
        image_t = calibrated_threshold([s for s, _ in held_raw], margin)
        pixel_t = calibrated_threshold([float(m.max()) for _, m in held_raw], margin)
        rule = f"{margin:.3g} x max of {len(held_raw)} held-out good values{left_out}"
        scoring = dataclasses.replace(
            provisional, image_threshold=image_t, pixel_threshold=pixel_t
        )
        return scoring, rule, [dict(ANOMALY_LABEL)]

    defect_raw = [_raw(scorer, d.image) for d in bar("defects", defects)]
    image_t, pixel_t = defect_thresholds(held_raw, defect_raw, defects, input_size)

    def projected(images: Sequence[np.ndarray]) -> list[np.ndarray]:
        return [
            extract_patches(features, [image]) @ provisional.proj_w.T
            + provisional.proj_b
            for image in images
        ]

    defect_cells = projected([d.image for d in defects])
    prototypes = defect_prototypes(defect_cells, defects, input_size)
    kept = [image for image, out in zip(held, far, strict=True) if not out]

    def cell_labels(
        cells: Sequence[np.ndarray], raw: Sequence[tuple[float, np.ndarray]]
    ) -> list[np.ndarray]:
        return [
            peak_labels(nearest_prototype(rows, prototypes), raw_map)
            for rows, (_, raw_map) in zip(cells, raw, strict=True)
        ]

    per_label = label_thresholds(
        held_raw,
        cell_labels(projected(kept), held_raw),
        defect_raw,
        cell_labels(defect_cells, defect_raw),
        defects=defects,
        input_size=input_size,
        count=len(prototypes),
        fallback=pixel_t,
    )
    floor = max(score for score, _ in held_raw)
    at_floor = (
        " (image: the largest held-out good score, its floor)"
        if image_t == floor
        else ""
    )
    rule = (
        f"best F1 on {len(held_raw)} held-out good and {len(defects)} defective "
        f"photos{left_out}{at_floor}; pixel threshold per label: "
        + ", ".join(
            f"{label['name']} {t:.4g}"
            for label, t in zip(defect_labels(defects), per_label, strict=True)
        )
        + " (each label's cells are normalised by its own, so 0.5 is the cut)"
    )
    scoring = dataclasses.replace(
        provisional,
        image_threshold=image_t,
        pixel_threshold=pixel_t,
        prototypes=prototypes,
        label_thresholds=per_label,
    )
    return scoring, rule, defect_labels(defects)


def outlying(
    scores: Sequence[float], max_share: float = MAX_OUTLYING_SHARE
) -> np.ndarray:
    """Which held-out scores stand far above the others: beyond Tukey's upper
    fence of the log scores (logs, as distances are skewed to the right) and
    more than OUTLIER_GAP times every score not marked.

    Only the largest `max_share` of the scores can be marked, and none when
    there are fewer than MIN_HELD_FOR_FENCE or the rest are all about 0.
    The scores must be finite.
    """
    if not 0.0 <= max_share < 0.5:
        raise ValueError(f"max_share must be in [0, 0.5), got {max_share}")
    values = np.asarray(scores, dtype=np.float64)
    far = np.zeros(len(values), dtype=bool)
    if len(values) < MIN_HELD_FOR_FENCE:
        return far
    logs = np.log(np.maximum(values, _MIN_THRESHOLD))
    q1, q3 = np.percentile(logs, [25, 75])
    fence = q3 + OUTLIER_FENCE * (q3 - q1)
    largest_first = np.argsort(-values, kind="stable")
    ordered = values[largest_first]
    # The largest ones past the fence; then the smallest of those must clear
    # the gap over the largest one kept, else it is kept too.
    count = int(np.sum(logs[largest_first[: int(max_share * len(values))]] > fence))
    while count and not (
        ordered[count] > _MIN_THRESHOLD
        and ordered[count - 1] > OUTLIER_GAP * ordered[count]
    ):
        count -= 1
    far[largest_first[:count]] = True
    return far


def _check_finite(
    raw: Sequence[tuple[float, np.ndarray]], names: Sequence[str]
) -> None:
    broken = [
        name
        for (score, _), name in zip(raw, names, strict=True)
        if not math.isfinite(score)
    ]
    if broken:
        raise TrainingError(
            f"held-out photo(s) {', '.join(broken)} got a score that is not a "
            "number: their features are degenerate (for example a photo of one "
            "flat colour); remove them or train with photos of real parts"
        )


def _outlier_warning(
    raw: Sequence[tuple[float, np.ndarray]], names: Sequence[str], far: np.ndarray
) -> str:
    scores = [score for score, _ in raw]
    listed = sorted(
        (
            (score, name)
            for score, name, out in zip(scores, names, far, strict=True)
            if out
        ),
        key=lambda item: (-item[0], item[1]),
    )
    rest = max(score for score, out in zip(scores, far, strict=True) if not out)
    if len(listed) == 1:
        head = f"1 of the {len(raw)} held-out good photos scores far above the "
        head += "others and is left out of the threshold: "
        them = "it"
    else:
        head = f"{len(listed)} of the {len(raw)} held-out good photos score far "
        head += "above the others and are left out of the threshold: "
        them = "them"
    return (
        "warning: "
        + head
        + ", ".join(f"{name} ({score:.4g})" for score, name in listed)
        + f"; the others score at most {rest:.4g}. Look at {them}: a defective "
        "part among the good photos, or a condition (lighting, position) too rare "
        f"in the photos; add more photos like {them}, or the model will flag such "
        "parts"
    )


def _raw(session: ort.InferenceSession, image: np.ndarray) -> tuple[float, np.ndarray]:
    raw_score, raw_map = session.run(["raw_score", "raw_map"], {"image": image})
    return float(raw_score[0]), np.asarray(raw_map[0, 0], dtype=np.float64)


METHODS = ("gaussian", "patchcore")
DEFAULT_METHOD = {**dict.fromkeys(PRETRAINED, "gaussian"), "fixed": "patchcore"}
# Lite1 and Lite2 take Lite0's settings unchanged: they were compared, not
# tuned (docs/model-quality.md).
RECIPES = {
    **{
        (name, "gaussian"): Recipe(
            name,
            "gaussian",
            max_dims=200,
            bank_size=0,
            block=4,
            margin=None,
            local_strides=(8, 16),
        )
        for name in PRETRAINED
    },
    **{
        (name, "patchcore"): Recipe(
            name, "patchcore", max_dims=152, bank_size=1024, margin=None
        )
        for name in PRETRAINED
    },
    ("fixed", "gaussian"): Recipe(
        "fixed", "gaussian", max_dims=MAX_PROJECTED_DIMS, bank_size=0, block=2
    ),
    ("fixed", "patchcore"): Recipe(
        "fixed", "patchcore", max_dims=MAX_PROJECTED_DIMS, bank_size=DEFAULT_BANK_SIZE
    ),
}
# Covariance shrinkage towards the identity, as a fraction of the mean
# variance, plus dims/samples: keeps the inverse stable, and with few
# photos turns the distance smoothly towards a plain Euclidean one.
GAUSSIAN_SHRINK = 0.01


@dataclass(frozen=True)
class Defect:
    """A defective photo with its ground-truth mask (true = defect)."""

    kind: str
    path: Path
    image: np.ndarray
    mask: np.ndarray


def _load_checked(path: Path) -> np.ndarray:
    try:
        rgb = load_rgb(path)
    except ImageError as exc:
        raise TrainingError(
            f"{exc}; remove it or replace it with a valid PNG/JPEG"
        ) from exc
    height, width = rgb.shape[:2]
    if min(height, width) < MIN_SIDE:
        raise TrainingError(
            f"{path} is {width}x{height}; photos must be at least "
            f"{MIN_SIDE}x{MIN_SIDE} pixels"
        )
    return rgb


_EMPTY_MASKS = (
    "the masks of defect kind(s) {} are empty; each defective photo needs a "
    "mask with the defect in white"
)


def load_defects(root: Path) -> list[Defect]:
    """Defective photos of an MVTec-layout folder: `test/<kind>/*` with masks
    in `ground_truth/<kind>/<stem>.png` or `<stem>_mask.png`."""
    test = root / "test"
    if not root.is_dir():
        raise TrainingError(
            f"--defects folder {root} does not exist; give an MVTec-layout "
            "folder (test/<kind>/*.png and ground_truth/<kind>/*.png)"
        )
    if not test.is_dir():
        raise TrainingError(
            f"{root} has no test/ folder; --defects takes an MVTec-layout folder "
            "(test/<kind>/*.png and ground_truth/<kind>/*.png)"
        )
    kinds = sorted(p.name for p in test.iterdir() if p.is_dir() and p.name != "good")
    if len(kinds) > len(LABEL_COLORS):
        raise TrainingError(
            f"{len(kinds)} defect kinds in {test}; at most {len(LABEL_COLORS)} "
            "are supported"
        )
    defects = []
    for kind in kinds:
        paths = sorted(
            p
            for p in (test / kind).iterdir()
            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
        )
        if not paths:
            raise TrainingError(
                f"defect kind folder {test / kind} holds no PNG or JPEG photos; "
                "add this kind's defective photos, or remove the folder"
            )
        for path in paths:
            image = _load_checked(path)
            masks = root / "ground_truth" / kind
            candidates = [masks / f"{path.stem}.png", masks / f"{path.stem}_mask.png"]
            found = next((m for m in candidates if m.is_file()), None)
            if found is None:
                raise TrainingError(
                    f"no mask for {path}; expected {candidates[0]} or {candidates[1]}"
                )
            with Image.open(found) as img:
                if img.size != image.shape[1::-1]:
                    raise TrainingError(
                        f"mask {found} is {img.size[0]}x{img.size[1]} but photo "
                        f"{path} is {image.shape[1]}x{image.shape[0]}; a mask "
                        "must have its photo's size"
                    )
                mask = np.asarray(img.convert("L")) > 127
            defects.append(Defect(kind, path, image, mask))
    if not defects:
        raise TrainingError(
            f"no defective photos under {test}/<kind>/; add at least one kind"
        )
    blank = sorted(
        {d.kind for d in defects} - {d.kind for d in defects if d.mask.any()}
    )
    if blank:
        raise TrainingError(_EMPTY_MASKS.format(", ".join(blank)))
    return defects


def defect_labels(defects: Sequence[Defect]) -> list[dict[str, str]]:
    """One manifest label per defect kind, in sorted-name order."""
    kinds = sorted({d.kind for d in defects})
    return [{"name": k, "color": LABEL_COLORS[i]} for i, k in enumerate(kinds)]


def _grid_mask(mask: np.ndarray, input_size: tuple[int, int]) -> np.ndarray:
    """Fraction of each feature cell covered by the defect mask."""
    width, height = input_size
    grid = (width // graph.GRID_STRIDE, height // graph.GRID_STRIDE)
    as_float = Image.fromarray(mask.astype(np.float32))
    return np.asarray(as_float.resize(grid, Image.Resampling.BOX), dtype=np.float64)


def best_f1_threshold(good: np.ndarray, bad: np.ndarray) -> float:
    """Raw threshold with the best F1 for flagging `bad` among `good + bad`.

    Thresholds are taken halfway between neighbouring values, so the chosen
    one sits in the middle of the gap it opens, not on a sample.
    """
    values = np.unique(np.concatenate([good, bad]))
    if len(values) > 2048:
        values = np.unique(np.quantile(values, np.linspace(0, 1, 2048)))
    cuts = (values[1:] + values[:-1]) / 2 if len(values) > 1 else values
    best, best_f1 = float(cuts[-1]), -1.0
    for cut in cuts:
        tp = float(np.sum(bad >= cut))
        fp = float(np.sum(good >= cut))
        f1 = 2 * tp / (2 * tp + fp + (len(bad) - tp))
        if f1 > best_f1:
            best, best_f1 = float(cut), f1
    return best


def defect_thresholds(
    held_raw: Sequence[tuple[float, np.ndarray]],
    defect_raw: Sequence[tuple[float, np.ndarray]],
    defects: Sequence[Defect],
    input_size: tuple[int, int],
) -> tuple[float, float]:
    """Image and pixel raw thresholds with the best F1 on the defects given,
    never below the largest held-out good value (no false alarm there)."""
    good_scores = np.array([score for score, _ in held_raw])
    bad_scores = np.array([score for score, _ in defect_raw])
    image_t = max(best_f1_threshold(good_scores, bad_scores), good_scores.max())

    good_px = [m.ravel() for _, m in held_raw]
    bad_px = []
    for (_, raw_map), defect in zip(defect_raw, defects, strict=True):
        covered = _grid_mask(defect.mask, input_size).ravel() >= 0.5
        good_px.append(raw_map.ravel()[~covered])
        bad_px.append(raw_map.ravel()[covered])
    pixel_t = best_f1_threshold(np.concatenate(good_px), np.concatenate(bad_px))
    if not (image_t > _MIN_THRESHOLD and pixel_t > _MIN_THRESHOLD):
        raise TrainingError("the defective photos score like the good ones")
    return float(image_t), float(pixel_t)


def nearest_prototype(cells: np.ndarray, prototypes: np.ndarray) -> np.ndarray:
    """Index of the nearest prototype [K, d] for each projected cell [N, d],
    as the component graph picks it (squared distance, first on ties)."""
    squared = -2.0 * cells @ prototypes.T + (prototypes**2).sum(axis=1)
    nearest: np.ndarray = np.argmin(squared, axis=1)
    return nearest


def peak_labels(nearest: np.ndarray, raw_map: np.ndarray) -> np.ndarray:
    """Each cell's label as the graph gives it: the nearest prototype
    (`nearest`, [h*w]) of the strongest cell of `raw_map` [h, w] within
    the graph.LABEL_WINDOW cells around it (the first, row by row, on a
    tie)."""
    height, width = raw_map.shape
    radius = graph.LABEL_WINDOW // 2
    labels = np.empty(height * width, dtype=nearest.dtype)
    for row in range(height):
        top, bottom = max(0, row - radius), min(height, row + radius + 1)
        for col in range(width):
            left, right = max(0, col - radius), min(width, col + radius + 1)
            window = raw_map[top:bottom, left:right]
            r, c = np.unravel_index(int(np.argmax(window)), window.shape)
            labels[row * width + col] = nearest[(top + r) * width + left + c]
    return labels


def label_thresholds(
    held_raw: Sequence[tuple[float, np.ndarray]],
    held_labels: Sequence[np.ndarray],
    defect_raw: Sequence[tuple[float, np.ndarray]],
    defect_cell_labels: Sequence[np.ndarray],
    *,
    defects: Sequence[Defect],
    input_size: tuple[int, int],
    count: int,
    fallback: float,
) -> np.ndarray:
    """A raw pixel threshold for each of `count` labels. For label k it is
    the best F1 of the defect cells among the cells that the graph gives
    label k (the index of the nearest prototype), against the good cells
    among them (held-out photos, and the defect photos outside their
    masks).

    One threshold for all labels let a kind whose map runs lower than
    another's go unmarked: flagged by the image score, with an empty mask.
    A label's threshold is never above `fallback` (the threshold over all
    labels), and a label that no defect cell takes keeps it: where few of
    a label's cells are defects its own best F1 sits high. On magnetic
    tiles, blowholes (tiny) against breaks, it was 33.1 against 25.6 over
    all, and the masks of 53 of the 76 blowhole photos marked before no
    longer touched the defect.
    """
    good: list[list[np.ndarray]] = [[] for _ in range(count)]
    bad: list[list[np.ndarray]] = [[] for _ in range(count)]
    for (_, raw_map), labels in zip(held_raw, held_labels, strict=True):
        for k in range(count):
            good[k].append(raw_map.ravel()[labels == k])
    for (_, raw_map), labels, defect in zip(
        defect_raw, defect_cell_labels, defects, strict=True
    ):
        # Defect cells as the prototypes take them.
        covered, clear = _defect_cells(defect.mask, input_size)
        values = raw_map.ravel()
        for k in range(count):
            good[k].append(values[clear & (labels == k)])
            bad[k].append(values[covered & (labels == k)])
    thresholds = np.full(count, fallback, dtype=np.float64)
    for k in range(count):
        positives = np.concatenate(bad[k]) if bad[k] else np.empty(0)
        if positives.size:
            negatives = np.concatenate(good[k])
            own = best_f1_threshold(negatives, positives)
            thresholds[k] = max(min(own, fallback), _MIN_THRESHOLD)
    return thresholds


def _defect_cells(
    mask: np.ndarray, input_size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Which feature cells a defect mask makes defective, and which it
    leaves clear ([h*w] each). A cell at least half covered is defective,
    and a defect smaller than half a cell still marks its best-covered
    cell; cells the mask touches less are neither."""
    share = _grid_mask(mask, input_size).ravel()
    covered = share >= min(0.5, share.max()) if share.max() > 0 else share > 0
    return covered, share == 0


def defect_prototypes(
    cells: Sequence[np.ndarray],
    defects: Sequence[Defect],
    input_size: tuple[int, int],
) -> np.ndarray:
    """Mean projected feature of the defect cells of each kind, [K, d];
    `cells` holds each defect photo's projected cells [h*w, d]."""
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    for rows, defect in zip(cells, defects, strict=True):
        chosen, _ = _defect_cells(defect.mask, input_size)
        if not np.any(chosen):
            continue
        sums[defect.kind] = sums.get(defect.kind, 0) + rows[chosen].sum(axis=0)
        counts[defect.kind] = counts.get(defect.kind, 0) + int(np.sum(chosen))
    kinds = sorted({d.kind for d in defects})
    missing = [k for k in kinds if k not in counts]
    if missing:
        raise TrainingError(_EMPTY_MASKS.format(", ".join(missing)))
    return np.stack([sums[k] / counts[k] for k in kinds]).astype(np.float32)


_MIN_THRESHOLD = 1e-6


def calibrated_threshold(
    good_values: Sequence[float], margin: float = CALIBRATION_MARGIN
) -> float:
    """Raw threshold from held-out good values: margin x their maximum."""
    worst = max(good_values)
    threshold = margin * worst
    if not math.isfinite(threshold) or threshold <= _MIN_THRESHOLD:
        # Every held-out photo matched the memory bank exactly: the photos
        # are blank or copies, and any real part would score as a defect.
        raise TrainingError(
            "the held-out good photos are identical to the training ones "
            f"(largest distance {worst:.3g}); give photos that show the normal "
            "variation of good parts, not copies or blank images"
        )
    return threshold


def build_manifest(
    *,
    name: str,
    version: str,
    kind: str,
    cores: int,
    input_size: tuple[int, int],
    description: str,
    labels: Sequence[dict[str, str]] = (ANOMALY_LABEL,),
) -> dict[str, object]:
    """The manifest.json content for a component."""
    manifest: dict[str, object] = {
        "format_version": FORMAT_VERSION,
        "name": name,
        "version": version,
        "kind": kind,
        "model_arn": f"arn:edge-agent:model/{name}/{version}",
        "threshold": 0.5,
        "input_size": [input_size[0], input_size[1]],
    }
    if kind == "segmentation":
        manifest["labels"] = [dict(label) for label in labels]
    manifest["cores"] = cores
    manifest["description"] = description
    return manifest
