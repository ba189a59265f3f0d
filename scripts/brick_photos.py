"""Training crops and sample photos for the bundled `brick-texture` component.

Source photo: scikit-image's `brick.png` (CC0, from CC0Textures "Bricks25"),
512x512 grayscale, replicated to RGB. The bricks are seen in perspective, so
their lean changes from left to right; the photo is therefore split by rows:
training crops come from the top half only and every sample comes from the
bottom half, so no sample pixel was ever seen in training.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw
from skimage import data

CROP = 256
SMALL_CROP = 240  # Second crop size: ~7% scale jitter once resized to 256.
SPLIT_ROW = 256  # Rows above: training. Rows at and below: held out.
N_TRAIN_LARGE = 32
N_TRAIN_SMALL = 16
# Each sample defect and the column of the held-out crop it is painted on.
DEFECTS = {
    "crack": 20,
    "bright-blob": 100,
    "dark-blob": 180,
    "chip": 256,
}
GOOD_X = (0, 85, 170, 256)


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


def more_held_out_crops(
    photo: np.ndarray, rng: np.random.Generator
) -> list[np.ndarray]:
    """Good crops beyond the samples, for the builder's check: 12 evenly
    spaced across the bottom half, and 8 smaller ones at random."""
    crops = [held_out_crop(photo, int(x)) for x in np.linspace(0, 256, 12)]
    crops += [
        held_out_crop(
            photo, int(rng.integers(0, 273)), int(rng.integers(256, 273)), SMALL_CROP
        )
        for _ in range(8)
    ]
    return crops
