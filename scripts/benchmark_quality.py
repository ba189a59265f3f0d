"""Benchmark the trainer's recipes on an MVTec-layout data set.

    .venv/bin/python scripts/benchmark_quality.py DATA_DIR [--out docs/model-quality.md]

Each recipe is trained on DATA_DIR/train/good only (the threshold comes from
the good photos, with the trainer's documented rule) and evaluated on every
photo of DATA_DIR/test: image AUROC, pixel AUROC, F1, false-alarm rate on
good photos and fraction of defective photos caught at the model's own
threshold (score >= 0.5), the median end-to-end latency at the working size
through ONNX Runtime on 2 threads, and the model size. Figures per defect
kind are reported too, and the default recipe's own threshold under other
split seeds, with the outlier fence and without it. The first two rounds
of settings were chosen looking at blowholes only, so the other kinds were
their hidden check; the third round looked at both (docs/model-quality.md
says which settings).
The data never enters the repository; only the table is written.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from shared.images import load_rgb  # noqa: E402
from trainer.fit import (  # noqa: E402
    IMAGE_SUFFIXES,
    RECIPES,
    Recipe,
    build_component,
)
from trainer.metrics import auroc, f1_at  # noqa: E402

THREADS = 2
LATENCY_RUNS = 40
LATENCY_ROUNDS = 5
# Settings were chosen on this kind; every other kind is the hidden check.
TUNED_KIND = "blowhole"
NOTES_HEADING = "## Against the targets"


@dataclass(frozen=True)
class Candidate:
    name: str
    recipe: Recipe
    input_size: tuple[int, int]


CANDIDATES = (
    Candidate("lite0 gaussian 256 (default)", RECIPES["lite0", "gaussian"], (256, 256)),
    Candidate(
        "lite0 gaussian 256, bilinear resize (the previous default)",
        dataclasses.replace(RECIPES["lite0", "gaussian"], resample="linear"),
        (256, 256),
    ),
    Candidate(
        "lite0 gaussian 320 (--input-size 320x320)",
        RECIPES["lite0", "gaussian"],
        (320, 320),
    ),
    Candidate(
        "lite1 gaussian 256 (--backbone lite1)",
        RECIPES["lite1", "gaussian"],
        (256, 256),
    ),
    Candidate(
        "lite2 gaussian 256 (--backbone lite2)",
        RECIPES["lite2", "gaussian"],
        (256, 256),
    ),
    Candidate(
        "lite0 patchcore 256 (--method patchcore)",
        RECIPES["lite0", "patchcore"],
        (256, 256),
    ),
    Candidate(
        "fixed patchcore 256 (--backbone fixed)",
        RECIPES["fixed", "patchcore"],
        (256, 256),
    ),
)


@dataclass
class Sample:
    kind: str
    image: np.ndarray
    mask: np.ndarray


def load_test(root: Path) -> list[Sample]:
    samples = []
    for kind_dir in sorted(p for p in (root / "test").iterdir() if p.is_dir()):
        for path in sorted(kind_dir.iterdir()):
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            image = load_rgb(path)
            mask = np.zeros(image.shape[:2], dtype=bool)
            if kind_dir.name != "good":
                gt = root / "ground_truth" / kind_dir.name / f"{path.stem}.png"
                if not gt.exists():
                    gt = gt.with_name(f"{path.stem}_mask.png")
                with Image.open(gt) as img:
                    mask = np.asarray(img.convert("L")) > 127
            samples.append(Sample(kind_dir.name, image, mask))
    return samples


def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _time_runs(component: Path) -> list[float]:
    """Seconds per run of `component` at its working size, after warm-up."""
    session = _session(component / "model.onnx")
    width, height = json.loads((component / "manifest.json").read_text())["input_size"]
    feed = {
        "image": np.random.default_rng(0).integers(
            0, 256, (height, width, 3), dtype=np.uint8
        )
    }
    for _ in range(5):
        session.run(None, feed)
    times = []
    for _ in range(LATENCY_RUNS):
        start = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - start)
    return times


def latencies_ms(components: dict[str, Path]) -> dict[str, float]:
    """Median end-to-end latency of each component at its working size.

    Each measurement runs in a process of its own with one session, as in
    a worker: two sessions in one process measured up to 2x slow, their
    thread pools contending. The models take turns, LATENCY_ROUNDS times
    over, so a slow spell on a shared machine falls on all of them.
    """
    times: dict[str, list[float]] = {name: [] for name in components}
    for _ in range(LATENCY_ROUNDS):
        for name, component in components.items():
            done = subprocess.run(
                [sys.executable, __file__, "--time-runs", str(component)],
                check=True,
                capture_output=True,
                text=True,
            )
            times[name] += json.loads(done.stdout)
    return {name: 1000 * statistics.median(t) for name, t in times.items()}


def caught_at_false_alarms(good: np.ndarray, bad: np.ndarray, rate: float) -> float:
    """What the ranking allows at all: the share of `bad` caught at the
    lowest threshold that flags at most `rate` of `good` (an oracle that
    looks at the test's good photos, not a model's own threshold).

    At most 3 of 160 good photos for 2%: the threshold is the 4th-highest
    good score and only scores above it count.
    """
    allowed = int(np.floor(rate * len(good) + 1e-9))
    ranked = np.sort(good)[::-1]
    if allowed >= len(ranked):
        return 1.0
    return float((bad > ranked[allowed]).mean())


def evaluate(component: Path, samples: list[Sample]) -> dict[str, Any]:
    session = _session(component / "model.onnx")
    scores, pixel_scores, pixel_labels = [], [], []
    for sample in samples:
        score, _mask, amap = session.run(None, {"image": sample.image})
        scores.append(float(score[0]))
        # Every 4th pixel each way: pixel AUROC to 3 decimals at 1/16 the cost.
        pixel_scores.append(amap[::4, ::4].ravel())
        pixel_labels.append(sample.mask[::4, ::4].ravel())
    kinds = np.array([s.kind for s in samples])
    score_arr = np.array(scores)
    labels = kinds != "good"
    px_s = np.concatenate(pixel_scores)
    px_l = np.concatenate(pixel_labels)
    flagged = score_arr >= 0.5
    result: dict[str, Any] = {
        "image_auroc": auroc(labels, score_arr),
        "pixel_auroc": auroc(px_l, px_s),
        "f1": f1_at(labels, score_arr, 0.5),
        "false_alarms": float(flagged[~labels].mean()),
        "caught": float(flagged[labels].mean()),
        "caught_at_2pct": caught_at_false_alarms(
            score_arr[~labels], score_arr[labels], 0.02
        ),
        "size_mb": (component / "model.onnx").stat().st_size / 1e6,
    }
    per_kind = {}
    good = kinds == "good"
    offsets = np.cumsum([0] + [len(p) for p in pixel_scores])
    for kind in sorted(set(kinds) - {"good"}):
        keep = good | (kinds == kind)
        idx = np.flatnonzero(keep)
        px_keep = np.concatenate([np.arange(offsets[i], offsets[i + 1]) for i in idx])
        per_kind[kind] = {
            "image_auroc": auroc(labels[keep], score_arr[keep]),
            "pixel_auroc": auroc(px_l[px_keep], px_s[px_keep]),
            "caught": float(flagged[kinds == kind].mean()),
        }
    result["per_kind"] = per_kind
    return result


def _table(results: dict[str, dict[str, Any]]) -> str:
    lines = [
        "| recipe | image AUROC | pixel AUROC | F1 | false alarms (good) "
        "| defective caught | caught at 2% false alarms (oracle) "
        "| latency ms (2 threads, median) | model MB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | {r['image_auroc']:.4f} | {r['pixel_auroc']:.4f} "
            f"| {r['f1']:.3f} | {100 * float(r['false_alarms']):.1f}% "
            f"| {100 * float(r['caught']):.1f}% "
            f"| {100 * float(r['caught_at_2pct']):.1f}% "
            f"| {r['latency_ms']:.1f} "
            f"| {r['size_mb']:.2f} |"
        )
    lines += [
        "",
        "Per defect kind (test/good plus that kind). The first two rounds "
        f"chose settings on `{TUNED_KIND}` only, the others hidden; the third "
        "and fifth rounds (the stride-32 taps, 200 dims, 4x4 blocks, the fine "
        "map; the bicubic resize) looked at both kinds:",
        "",
        "| recipe | kind | role | image AUROC | pixel AUROC | caught |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        for kind, k in r["per_kind"].items():
            role = "tuned" if kind == TUNED_KIND else "hidden"
            lines.append(
                f"| {name} | {kind} | {role} | {k['image_auroc']:.4f} "
                f"| {k['pixel_auroc']:.4f} | {100 * k['caught']:.1f}% |"
            )
    return "\n".join(lines)


def defects_check(data_dir: Path, samples: list[Sample], tmp: Path) -> str:
    """Calibrate with --defects on the tuned kind only; score the others.

    The defect folder links (never copies) the tuned kind's test photos and
    masks; the figures are on test/good plus the hidden kinds, which the
    calibration never saw.
    """
    root = tmp / "tuned-defects"
    for sub in ("test", "ground_truth"):
        (root / sub).mkdir(parents=True)
        (root / sub / TUNED_KIND).symlink_to((data_dir / sub / TUNED_KIND).resolve())
    component = build_component(
        data_dir / "train" / "good",
        tmp,
        name="calibrated",
        defects_dir=root,
        progress=print,
    )
    hidden = [s for s in samples if s.kind != TUNED_KIND]
    result = evaluate(component, hidden)
    labels = json.loads((component / "manifest.json").read_text())["labels"]
    return (
        f"Default recipe calibrated with `--defects` on `{TUNED_KIND}` only "
        f"(labels {[label['name'] for label in labels]}), evaluated on "
        f"test/good and the hidden kinds ({len(hidden)} photos): false alarms "
        f"{100 * float(result['false_alarms']):.1f}%, defective caught "
        f"{100 * float(result['caught']):.1f}%, F1 {result['f1']:.3f}, "
        f"image AUROC {result['image_auroc']:.4f}."
    )


SPLIT_SEEDS = (1, 2, 3, 4)


def seed_check(data_dir: Path, samples: list[Sample], tmp: Path) -> str:
    """The default recipe under other split seeds, with the bicubic resize
    and the previous bilinear one side by side.

    The seed picks which good photos are held out to set the threshold; a
    gain that holds for one draw only is no gain for a line.
    """
    default = RECIPES["lite0", "gaussian"]
    variants = {
        "bicubic (default)": default,
        "bilinear (previous)": dataclasses.replace(default, resample="linear"),
    }
    lines = [
        "| split seed | resize | held-out photos left out | image AUROC "
        "| false alarms (good) | defective caught "
        "| caught at 2% false alarms (oracle) |",
        "|---|---|---|---|---|---|---|",
    ]
    for seed in SPLIT_SEEDS:
        for variant, recipe in variants.items():
            component = build_component(
                data_dir / "train" / "good",
                tmp,
                name=f"seed-{seed}-{recipe.resample or 'default'}",
                recipe=recipe,
                seed=seed,
                progress=print,
            )
            result = evaluate(component, samples)
            description = json.loads((component / "manifest.json").read_text())[
                "description"
            ]
            found = re.search(r"(\d+) outlying left out", description)
            if found is None and "outlying" in description:
                raise RuntimeError(f"no count of outlying photos in: {description}")
            left_out = found.group(1) if found else "0"
            lines.append(
                f"| {seed} | {variant} | {left_out} "
                f"| {result['image_auroc']:.4f} "
                f"| {100 * float(result['false_alarms']):.1f}% "
                f"| {100 * float(result['caught']):.1f}% "
                f"| {100 * float(result['caught_at_2pct']):.1f}% |"
            )
    return (
        "Default recipe with other split seeds (seed 0 is the table above), "
        "each threshold the component's own:\n\n" + "\n".join(lines)
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--time-runs"]:
        # Internal: one latency measurement, in a process of its own.
        print(json.dumps(_time_runs(Path(argv[1]))))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "model-quality.md")
    parser.add_argument(
        "--recipes", nargs="*", help="indices into CANDIDATES to run (default all)"
    )
    parser.add_argument("--no-defects-check", action="store_true")
    parser.add_argument("--no-seed-check", action="store_true")
    args = parser.parse_args(argv)

    samples = load_test(args.data_dir)
    print(f"loaded {len(samples)} test photos", flush=True)
    results: dict[str, dict[str, Any]] = {}
    components: dict[str, Path] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, candidate in enumerate(CANDIDATES):
            if args.recipes and str(i) not in args.recipes:
                continue
            start = time.perf_counter()
            component = build_component(
                args.data_dir / "train" / "good",
                Path(tmp),
                name=f"recipe-{i}",
                recipe=candidate.recipe,
                input_size=candidate.input_size,
                progress=print,
            )
            train_s = time.perf_counter() - start
            results[candidate.name] = evaluate(component, samples)
            results[candidate.name]["train_s"] = train_s
            components[candidate.name] = component
            print(json.dumps(results[candidate.name], indent=1), flush=True)
        for name, latency in latencies_ms(components).items():
            results[name]["latency_ms"] = latency
            print(f"{name}: {latency:.2f} ms", flush=True)
        check = (
            ""
            if args.no_defects_check
            else defects_check(args.data_dir, samples, Path(tmp))
        )
        seeds = (
            "" if args.no_seed_check else seed_check(args.data_dir, samples, Path(tmp))
        )
    table = _table(results) + "\n\n" + check + "\n\n" + seeds
    print(table)
    # The hand-written analysis below the tables survives a rerun.
    kept = ""
    if args.out.exists():
        text = args.out.read_text()
        if NOTES_HEADING in text:
            kept = "\n" + text[text.index(NOTES_HEADING) :]
    args.out.write_text(
        "# Model quality\n\n"
        f"Measured by `scripts/benchmark_quality.py` on `{args.data_dir.name}` "
        "(train on train/good, evaluate on all of test/).\n\n" + table + "\n" + kept
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
