"""Fit a model component from a folder of good (defect-free) photos.

Steps: load and check the photos, split off a calibration hold-out, extract
fixed filter-bank features with the component's own feature graph, fit a
standardise+PCA projection, pick a greedy coreset of normal patches as the
memory bank, calibrate thresholds on the hold-out, then write the component.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from shared.component import check_component_name
from shared.images import ImageError, load_rgb
from trainer import graph

FORMAT_VERSION = 1
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg"})
MIN_SIDE = 64
HOLDOUT_FRACTION = 0.2
# The threshold sits this far above the worst held-out good score, so that
# good photos a little unlike the hold-out still pass.
CALIBRATION_MARGIN = 1.5
MAX_PROJECTED_DIMS = 24
DEFAULT_BANK_SIZE = 768
MAX_BANK_CANDIDATES = 100_000
ANOMALY_LABEL = {"name": "anomaly", "color": "#FF0000"}
KINDS = ("classification", "segmentation")
_VERSION_RE = re.compile(r"^\d+\.\d+\.\d+$")

Progress = Callable[[str], None]


class TrainingError(ValueError):
    """The inputs cannot produce a component; the message says what to fix."""


def _quiet(_message: str) -> None:
    pass


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
        raise TrainingError(
            f"no PNG or JPEG photos in {good_dir}; put at least 2 photos of good "
            "(defect-free) parts there"
        )
    images = []
    for path in paths:
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
        images.append((path, rgb))
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
    session: ort.InferenceSession, images: Sequence[np.ndarray]
) -> np.ndarray:
    """Run the feature graph; returns patch features [n_images * cells, D]."""
    rows = []
    for image in images:
        (feats,) = session.run(["features"], {"image": image})
        rows.append(feats[0].reshape(feats.shape[1], -1).T)
    return np.concatenate(rows).astype(np.float64)


def fit_projection(patches: np.ndarray, max_dims: int) -> tuple[np.ndarray, np.ndarray]:
    """Standardise each channel, then project on the leading principal axes.

    Returns (weight [d, D], bias [d]) so that z = weight @ f + bias.
    """
    mean = patches.mean(axis=0)
    std = patches.std(axis=0)
    # Channels that never vary (e.g. colour on grey parts) would divide by ~0.
    std = np.where(std > 1e-6, std, 1.0)
    standard = (patches - mean) / std
    cov = standard.T @ standard / len(standard)
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
    points: np.ndarray, size: int, rng: np.random.Generator
) -> np.ndarray:
    """Indices of a k-center greedy coreset: each pick is the point farthest
    from all picks so far, so rare-but-normal patches are kept."""
    count = len(points)
    if size >= count:
        return np.arange(count)
    chosen = np.empty(size, dtype=np.int64)
    chosen[0] = rng.integers(count)
    nearest = ((points - points[chosen[0]]) ** 2).sum(axis=1)
    for i in range(1, size):
        pick = int(np.argmax(nearest))
        chosen[i] = pick
        np.minimum(nearest, ((points - points[pick]) ** 2).sum(axis=1), out=nearest)
    return chosen


def _check_args(
    name: str, kind: str, version: str, cores: int, input_size: tuple[int, int]
) -> None:
    problem = check_component_name(name)
    if problem is not None:
        raise TrainingError(problem.replace("model_component", "component name"))
    if kind not in KINDS:
        raise TrainingError(f"kind {kind!r} is invalid; use one of {', '.join(KINDS)}")
    if not _VERSION_RE.match(version):
        raise TrainingError(f"version {version!r} is invalid; use MAJOR.MINOR.PATCH")
    if cores < 1:
        raise TrainingError(f"cores must be at least 1, got {cores}")
    if len(input_size) != 2 or any(
        side < MIN_SIDE or side % graph.GRID_STRIDE for side in input_size
    ):
        raise TrainingError(
            f"input_size {tuple(input_size)} is invalid; width and height must be "
            f"multiples of {graph.GRID_STRIDE} and at least {MIN_SIDE}"
        )


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
    bank_size: int = DEFAULT_BANK_SIZE,
    description: str | None = None,
    progress: Progress | None = None,
    overwrite: bool = False,
) -> Path:
    """Fit a component from the good photos in `good_dir`.

    Writes `out_dir/name/{manifest.json,model.onnx}` and returns that folder.
    Raises TrainingError for unusable inputs, and when the component exists
    already unless ``overwrite``: it may be one a running agent serves.
    """
    say = progress or _quiet
    good_dir, out_dir = Path(good_dir), Path(out_dir)
    input_size = (int(input_size[0]), int(input_size[1]))
    _check_args(name, kind, version, cores, input_size)
    if (out_dir / name).exists() and not overwrite:
        raise TrainingError(
            f"{out_dir / name} exists already; pick another name, or replace it "
            "with --force (stop the model first if an agent serves it)"
        )
    if bank_size < 1:
        raise TrainingError(f"bank_size must be at least 1, got {bank_size}")
    rng = np.random.default_rng(seed)

    loaded = load_good_images(good_dir)
    say(f"loaded {len(loaded)} good photos from {good_dir}")
    order = rng.permutation(len(loaded))
    n_hold = max(1, round(HOLDOUT_FRACTION * len(loaded)))
    held = [loaded[i][1] for i in order[:n_hold]]
    train = [loaded[i][1] for i in order[n_hold:]]
    say(f"split: {len(train)} for the memory bank, {n_hold} held out for calibration")

    features = _session(graph.build_feature_model(input_size, seed))
    patches = extract_patches(features, train)
    say(f"extracted {len(patches)} patch features of {patches.shape[1]} channels")

    weight, bias = fit_projection(patches, MAX_PROJECTED_DIMS)
    if len(patches) > MAX_BANK_CANDIDATES:
        patches = patches[rng.choice(len(patches), MAX_BANK_CANDIDATES, replace=False)]
    projected = (patches @ weight.T + bias).astype(np.float32)
    bank = projected[greedy_coreset(projected, bank_size, rng)]
    say(f"memory bank: {len(bank)} patches of {bank.shape[1]} dims (greedy coreset)")

    segmentation = kind == "segmentation"
    provisional = graph.Scoring(weight, bias, bank, 1.0, 1.0)
    scorer = _session(
        graph.build_component_model(
            input_size, seed, provisional, segmentation=segmentation, raw_outputs=True
        )
    )
    held_scores, held_pixels = [], []
    for image in held:
        raw_score, raw_map = scorer.run(["raw_score", "raw_map"], {"image": image})
        held_scores.append(float(raw_score[0]))
        held_pixels.append(float(raw_map.max()))
    image_threshold = calibrated_threshold(held_scores)
    pixel_threshold = calibrated_threshold(held_pixels)
    say(
        f"calibrated on {n_hold} held-out photos: max good score "
        f"{max(held_scores):.4f}, image threshold {image_threshold:.4f}, "
        f"pixel threshold {pixel_threshold:.4f}"
    )

    scoring = graph.Scoring(weight, bias, bank, image_threshold, pixel_threshold)
    model = graph.build_component_model(
        input_size, seed, scoring, segmentation=segmentation
    )
    component = out_dir / name
    component.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, component / "model.onnx")
    text = description or f"Trained on good photos from '{good_dir.name}'."
    text += (
        f" Memory bank from {len(train)} photos, {n_hold} held out for "
        f"calibration, seed {seed}. Fixed DCT/random filter bank at "
        f"{graph.N_SCALES} scales, {len(bank)}-patch nearest-neighbour memory "
        f"bank. Raw image threshold {image_threshold:.5g}, pixel threshold "
        f"{pixel_threshold:.5g} ({CALIBRATION_MARGIN} x max held-out good "
        "value); score = s/(s+t)."
    )
    manifest = build_manifest(
        name=name,
        version=version,
        kind=kind,
        cores=cores,
        input_size=input_size,
        description=text,
    )
    (component / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    size_kb = (component / "model.onnx").stat().st_size / 1024
    say(f"wrote {component} (model.onnx {size_kb:.0f} KiB)")
    return component


_MIN_THRESHOLD = 1e-6


def calibrated_threshold(good_values: Sequence[float]) -> float:
    """Raw threshold from held-out good values: margin x their maximum."""
    worst = max(good_values)
    threshold = CALIBRATION_MARGIN * worst
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
        manifest["labels"] = [dict(ANOMALY_LABEL)]
    manifest["cores"] = cores
    manifest["description"] = description
    return manifest
