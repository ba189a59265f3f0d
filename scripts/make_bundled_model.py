"""Build the bundled model components and their sample photos.

- `machined-flange` (served by default): a turned aluminium flange lying in
  an inspection fixture, photographed from above in a fixed pose, trained
  with the default recipe (EfficientNet-Lite0 features, a Gaussian per
  cell) on photos that `scripts/flange_photos.py` renders.
- `brick-texture`: scikit-image's brick wall photo, a texture seen in
  perspective, with the fixed filter bank and a memory bank
  (`scripts/brick_photos.py`).

Everything is deterministic: the same code gives the same files. For each
component the script prints each sample's score, checks further good and
defective photos that neither training nor the samples used, and measures
the latency on one thread.

Run from the repository root:  .venv/bin/python scripts/make_bundled_model.py
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scripts import brick_photos, flange_photos  # noqa: E402
from trainer.fit import build_component  # noqa: E402

BRICK = "brick-texture"
BRICK_SEED = 0
FLANGE = "machined-flange"
FLANGE_SEED = 0
FLANGE_TRAINING_PHOTOS = 160  # 32 of them are held out for the threshold.
FLANGE_GOOD_SAMPLES = 4
FLANGE_CHECK_GOOD = 20
FLANGE_CHECK_PER_KIND = 4
# Flange photo sets: a photo's seed is (FLANGE_SEED, set, index), so no two
# photos of the bundle share one.
TRAINING_SET, SAMPLE_SET, CHECK_SET = 0, 1, 2

Photo = tuple[np.ndarray, np.ndarray]  # An RGB image and its defect mask.


def save_png(image: np.ndarray, path: Path) -> None:
    """PNG with fixed settings, so that the same pixels give the same bytes."""
    Image.fromarray(image).save(path, format="PNG", optimize=False, compress_level=6)


def write_samples(
    folder: Path, good: Sequence[np.ndarray], defective: dict[str, Photo]
) -> None:
    """Replace the sample photos in `folder`: good/good_N.png,
    defective/KIND.png and defective_masks/KIND.png (0 or 255). Other files
    there, such as a README, stay."""
    for sub in ("good", "defective", "defective_masks"):
        shutil.rmtree(folder / sub, ignore_errors=True)
        (folder / sub).mkdir(parents=True)
    for i, image in enumerate(good):
        save_png(image, folder / "good" / f"good_{i + 1}.png")
    for kind, (image, mask) in defective.items():
        save_png(image, folder / "defective" / f"{kind}.png")
        truth = (np.asarray(mask) > 0).astype(np.uint8) * 255
        save_png(truth, folder / "defective_masks" / f"{kind}.png")


def open_session(model_path: Path) -> ort.InferenceSession:
    """One thread, as the agent gives a one-core component."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(
        str(model_path), options, providers=["CPUExecutionProvider"]
    )


def score(session: ort.InferenceSession, image: np.ndarray) -> float:
    return float(session.run(["score"], {"image": image})[0][0])


def report_samples(session: ort.InferenceSession, folder: Path) -> None:
    """Each sample's score; for a defective one, also how much of its
    ground truth the predicted mask covers and how much of the photo."""
    print(f"samples in {folder} (score, >= 0.5 means anomalous):")
    for sub in ("good", "defective"):
        for path in sorted((folder / sub).glob("*.png")):
            with Image.open(path) as img:
                image = np.asarray(img.convert("RGB"))
            value, mask = session.run(["score", "mask"], {"image": image})
            line = f"  {sub}/{path.name}: {float(value[0]):.3f}"
            truth_path = folder / "defective_masks" / path.name
            if truth_path.exists():
                with Image.open(truth_path) as img:
                    truth = np.asarray(img.convert("L")) > 0
                found = (mask > 0) & truth
                line += (
                    f" (mask: {found.sum() / truth.sum():.0%} of the defect, "
                    f"{(mask > 0).mean():.0%} of the photo)"
                )
            print(line)


def report_check(what: str, scores: Sequence[float]) -> None:
    """One line on photos held back from training and from the samples."""
    flagged = sum(s >= 0.5 for s in scores)
    print(
        f"{len(scores)} {what}: {flagged} flagged (scores {min(scores):.3f} to "
        f"{max(scores):.3f}, median {statistics.median(scores):.3f})"
    )


def report_latency(
    session: ort.InferenceSession, sizes: Sequence[tuple[int, int]], runs: int = 50
) -> None:
    """Median time of one run of the whole graph, mask included, per size."""
    for width, height in sizes:
        image = np.random.default_rng(1).integers(
            0, 256, (height, width, 3), dtype=np.uint8
        )
        session.run(None, {"image": image})
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            session.run(None, {"image": image})
            times.append(time.perf_counter() - start)
        median = 1000 * statistics.median(times)
        print(f"latency {width}x{height}, 1 thread: {median:.2f} ms (median)")


