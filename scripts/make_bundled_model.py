"""Build the bundled `models/brick-texture` component and its sample photos.

Source photo: scikit-image's `brick.png` (CC0, from CC0Textures "Bricks25"),
512x512 grayscale, replicated to RGB. The bricks are seen in perspective, so
their lean changes from left to right; the photo is therefore split by rows:
training crops come from the top half only and every sample comes from the
bottom half, so no sample pixel was ever seen in training.

Run from the repository root:  .venv/bin/python scripts/make_bundled_model.py
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageDraw
from skimage import data

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from trainer.fit import build_component  # noqa: E402

NAME = "brick-texture"
SEED = 0
CROP = 256
SMALL_CROP = 240  # Second crop size: ~7% scale jitter once resized to 256.
SPLIT_ROW = 256  # Rows above: training. Rows at and below: held out.
N_TRAIN_LARGE = 32
N_TRAIN_SMALL = 16


def brick_rgb() -> np.ndarray:
    gray = np.asarray(data.brick(), dtype=np.uint8)  # type: ignore[no-untyped-call]
    rgb: np.ndarray = np.repeat(gray[:, :, None], 3, axis=2)
    return rgb


def training_crops(photo: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    crops = []
    width = photo.shape[1]
    for _ in range(N_TRAIN_LARGE):
        x = int(rng.integers(0, width - CROP + 1))
        crops.append(photo[0:CROP, x : x + CROP])
    for _ in range(N_TRAIN_SMALL):
        x = int(rng.integers(0, width - SMALL_CROP + 1))
        y = int(rng.integers(0, SPLIT_ROW - SMALL_CROP + 1))
        crops.append(photo[y : y + SMALL_CROP, x : x + SMALL_CROP])
    return crops


def held_out_crop(
    photo: np.ndarray, x: int, y: int = SPLIT_ROW, size: int = CROP
) -> np.ndarray:
    assert y >= SPLIT_ROW, "held-out crops must not overlap the training rows"
    crop: np.ndarray = photo[y : y + size, x : x + size].copy()
    return crop


def _jagged_line(
    rng: np.random.Generator, start: tuple[float, float], end: tuple[float, float]
) -> list[tuple[float, float]]:
    # A crack wanders: perturb evenly spaced points across the direction.
    (x0, y0), (x1, y1) = start, end
    steps = 12
    normal = np.array([y0 - y1, x1 - x0]) / np.hypot(x1 - x0, y1 - y0)
    points = []
    for t in np.linspace(0.0, 1.0, steps):
        offset = rng.normal(0.0, 3.0) if 0 < t < 1 else 0.0
        points.append(
            (
                x0 + t * (x1 - x0) + offset * normal[0],
                y0 + t * (y1 - y0) + offset * normal[1],
            )
        )
    return points


def paint_defect(
    crop: np.ndarray, kind: str, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Return (defective RGB crop, ground-truth mask 0/255)."""
    image = Image.fromarray(crop)
    mask = Image.new("L", image.size, 0)
    draw, mdraw = ImageDraw.Draw(image), ImageDraw.Draw(mask)
    if kind == "crack":
        points = _jagged_line(rng, (40.0, 70.0), (215.0, 190.0))
        draw.line(points, fill=(25, 25, 25), width=4, joint="curve")
        mdraw.line(points, fill=255, width=4, joint="curve")
    elif kind == "bright-blob":
        box = (150, 60, 186, 92)
        draw.ellipse(box, fill=(235, 232, 228))
        mdraw.ellipse(box, fill=255)
    elif kind == "dark-blob":
        box = (70, 140, 108, 170)
        draw.ellipse(box, fill=(30, 28, 26))
        mdraw.ellipse(box, fill=255)
    elif kind == "chip":
        # A broken-off corner: flat, pale, slightly noisy exposed material.
        polygon = [(120, 100), (160, 92), (172, 120), (150, 146), (118, 132)]
        draw.polygon(polygon, fill=(200, 196, 190))
        mdraw.polygon(polygon, fill=255)
        rough = np.asarray(image).astype(np.int16)
        inside = np.asarray(mask) > 0
        rough[inside] += rng.integers(-12, 13, size=(int(inside.sum()), 1))
        image = Image.fromarray(np.clip(rough, 0, 255).astype(np.uint8))
    else:
        raise ValueError(kind)
    return np.asarray(image), np.asarray(mask)


