"""``edge-agent evaluate``: measure a model component on an MVTec-layout folder.

Every photo in ``DATA_DIR/test/<kind>/`` is scored, offline with ONNX Runtime
or, with ``--agent``, through a running agent (images in shared memory).
``good`` photos are normal; every other kind is defective and needs its
ground truth in ``ground_truth/<kind>/<stem>.png`` or ``<stem>_mask.png``
(white = defect). The report folder receives ``results.csv`` (one row per
photo), ``summary.json``, ``roc.png`` and ``overlays/<kind>/<stem>.png``.

Both modes feed the same code: the agent's mask is the graph's ``mask``
painted in label colours, and its score is the graph's score clipped to
[0, 1] as done here, so image-level and mask-based pixel figures agree
exactly. Pixel AUROC needs the graph's ``anomaly_map``, which the agent does
not return, so it is reported offline only. Latency differs in meaning:
offline it is the graph's run alone, through the agent the whole round trip.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import shutil
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TextIO

import grpc
import numpy as np
import onnxruntime as ort
from PIL import Image, ImageDraw, ImageFont

from frontend.client import EdgeAgentClient
from shared.component import ComponentError, Label, ModelComponent, load_component
from shared.images import MAX_SIDE, MIN_SIDE, ImageError, load_rgb
from trainer.metrics import auroc, f1_at, roc_curve
from workers.model import session_options

GOOD = "good"
PHOTO_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
MASK_SUFFIX = "_mask"

# Pixel AUROC is read off a histogram of the normalised anomaly map, so its
# memory does not grow with the data set (tens of millions of pixels).
PIXEL_BINS = 10_000

ROC_SIZE = (640, 640)
TRUTH_COLOR = np.array([0, 255, 0], np.uint8)
PREDICTED_COLOR = np.array([255, 0, 255], np.uint8)
PROGRESS_EVERY = 50


class EvaluationError(ValueError):
    """Inputs that cannot be evaluated (exit status 2), with what to fix."""


class ScoringError(RuntimeError):
    """The graph or the agent failed on a photo mid-run (exit status 1)."""


@dataclass(frozen=True)
class Sample:
    """One test photo: where it is, its kind, and its ground truth if any."""

    path: Path
    kind: str
    truth_path: Path | None

    @property
    def label(self) -> int:
        return 0 if self.kind == GOOD else 1


@dataclass(frozen=True)
class Outcome:
    """What the component said about one photo."""

    score: float
    is_anomalous: bool
    predicted: np.ndarray | None  # bool [height, width]: any label
    anomaly_map: np.ndarray | None  # float32 [height, width]
    latency_ms: float
    # The label that marks the most pixels; None without a mask or marks.
    kind: str | None = None


# ---------------------------------------------------------------- data set


def _photos(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file()
        and not p.name.startswith(".")
        and p.suffix.lower() in PHOTO_SUFFIXES
    )


def _truth_path(data_dir: Path, kind: str, photo: Path) -> Path:
    folder = data_dir / "ground_truth" / kind
    for name in (f"{photo.stem}.png", f"{photo.stem}{MASK_SUFFIX}.png"):
        if (folder / name).is_file():
            return folder / name
    raise EvaluationError(
        f"defect photo {photo} has no ground-truth mask: expected "
        f"{folder / (photo.stem + '.png')} or "
        f"{folder / (photo.stem + MASK_SUFFIX + '.png')} (white = defect)"
    )


def find_samples(data_dir: Path) -> list[Sample]:
    """The test photos of an MVTec-layout folder, good ones first."""
    test_dir = data_dir / "test"
    if not data_dir.is_dir():
        raise EvaluationError(
            f"{data_dir} is not a folder; pass an MVTec-layout folder with "
            "test/good/, test/<kind>/ and ground_truth/<kind>/"
        )
    if not test_dir.is_dir():
        raise EvaluationError(
            f"{test_dir} is not a folder: DATA_DIR must hold test/good/ and "
            "test/<kind>/ with photos, and ground_truth/<kind>/ with masks"
        )
    kinds = sorted(p.name for p in test_dir.iterdir() if p.is_dir())
    kinds.sort(key=lambda kind: kind != GOOD)
    samples = []
    for kind in kinds:
        for photo in _photos(test_dir / kind):
            truth = None if kind == GOOD else _truth_path(data_dir, kind, photo)
            samples.append(Sample(photo, kind, truth))
    if not samples:
        raise EvaluationError(
            f"{test_dir} holds no photos ({', '.join(PHOTO_SUFFIXES)}) in "
            "test/good/ or test/<kind>/ folders"
        )
    return samples


def read_truth(sample: Sample, shape: tuple[int, int]) -> np.ndarray:
    """The defect pixels of ``sample`` as bool [height, width]."""
    if sample.truth_path is None:
        return np.zeros(shape, bool)
    try:
        with Image.open(sample.truth_path) as picture:
            truth = np.asarray(picture.convert("L")) >= 128
    except (OSError, ValueError) as exc:
        raise EvaluationError(
            f"cannot read mask {sample.truth_path}: {exc}; masks are "
            "grayscale PNGs, white = defect"
        ) from exc
    if truth.shape != shape:
        raise EvaluationError(
            f"mask {sample.truth_path} is {truth.shape[1]}x{truth.shape[0]} "
            f"but photo {sample.path} is {shape[1]}x{shape[0]}; a mask must "
            "have its photo's size"
        )
    return truth


# ---------------------------------------------------------------- scorers


class Scorer(Protocol):
    """Runs the component on one photo."""

    latency_means: str

    def score(self, image: np.ndarray) -> Outcome: ...

    def close(self) -> None: ...


def _clip(score: float) -> float:
    # The agent clips the graph's score the same way before comparing.
    return min(max(score, 0.0), 1.0)


class OfflineScorer:
    """The component's graph in ONNX Runtime, set up as a worker sets it up."""

    def __init__(self, component: ModelComponent, threads: int) -> None:
        self.component = component
        self.latency_means = f"graph run alone, {threads} intra-op thread(s)"
        try:
            self.session = ort.InferenceSession(
                str(component.model_path),
                sess_options=session_options(threads),
                providers=["CPUExecutionProvider"],
            )
        except Exception as exc:  # ORT raises its own untyped errors here.
            raise EvaluationError(
                f"component {component.path} does not load: {exc}"
            ) from exc
        self.outputs = self._pick_outputs()
        self._warm_up()

    def _pick_outputs(self) -> list[str]:
        inputs = [i.name for i in self.session.get_inputs()]
        present = {o.name for o in self.session.get_outputs()}
        wanted = ["score"]
        if self.component.is_segmentation:
            wanted.append("mask")
        missing = [name for name in wanted if name not in present]
        if inputs != ["image"] or missing:
            raise EvaluationError(
                f"component {self.component.path} does not fit the format: its "
                f"graph takes {inputs} and returns {sorted(present)}; a "
                f"{self.component.kind} component takes ['image'] and returns "
                f"{wanted} (see docs/components.md)"
            )
        if self.component.is_segmentation and "anomaly_map" in present:
            wanted.append("anomaly_map")
        return wanted

    @property
    def has_anomaly_map(self) -> bool:
        return "anomaly_map" in self.outputs

    def _warm_up(self) -> None:
        # The first runs allocate; keep them out of the latency figures.
        width, height = self.component.input_size
        blank = np.zeros((height, width, 3), np.uint8)
        try:
            self.session.run(self.outputs, {"image": blank})
        except Exception as exc:  # ORT raises its own untyped errors here.
            raise EvaluationError(
                f"component {self.component.path} fails on a blank "
                f"{width}x{height} image: {exc}"
            ) from exc

    def score(self, image: np.ndarray) -> Outcome:
        start = time.perf_counter()
        try:
            results = self.session.run(self.outputs, {"image": image})
        except Exception as exc:  # ORT raises its own untyped errors here.
            raise ScoringError(f"the graph failed: {exc}") from exc
        latency_ms = (time.perf_counter() - start) * 1000.0
        named = dict(zip(self.outputs, results, strict=True))
        raw = float(np.asarray(named["score"]).reshape(-1)[0])
        if not np.isfinite(raw):
            raise ScoringError(f"the graph returned the score {raw}")
        score = _clip(raw)
        predicted = None
        kind = None
        if "mask" in named:
            mask = _at_image_size(named["mask"], image, "mask")
            predicted = mask != 0
            labels = self.component.labels
            counts = np.bincount(
                np.clip(mask.ravel(), 0, len(labels) + 1).astype(np.int64),
                minlength=len(labels) + 2,
            )[1 : len(labels) + 1]
            kind = _largest(counts, labels)
        anomaly_map = None
        if "anomaly_map" in named:
            anomaly_map = _at_image_size(named["anomaly_map"], image, "anomaly_map")
        return Outcome(
            score=score,
            is_anomalous=score >= self.component.threshold,
            predicted=predicted,
            anomaly_map=anomaly_map,
            latency_ms=latency_ms,
            kind=kind,
        )

    def close(self) -> None:
        """Nothing to release; the session goes with the object."""