def build_brick(args: argparse.Namespace) -> None:
    """The texture: crops of the photo's top half train it, the samples
    and the check come from its bottom half."""
    rng = np.random.default_rng(BRICK_SEED)
    photo = brick_photos.brick_rgb()
    with tempfile.TemporaryDirectory() as tmp:
        good_dir = Path(tmp) / "brick-top-half"
        good_dir.mkdir()
        for i, crop in enumerate(brick_photos.training_crops(photo, rng)):
            save_png(crop, good_dir / f"crop_{i:03d}.png")
        component = build_component(
            good_dir,
            args.models,
            name=BRICK,
            seed=BRICK_SEED,
            # Measured: the pretrained recipes separate these samples less
            # well than the fixed filters (lite0 + memory bank: the worst
            # good sample 1.27x, the faintest crack 1.35x the largest
            # held-out good distance; a Gaussian per cell flags the bottom
            # half, whose perspective differs, as a whole), so the bundled
            # texture keeps the fixed recipe.
            backbone=args.backbone or "fixed",
            method=args.method,
            description=(
                "Brick wall texture (scikit-image brick.png, CC0, CC0Textures "
                f"'Bricks25'): {brick_photos.N_TRAIN_LARGE} {brick_photos.CROP}px "
                f"and {brick_photos.N_TRAIN_SMALL} {brick_photos.SMALL_CROP}px "
                "crops of the top half, grayscale as RGB."
            ),
            progress=print,
            overwrite=True,
        )

    good = [brick_photos.held_out_crop(photo, x) for x in brick_photos.GOOD_X]
    defective = {
        kind: brick_photos.paint_defect(brick_photos.held_out_crop(photo, x), kind, rng)
        for kind, x in brick_photos.DEFECTS.items()
    }
    write_samples(args.samples, good, defective)
    session = open_session(component / "model.onnx")
    report_samples(session, args.samples)
    extra = brick_photos.more_held_out_crops(photo, rng)
    report_check("more held-out good crops", [score(session, c) for c in extra])
    report_latency(session, ((256, 256), (1920, 1080)))


def flange_photo(photo_set: int, index: int, defect: str | None = None) -> Photo:
    """Photo `index` of a set; each has a seed of its own."""
    return flange_photos.render((FLANGE_SEED, photo_set, index), defect)


def write_flange_training_photos(folder: Path, count: int) -> None:
    """The good photos that train `machined-flange`, as PNG files."""
    for i in range(count):
        image, _ = flange_photo(TRAINING_SET, i)
        save_png(image, folder / f"flange_{i:03d}.png")


def build_flange(args: argparse.Namespace) -> None:
    """The aligned part: rendered photos of good flanges train it with the
    default recipe; the samples and the check are further renders."""
    with tempfile.TemporaryDirectory() as tmp:
        good_dir = Path(tmp) / "flange-good"
        good_dir.mkdir()
        write_flange_training_photos(good_dir, FLANGE_TRAINING_PHOTOS)
        component = build_component(
            good_dir,
            args.models,
            name=FLANGE,
            seed=FLANGE_SEED,
            backbone=args.backbone or "lite0",  # The builder's default recipe.
            method=args.method,
            description=(
                "Turned aluminium flange in an inspection fixture, seen from "
                f"above: {FLANGE_TRAINING_PHOTOS} rendered "
                f"{flange_photos.SIZE}x{flange_photos.SIZE} photos of good "
                "parts (scripts/flange_photos.py), the part up to "
                f"{flange_photos.MAX_SHIFT:g} px and "
                f"{np.degrees(flange_photos.MAX_TILT):g} degrees off."
            ),
            progress=print,
            overwrite=True,
        )

    kinds = flange_photos.DEFECT_KINDS
    good = [flange_photo(SAMPLE_SET, i)[0] for i in range(FLANGE_GOOD_SAMPLES)]
    defective = {
        kind: flange_photo(SAMPLE_SET, FLANGE_GOOD_SAMPLES + k, kind)
        for k, kind in enumerate(kinds)
    }
    samples = args.samples / FLANGE
    write_samples(samples, good, defective)
    session = open_session(component / "model.onnx")
    report_samples(session, samples)
    report_check(
        "more good photos",
        [
            score(session, flange_photo(CHECK_SET, i)[0])
            for i in range(FLANGE_CHECK_GOOD)
        ],
    )
    check_defects = [
        flange_photo(CHECK_SET, FLANGE_CHECK_GOOD + i, kinds[i % len(kinds)])[0]
        for i in range(FLANGE_CHECK_PER_KIND * len(kinds))
    ]
    report_check(
        f"more defective photos ({FLANGE_CHECK_PER_KIND} of each kind)",
        [score(session, image) for image in check_defects],
    )
    photo_size = (flange_photos.SIZE, flange_photos.SIZE)
    report_latency(session, ((256, 256), photo_size, (1920, 1080)))


BUILDERS: dict[str, Callable[[argparse.Namespace], None]] = {
    FLANGE: build_flange,
    BRICK: build_brick,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=ROOT / "models")
    parser.add_argument("--samples", type=Path, default=ROOT / "samples")
    parser.add_argument(
        "--only", choices=BUILDERS, action="append", help="build this one (repeatable)"
    )
    parser.add_argument(
        "--backbone",
        help="train with this backbone instead of the component's own (to compare)",
    )
    parser.add_argument(
        "--method", help="train with this method instead of the backbone's default"
    )
    args = parser.parse_args(argv)
    shipped = (ROOT / "models", ROOT / "samples")
    if (args.backbone or args.method) and (args.models, args.samples) == shipped:
        # The bundled components are built with their own recipes; a
        # comparison must not overwrite them.
        parser.error("--backbone and --method need --models and --samples elsewhere")
    for name in args.only or BUILDERS:
        print(f"== {name}")
        BUILDERS[name](args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