def _session(model_path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(
        str(model_path), options, providers=["CPUExecutionProvider"]
    )


def score(session: ort.InferenceSession, image: np.ndarray) -> float:
    return float(session.run(["score"], {"image": image})[0][0])


def latency_ms(
    session: ort.InferenceSession, shape: tuple[int, int, int], runs: int = 50
) -> float:
    image = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
    session.run(None, {"image": image})
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, {"image": image})
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


DEFECTS = {
    "crack": 20,
    "bright-blob": 100,
    "dark-blob": 180,
    "chip": 256,
}
GOOD_X = (0, 85, 170, 256)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=ROOT / "models")
    parser.add_argument("--samples", type=Path, default=ROOT / "samples")
    parser.add_argument("--backbone", default="fixed")
    parser.add_argument("--method", default=None)
    args = parser.parse_args(argv)

    rng = np.random.default_rng(SEED)
    photo = brick_rgb()
    with tempfile.TemporaryDirectory() as tmp:
        good_dir = Path(tmp) / "brick-top-half"
        good_dir.mkdir()
        for i, crop in enumerate(training_crops(photo, rng)):
            Image.fromarray(crop).save(good_dir / f"crop_{i:03d}.png")
        component = build_component(
            good_dir,
            args.models,
            name=NAME,
            seed=SEED,
            # Measured: the pretrained recipes separate these samples less
            # well than the fixed filters (lite0 + memory bank: the worst
            # good sample 1.27x, the faintest crack 1.35x the largest
            # held-out good distance; a Gaussian per cell flags the bottom
            # half, whose perspective differs, as a whole), so the bundled
            # texture keeps the fixed recipe.
            backbone=args.backbone,
            method=args.method,
            description=(
                "Brick wall texture (scikit-image brick.png, CC0, CC0Textures "
                f"'Bricks25'): {N_TRAIN_LARGE} {CROP}px and {N_TRAIN_SMALL} "
                f"{SMALL_CROP}px crops of the top half, grayscale as RGB."
            ),
            progress=print,
            overwrite=True,
        )

    samples = args.samples
    for sub in ("good", "defective", "defective_masks"):
        shutil.rmtree(samples / sub, ignore_errors=True)
        (samples / sub).mkdir(parents=True)
    for i, x in enumerate(GOOD_X):
        Image.fromarray(held_out_crop(photo, x)).save(
            samples / "good" / f"good_{i + 1}.png"
        )
    for kind, x in DEFECTS.items():
        image, mask = paint_defect(held_out_crop(photo, x), kind, rng)
        Image.fromarray(image).save(samples / "defective" / f"{kind}.png")
        Image.fromarray(mask).save(samples / "defective_masks" / f"{kind}.png")

    session = _session(component / "model.onnx")
    print("bundled samples (score, >= 0.5 means anomalous):")
    for folder in ("good", "defective"):
        for path in sorted((samples / folder).glob("*.png")):
            image = np.asarray(Image.open(path).convert("RGB"))
            print(f"  {folder}/{path.name}: {score(session, image):.3f}")
    extra = [held_out_crop(photo, int(x)) for x in np.linspace(0, 256, 12)]
    extra += [
        held_out_crop(
            photo, int(rng.integers(0, 273)), int(rng.integers(256, 273)), SMALL_CROP
        )
        for _ in range(8)
    ]
    extra_scores = [score(session, crop) for crop in extra]
    print(
        f"{len(extra)} more held-out good crops: max {max(extra_scores):.3f}, "
        f"median {statistics.median(extra_scores):.3f}, "
        f"{sum(s >= 0.5 for s in extra_scores)} flagged"
    )
    for shape in ((256, 256, 3), (1080, 1920, 3)):
        median = latency_ms(session, shape)
        print(f"latency {shape[1]}x{shape[0]}, 1 thread: {median:.2f} ms (median)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