def _largest(counts: np.ndarray, labels: Sequence[Label]) -> str | None:
    """The name of the label with the most pixels (the first on a tie), or
    None when no pixel is marked."""
    if len(counts) == 0 or int(counts.max()) == 0:
        return None
    return labels[int(np.argmax(counts))].name


def _at_image_size(output: Any, image: np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(output)
    if array.shape != image.shape[:2]:
        raise EvaluationError(
            f"the graph returned {name} of shape {array.shape} for an image of "
            f"{image.shape[:2]}; {name} must have the image's size"
        )
    return array


# Offline and agent scores of one image differ by float rounding only.
SAME_SCORE_TOLERANCE = 1e-4


class AgentScorer:
    """The component as a running agent serves it, images in shared memory."""

    latency_means = "round trip through the agent, shared-memory image"

    def __init__(self, address: str, model: str, component: ModelComponent) -> None:
        self.address = address
        self.model = model
        self.labels = component.labels
        self.client = EdgeAgentClient(address)
        try:
            self._check_running(component)
        except BaseException:
            self.client.close()
            raise

    def _check_running(self, component: ModelComponent) -> None:
        try:
            description = self.client.describe(self.model)
        except grpc.RpcError as exc:
            raise EvaluationError(
                f"cannot describe {self.model!r} on the agent at {self.address}: "
                f"{exc.code().name}: {exc.details()}; --agent takes the address "
                "of a running agent and --model a component it serves"
            ) from exc
        if description["status"] != "RUNNING":
            raise EvaluationError(
                f"{self.model} is {description['status']} on the agent at "
                f"{self.address}; start it first: edge-agent start {self.model} "
                f"--socket {self.address} --wait"
            )
        if description["lookout_vision_model_arn"] != component.model_arn:
            raise EvaluationError(
                f"the agent runs {description['lookout_vision_model_arn']} as "
                f"{self.model} but {component.path} is {component.model_arn}; "
                "give the folder of the component the agent runs"
            )

    def check_same_graph(
        self, component: ModelComponent, probes: Sequence[tuple[str, np.ndarray]]
    ) -> None:
        """Fail unless the agent scores `probes` as the folder's graph does.

        The ARN stays the same when a component is retrained in place
        (``train --force``), while the agent keeps the copy it took at
        StartModel; without this check the figures of the old model would
        be reported under the folder's name.
        """
        offline = OfflineScorer(component, 1)
        for name, image in probes:
            here = offline.score(image).score
            try:
                there = self.score(image).score
            except grpc.RpcError as exc:
                raise EvaluationError(
                    f"the agent at {self.address} failed on {name} before the "
                    f"evaluation began: {exc.code().name}: {exc.details()}"
                ) from exc
            if abs(here - there) > SAME_SCORE_TOLERANCE:
                raise EvaluationError(
                    f"the agent's {self.model} scores {name} {there:.6f} but "
                    f"{component.path} scores it {here:.6f}: the agent runs other "
                    "files than the folder holds now (changed after its "
                    f"StartModel?); load them with: edge-agent stop {self.model} "
                    f"--socket {self.address} && edge-agent start {self.model} "
                    f"--socket {self.address} --wait"
                )

    def score(self, image: np.ndarray) -> Outcome:
        start = time.perf_counter()
        result = self.client.detect(self.model, image)
        latency_ms = (time.perf_counter() - start) * 1000.0
        predicted = None
        kind = None
        if result.mask is not None:
            # Background is white and no label may be white.
            predicted = np.any(result.mask != 255, axis=2)
            _at_image_size(predicted, image, "the agent's mask")
            labels = self.labels
            counts = np.array(
                [np.all(result.mask == label.rgb, axis=2).sum() for label in labels]
            )
            kind = _largest(counts, labels)
        return Outcome(
            score=float(result.anomaly_score),
            is_anomalous=bool(result.is_anomalous),
            predicted=predicted,
            anomaly_map=None,
            latency_ms=latency_ms,
            kind=kind,
        )

    def close(self) -> None:
        self.client.close()


# ---------------------------------------------------------------- pixel tally


@dataclass
class PixelCounts:
    """Confusion counts of predicted mask against ground truth."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    pixels: int = 0

    def add(self, predicted: np.ndarray, truth: np.ndarray) -> None:
        self.tp += int(np.count_nonzero(predicted & truth))
        self.fp += int(np.count_nonzero(predicted & ~truth))
        self.fn += int(np.count_nonzero(~predicted & truth))
        self.pixels += truth.size

    def __add__(self, other: PixelCounts) -> PixelCounts:
        return PixelCounts(
            self.tp + other.tp,
            self.fp + other.fp,
            self.fn + other.fn,
            self.pixels + other.pixels,
        )

    @property
    def f1(self) -> float | None:
        """None without defect pixels: a mask of good photos only has no F1
        (or IoU) to speak of, whether or not it marked something; its false
        positive rate tells how much it marked."""
        if self.tp + self.fn == 0:
            return None
        return 2 * self.tp / (2 * self.tp + self.fp + self.fn)

    @property
    def false_positive_rate(self) -> float | None:
        normal = self.pixels - self.tp - self.fn
        return self.fp / normal if normal else None

    @property
    def iou(self) -> float | None:
        if self.tp + self.fn == 0:
            return None
        return self.tp / (self.tp + self.fp + self.fn)


class PixelHistogram:
    """Defect and normal pixel counts per bin of the normalised anomaly map.

    The AUROC read off it treats pixels that share one of the ``bins`` equal
    bins of [0, 1] as tied (half a win per pair), so it differs from the
    exact AUROC by at most ``0.5 * sum(P_b * N_b) / (P * N)``, the share of
    defect/normal pairs inside one bin; ``auroc`` returns that bound too.
    Values outside [0, 1] fall into the end bins; the bound still holds.
    """

    def __init__(self, bins: int = PIXEL_BINS) -> None:
        self.bins = bins
        self.positive = np.zeros(bins, np.int64)
        self.negative = np.zeros(bins, np.int64)

    def add(self, anomaly_map: np.ndarray, truth: np.ndarray) -> None:
        index = np.clip(
            (anomaly_map.astype(np.float64) * self.bins).astype(np.int64),
            0,
            self.bins - 1,
        )
        self.positive += np.bincount(index[truth], minlength=self.bins)
        self.negative += np.bincount(index[~truth], minlength=self.bins)

    def __add__(self, other: PixelHistogram) -> PixelHistogram:
        total = PixelHistogram(self.bins)
        total.positive = self.positive + other.positive
        total.negative = self.negative + other.negative
        return total

    def auroc(self) -> tuple[float, float] | None:
        """(AUROC, bound on its error), or None without both classes."""
        pos = self.positive.astype(np.float64)
        neg = self.negative.astype(np.float64)
        pairs = pos.sum() * neg.sum()
        if pairs == 0:
            return None
        below = np.cumsum(neg) - neg
        wins = float(np.sum(pos * (below + 0.5 * neg)))
        tied = float(np.sum(pos * neg))
        return wins / pairs, 0.5 * tied / pairs

    def roc(self) -> tuple[np.ndarray, np.ndarray]:
        """False and true positive rates, one point per bin edge."""
        tp = np.r_[0, np.cumsum(self.positive[::-1])]
        fp = np.r_[0, np.cumsum(self.negative[::-1])]
        return fp / max(int(fp[-1]), 1), tp / max(int(tp[-1]), 1)


@dataclass
class KindTally:
    """What one kind of photo added up to."""

    pixels: PixelCounts = field(default_factory=PixelCounts)
    histogram: PixelHistogram = field(default_factory=PixelHistogram)


# ---------------------------------------------------------------- one photo


@dataclass(frozen=True)
class Row:
    """One line of results.csv: scalars only, so maps and masks are freed."""

    sample: Sample
    score: float
    is_anomalous: bool
    latency_ms: float
    truth_fraction: float
    pixels: PixelCounts | None
    map_max: float | None
    predicted_kind: str | None = None

    def as_csv(self, data_dir: Path) -> dict[str, str]:
        pixels = self.pixels
        return {
            "path": str(self.sample.path.relative_to(data_dir)),
            "kind": self.sample.kind,
            "label": str(self.sample.label),
            # repr keeps every bit, so two runs' files compare exactly.
            "score": repr(self.score),
            "is_anomalous": str(int(self.is_anomalous)),
            "latency_ms": f"{self.latency_ms:.3f}",
            "truth_fraction": f"{self.truth_fraction:.6f}",
            "predicted_fraction": _cell(
                None if pixels is None else (pixels.tp + pixels.fp) / pixels.pixels
            ),
            "pixel_f1": _cell(None if pixels is None else pixels.f1),
            "pixel_iou": _cell(None if pixels is None else pixels.iou),
            "map_max": _cell(self.map_max),
            "predicted_kind": self.predicted_kind or "",
        }


CSV_FIELDS = (
    "path",
    "kind",
    "label",
    "score",
    "is_anomalous",
    "latency_ms",
    "truth_fraction",
    "predicted_fraction",
    "pixel_f1",
    "pixel_iou",
    "map_max",
    "predicted_kind",
)


def _cell(value: float | None) -> str:
    return "" if value is None else f"{value:.6f}"


def _read_photo(sample: Sample) -> np.ndarray:
    try:
        image = load_rgb(sample.path)
    except ImageError as exc:
        raise EvaluationError(f"{exc}; test photos are PNG or JPEG") from exc
    height, width = image.shape[:2]
    # Offline takes what the agent takes, so both modes see the same photos.
    if not (MIN_SIDE <= height <= MAX_SIDE and MIN_SIDE <= width <= MAX_SIDE):
        raise EvaluationError(
            f"{sample.path} is {width}x{height}; the agent takes {MIN_SIDE} to "
            f"{MAX_SIDE} pixels a side, and so does evaluation"
        )
    return image


def _score(sample: Sample, scorer: Scorer, image: np.ndarray) -> Outcome:
    try:
        outcome = scorer.score(image)
    except grpc.RpcError as exc:
        message = f"the agent failed on {sample.path}: {exc.code().name}: "
        if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
            raise EvaluationError(message + str(exc.details())) from exc
        raise ScoringError(message + str(exc.details())) from exc
    except ScoringError as exc:
        raise ScoringError(f"{sample.path}: {exc}") from exc
    except EvaluationError as exc:
        raise EvaluationError(f"{sample.path}: {exc}") from exc
    if outcome.anomaly_map is not None and not np.isfinite(outcome.anomaly_map).all():
        raise ScoringError(f"{sample.path}: the graph's anomaly_map is not finite")
    return outcome


def evaluate_one(
    sample: Sample, scorer: Scorer, tallies: dict[str, KindTally], overlays: Path
) -> Row:
    """Score one photo, add it to its kind's tally and draw its overlay."""
    image = _read_photo(sample)
    truth = read_truth(sample, image.shape[:2])
    outcome = _score(sample, scorer, image)

    tally = tallies.setdefault(sample.kind, KindTally())
    pixels = None
    if outcome.predicted is not None:
        pixels = PixelCounts()
        pixels.add(outcome.predicted, truth)
        tally.pixels += pixels
    anomaly_map = outcome.anomaly_map
    if anomaly_map is not None:
        tally.histogram.add(anomaly_map, truth)

    # Overlays are named by stem: two photos of one kind that differ only in
    # extension share one overlay, the later one's.
    folder = overlays / sample.kind
    folder.mkdir(parents=True, exist_ok=True)
    picture = overlay(image, anomaly_map, outcome.predicted, truth)
    Image.fromarray(picture).save(folder / f"{sample.path.stem}.png")
    return Row(
        sample=sample,
        score=outcome.score,
        is_anomalous=outcome.is_anomalous,
        latency_ms=outcome.latency_ms,
        truth_fraction=float(truth.mean()),
        pixels=pixels,
        map_max=None if anomaly_map is None else float(anomaly_map.max()),
        predicted_kind=outcome.kind,
    )


# ---------------------------------------------------------------- overlays


def _heat(values: np.ndarray) -> np.ndarray:
    """Blue (0) through green (0.5, the threshold) to red (1), float RGB."""
    v = np.clip(values.astype(np.float32), 0.0, 1.0)[..., None]
    centres = np.array([0.75, 0.5, 0.25], np.float32)
    heat: np.ndarray = np.clip(1.5 - np.abs(4.0 * (v - centres)), 0.0, 1.0)
    return heat * 255.0


def _erode(region: np.ndarray) -> np.ndarray:
    padded = np.pad(region, 1, constant_values=False)
    eroded: np.ndarray = (
        padded[1:-1, 1:-1]
        & padded[:-2, 1:-1]
        & padded[2:, 1:-1]
        & padded[1:-1, :-2]
        & padded[1:-1, 2:]
    )
    return eroded


def outline(region: np.ndarray, width: int) -> np.ndarray:
    """The pixels of ``region`` within ``width`` of its border."""
    inner = region
    for _ in range(width):
        inner = _erode(inner)
    border: np.ndarray = region & ~inner
    return border


def overlay(
    image: np.ndarray,
    anomaly_map: np.ndarray | None,
    predicted: np.ndarray | None,
    truth: np.ndarray,
) -> np.ndarray:
    """The photo under the heat map (or a tint of the predicted mask when
    there is no map), the ground truth outlined green, the prediction
    magenta."""
    base: np.ndarray = image.astype(np.float32)
    if anomaly_map is not None:
        base = 0.6 * base + 0.4 * _heat(anomaly_map)
    elif predicted is not None:
        base[predicted] = 0.6 * base[predicted] + 0.4 * PREDICTED_COLOR
    picture: np.ndarray = np.clip(base + 0.5, 0, 255).astype(np.uint8)
    width = max(1, round(max(image.shape[:2]) / 300))
    picture[outline(truth, width)] = TRUTH_COLOR
    if predicted is not None:
        picture[outline(predicted, width)] = PREDICTED_COLOR
    return picture


# ---------------------------------------------------------------- figures


@dataclass(frozen=True)
class Figures:
    """Everything the report says, computed from the rows and tallies."""

    rows: Sequence[Row]
    tallies: dict[str, KindTally]
    threshold: float
    pixel_auroc_reason: str | None  # why there is none, or None
    label_names: tuple[str, ...] = ()  # the component's mask labels

    def kinds(self) -> list[str]:
        return list(dict.fromkeys(r.sample.kind for r in self.rows))

    def labels_scores(self, kinds: Iterable[str]) -> tuple[np.ndarray, np.ndarray]:
        wanted = set(kinds)
        rows = [r for r in self.rows if r.sample.kind in wanted]
        labels = np.array([r.sample.label for r in rows], bool)
        scores = np.array([r.score for r in rows], np.float64)
        return labels, scores

    def flagged(self, kinds: Iterable[str]) -> np.ndarray:
        wanted = set(kinds)
        rows = [r for r in self.rows if r.sample.kind in wanted]
        return np.array([r.is_anomalous for r in rows], bool)

    def histogram(self, kinds: Iterable[str]) -> PixelHistogram:
        empty = KindTally()
        parts = (self.tallies.get(kind, empty).histogram for kind in kinds)
        return sum(parts, PixelHistogram())

    def group(self, kinds: Sequence[str]) -> dict[str, Any]:
        """Figures of the photos of ``kinds`` taken together."""
        labels, scores = self.labels_scores(kinds)
        defective = [kind for kind in kinds if kind != GOOD]
        empty = KindTally()
        pixels = sum((self.tallies.get(k, empty).pixels for k in kinds), PixelCounts())
        has_masks = any(r.pixels is not None for r in self.rows)
        area = None
        if self.pixel_auroc_reason is None:
            area = self.histogram(kinds).auroc()
        return {
            "photos": int(labels.size),
            "defective_photos": int(labels.sum()),
            "image_auroc": _image_auroc(labels, scores),
            "image_f1": f1_at(labels, scores, self.threshold) if labels.any() else None,
            "false_alarm_rate": _rate(self.flagged([GOOD] if GOOD in kinds else [])),
            "caught_rate": _rate(self.flagged(defective)),
            "labelled_right_rate": self.labelled_right(defective),
            "pixel": {
                "auroc": None if area is None else area[0],
                "auroc_error_bound": None if area is None else area[1],
                "f1": pixels.f1 if has_masks else None,
                "iou": pixels.iou if has_masks else None,
                "false_positive_rate": pixels.false_positive_rate
                if has_masks
                else None,
            },
        }

    def labelled_right(self, kinds: Iterable[str]) -> float | None:
        """Share of the defective photos of ``kinds`` named like one of the
        component's labels whose mask marks that label most; None when no
        kind is named like a label."""
        named = set(kinds) & set(self.label_names) - {GOOD}
        rows = [r for r in self.rows if r.sample.kind in named]
        if not rows:
            return None
        return sum(r.predicted_kind == r.sample.kind for r in rows) / len(rows)

    def latency(self) -> dict[str, float]:
        values = np.array([r.latency_ms for r in self.rows])
        return {
            "median": float(np.median(values)),
            "p90": float(np.percentile(values, 90)),
        }


def _image_auroc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    if labels.all() or not labels.any():
        return None
    return auroc(labels, scores)


def _rate(flags: np.ndarray) -> float | None:
    return float(flags.mean()) if flags.size else None


def summarize(figures: Figures, context: dict[str, Any]) -> dict[str, Any]:
    """The content of summary.json.

    Each defect kind is measured together with the good photos, as if it
    were the only kind (its ``photos`` counts its own); the good photos'
    entry stands on its own.
    """
    kinds = figures.kinds()
    with_good = [GOOD] if GOOD in kinds else []
    per_kind = {}
    for kind in kinds:
        entry = figures.group([kind] if kind == GOOD else [*with_good, kind])
        entry["photos"] = sum(1 for r in figures.rows if r.sample.kind == kind)
        per_kind[kind] = entry
    return {
        **context,
        "threshold": figures.threshold,
        "overall": figures.group(kinds),
        "kinds": per_kind,
        "pixel_auroc_method": (
            f"histogram of anomaly_map over {PIXEL_BINS} equal bins of [0, 1], "
            "all pixels of the photos concerned; pixels in one bin count as "
            "tied, so the error is at most auroc_error_bound"
        ),
        "pixel_auroc_unavailable": figures.pixel_auroc_reason,
        "latency_ms": figures.latency(),
    }


# ---------------------------------------------------------------- roc.png


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow before 10.1 has only its bitmap font.
        return ImageFont.load_default()


def draw_roc(
    curves: list[tuple[str, np.ndarray, np.ndarray, tuple[int, int, int]]],
    title: str,
) -> Image.Image:
    """An ROC plot: axes with ticks, the chance diagonal, each curve."""
    width, height = ROC_SIZE
    left, top, right, bottom = 80, 50, width - 30, height - 70
    picture = Image.new("RGB", ROC_SIZE, "white")
    draw = ImageDraw.Draw(picture)
    font = _font(14)

    def at(x: float, y: float) -> tuple[float, float]:
        return left + x * (right - left), bottom - y * (bottom - top)

    draw.text((width / 2, 20), title, fill="black", font=font, anchor="mm")
    for step in range(6):
        tick = step / 5
        x, y = at(tick, tick)
        draw.line([(x, bottom), (x, top)], fill=(230, 230, 230))
        draw.line([(left, y), (right, y)], fill=(230, 230, 230))
        draw.text((x, bottom + 8), f"{tick:.1f}", fill="black", font=font, anchor="mt")
        draw.text((left - 8, y), f"{tick:.1f}", fill="black", font=font, anchor="rm")
    draw.rectangle([left, top, right, bottom], outline="black")
    draw.line([at(0, 0), at(1, 1)], fill=(150, 150, 150), width=1)
    draw.text(
        ((left + right) / 2, height - 25),
        "false-positive rate",
        fill="black",
        font=font,
        anchor="mm",
    )
    _vertical_text(picture, "true-positive rate", (22, (top + bottom) // 2), font)

    for index, (legend, fpr, tpr, color) in enumerate(curves):
        points = [at(float(x), float(y)) for x, y in zip(fpr, tpr, strict=True)]
        draw.line(points, fill=color, width=3)
        y = bottom - 20 - 22 * (len(curves) - 1 - index)
        draw.line([(right - 220, y), (right - 190, y)], fill=color, width=3)
        draw.text((right - 182, y), legend, fill="black", font=font, anchor="lm")
    if not curves:
        draw.text(
            at(0.5, 0.55),
            "no curve: needs good and defective photos",
            fill="black",
            font=font,
            anchor="mm",
        )
    return picture


def _vertical_text(
    picture: Image.Image,
    text: str,
    centre: tuple[int, int],
    font: ImageFont.ImageFont | ImageFont.FreeTypeFont,
) -> None:
    strip = Image.new("RGB", (200, 24), "white")
    ImageDraw.Draw(strip).text((100, 12), text, fill="black", font=font, anchor="mm")
    rotated = strip.rotate(90, expand=True)
    picture.paste(rotated, (centre[0] - 12, centre[1] - 100))


def roc_curves(
    figures: Figures, overall: dict[str, Any]
) -> list[tuple[str, np.ndarray, np.ndarray, tuple[int, int, int]]]:
    curves = []
    labels, scores = figures.labels_scores(figures.kinds())
    if overall["image_auroc"] is not None:
        fpr, tpr = roc_curve(labels, scores)
        legend = f"image AUROC {overall['image_auroc']:.4f}"
        curves.append((legend, fpr, tpr, (31, 119, 180)))
    if overall["pixel"]["auroc"] is not None:
        fpr, tpr = figures.histogram(figures.kinds()).roc()
        legend = f"pixel AUROC {overall['pixel']['auroc']:.4f}"
        curves.append((legend, fpr, tpr, (214, 39, 40)))
    return curves


# ---------------------------------------------------------------- output


def _show(value: float | None, percent: bool = False) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.1f}%" if percent else f"{value:.4f}"


def print_table(summary: dict[str, Any], out: TextIO) -> None:
    """The summary as a table, one line per kind."""
    header = (
        f"{'kind':<16}{'photos':>7}{'img AUROC':>11}{'img F1':>8}{'caught':>8}"
        f"{'false al.':>10}{'px AUROC':>10}{'px F1':>8}{'px IoU':>8}"
    )
    lines = [header, "-" * len(header)]
    entries = [("all", summary["overall"]), *summary["kinds"].items()]
    for kind, figures in entries:
        pixel = figures["pixel"]
        lines.append(
            f"{kind[:15]:<16}{figures['photos']:>7}"
            f"{_show(figures.get('image_auroc')):>11}"
            f"{_show(figures.get('image_f1')):>8}"
            f"{_show(figures.get('caught_rate'), True):>8}"
            f"{_show(figures.get('false_alarm_rate'), True):>10}"
            f"{_show(pixel['auroc']):>10}{_show(pixel['f1']):>8}"
            f"{_show(pixel['iou']):>8}"
        )
    latency = summary["latency_ms"]
    lines.append(
        f"threshold {summary['threshold']:g}; latency median "
        f"{latency['median']:.2f} ms, p90 {latency['p90']:.2f} ms "
        f"({summary['latency_measures']})"
    )
    if summary["pixel_auroc_unavailable"]:
        lines.append(f"pixel AUROC not available: {summary['pixel_auroc_unavailable']}")
    print("\n".join(lines), file=out)


def write_csv(rows: Sequence[Row], data_dir: Path, path: Path) -> None:
    with path.open("w", newline="", encoding="utf-8") as stream:
        writer = csv.DictWriter(stream, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for row in rows:
            writer.writerow(row.as_csv(data_dir))


class Progress:
    """A counter on stderr: rewritten in place on a terminal, else a line
    every ``every`` photos."""

    def __init__(self, total: int, stream: TextIO, every: int = PROGRESS_EVERY):
        self.total = total
        self.stream = stream
        self.every = every
        self.inline = stream.isatty()

    def update(self, done: int) -> None:
        if self.inline:
            end = "\n" if done == self.total else ""
            print(f"\revaluated {done}/{self.total} photos", end=end, file=self.stream)
            self.stream.flush()
        elif done % self.every == 0 or done == self.total:
            print(f"evaluated {done}/{self.total} photos", file=self.stream)


# ---------------------------------------------------------------- command


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edge-agent evaluate",
        description=(
            "Measure a model component on an MVTec-layout folder (test/good, "
            "test/<kind>, ground_truth/<kind>), offline or through an agent."
        ),
    )
    parser.add_argument("component_dir", type=Path, help="the component's folder")
    parser.add_argument("data_dir", type=Path, help="MVTec-layout data folder")
    parser.add_argument("--out", type=Path, required=True, help="report folder")
    parser.add_argument(
        "--agent",
        metavar="ADDRESS",
        help="score through the agent at ADDRESS (e.g. unix:///tmp/x.sock)",
    )
    parser.add_argument(
        "--model", help="component name on the agent (default: the folder's)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        help="ONNX Runtime threads offline (default: the manifest's cores)",
    )
    return parser


def _load(path: Path) -> ModelComponent:
    try:
        return load_component(path)
    except ComponentError as exc:
        raise EvaluationError(
            f"component {path} does not load: {exc}; COMPONENT_DIR is a folder "
            "holding manifest.json and model.onnx"
        ) from exc


def _open_scorer(
    args: argparse.Namespace,
    component: ModelComponent,
    probes: Sequence[tuple[str, np.ndarray]],
) -> tuple[Scorer, str | None]:
    """The scorer, and why there is no pixel AUROC (None if there is)."""
    if args.agent is None:
        if args.model is not None:
            raise EvaluationError("--model names a component on an agent: add --agent")
        threads = component.cores if args.threads is None else args.threads
        if threads < 1:
            raise EvaluationError(f"--threads must be at least 1, not {threads}")
        offline = OfflineScorer(component, threads)
        if not component.is_segmentation:
            return offline, "a classification component has no anomaly_map"
        if not offline.has_anomaly_map:
            return offline, "the component's graph has no anomaly_map output"
        return offline, None
    if args.threads is not None:
        raise EvaluationError(
            "--threads applies offline only; the agent's worker uses the "
            "component's cores"
        )
    model = args.model or component.name
    scorer = AgentScorer(args.agent, model, component)
    try:
        scorer.check_same_graph(component, probes)
    except BaseException:
        scorer.close()
        raise
    return scorer, "the agent returns only the mask, not anomaly_map"


def _probes(samples: Sequence[Sample]) -> list[tuple[str, np.ndarray]]:
    """Images on which the agent's model and the folder's must agree: the
    first photo, and seeded noise, whose score is rarely clipped to 0 or 1."""
    noise = np.random.default_rng(0).integers(0, 256, (96, 128, 3), dtype=np.uint8)
    probes = [("a 128x96 noise image", noise)]
    if samples:
        # A photo the agent would refuse is reported where it is evaluated.
        with contextlib.suppress(EvaluationError):
            probes.insert(0, (str(samples[0].path), _read_photo(samples[0])))
    return probes


def run(args: argparse.Namespace, out: TextIO, err: TextIO) -> dict[str, Any]:
    """Evaluate, write the report folder, and return the summary."""
    component = _load(args.component_dir)
    samples = find_samples(args.data_dir)
    scorer, no_pixel_auroc = _open_scorer(args, component, _probes(samples))
    report = args.out
    try:
        report.mkdir(parents=True, exist_ok=True)
        # Overlays of an earlier run (other kinds, other photos) would sit
        # among this run's as if they were its own.
        if (report / "overlays").is_dir():
            shutil.rmtree(report / "overlays")
    except OSError as exc:
        raise EvaluationError(f"cannot create the report folder: {exc}") from exc

    rows = []
    tallies: dict[str, KindTally] = {}
    progress = Progress(len(samples), err)
    try:
        for done, sample in enumerate(samples, start=1):
            rows.append(evaluate_one(sample, scorer, tallies, report / "overlays"))
            progress.update(done)
    finally:
        scorer.close()

    figures = Figures(
        rows,
        tallies,
        component.threshold,
        no_pixel_auroc,
        tuple(label.name for label in component.labels),
    )
    summary = summarize(
        figures,
        {
            "component": component.name,
            "version": component.version,
            "component_dir": str(args.component_dir),
            "data_dir": str(args.data_dir),
            "mode": "offline" if args.agent is None else "agent",
            "agent": args.agent,
            "latency_measures": scorer.latency_means,
        },
    )
    write_csv(rows, args.data_dir, report / "results.csv")
    (report / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    title = f"ROC of {component.name} on {args.data_dir.resolve().name}"
    draw_roc(roc_curves(figures, summary["overall"]), title).save(report / "roc.png")
    print_table(summary, out)
    return summary


def main(argv: list[str] | None = None) -> int:
    """Run ``edge-agent evaluate``; ``argv`` excludes the word ``evaluate``."""
    args = _parser().parse_args(argv)
    try:
        run(args, sys.stdout, sys.stderr)
    except EvaluationError as exc:
        print(f"edge-agent evaluate: error: {exc}", file=sys.stderr)
        return 2
    except ScoringError as exc:
        print(f"edge-agent evaluate: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0
