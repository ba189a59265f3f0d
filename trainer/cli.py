"""Command line: `edge-agent train GOOD_DIR --out DIR --name NAME [...]`.

Progress counters of long steps go to stderr; messages to stdout.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from trainer.fit import BACKBONES, KINDS, METHODS, TrainingError, build_component


def _size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected WIDTHxHEIGHT, got {text!r}"
        ) from None
    return width, height


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edge-agent train",
        description="Fit an anomaly-detection model component from good photos.",
    )
    parser.add_argument("good_dir", type=Path, help="folder of good PNG/JPEG photos")
    parser.add_argument("--out", type=Path, required=True, help="models folder")
    parser.add_argument("--name", required=True, help="component name, e.g. brick")
    parser.add_argument(
        "--kind",
        choices=KINDS,
        default="segmentation",
        help="segmentation: score and a per-pixel mask (default); "
        "classification: score only",
    )
    parser.add_argument(
        "--version", default="1.0.0", help="MAJOR.MINOR.PATCH (default 1.0.0)"
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="picks the photos held out to set the threshold, and any random "
        "step; the same seed and photos give the same bytes (default 0)",
    )
    parser.add_argument(
        "--backbone",
        choices=BACKBONES,
        default="lite0",
        help="lite0, lite1, lite2: ImageNet-pretrained EfficientNet-Lite (needs "
        "the train extra; lite0 measured best); fixed: fixed filter bank, no "
        "torch (default lite0)",
    )
    parser.add_argument(
        "--method",
        choices=METHODS,
        help="gaussian: a Gaussian per image cell, for parts in a fixed pose "
        "(the pretrained backbones' default); patchcore: a memory bank shared "
        "by all cells, for textures and parts in any position (fixed's default)",
    )
    parser.add_argument(
        "--defects",
        type=Path,
        metavar="DIR",
        help="MVTec-layout folder (test/<kind>, ground_truth/<kind>) to "
        "calibrate on real defects and label each defect kind in the mask",
    )
    parser.add_argument(
        "--force", action="store_true", help="replace an existing component"
    )
    parser.add_argument(
        "--cores",
        type=int,
        default=1,
        help="CPU cores the agent gives the model's worker (default 1)",
    )
    parser.add_argument(
        "--input-size",
        type=_size,
        default=(256, 256),
        metavar="WxH",
        help="working size the graph resizes to (default 256x256); sides "
        "from 64 to 4096, multiples of 32 for a pretrained backbone's "
        "gaussian method, 16 for fixed's, 8 for patchcore",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the trainer CLI; `argv` excludes the `train` subcommand word."""
    args = _parser().parse_args(argv)
    try:
        component = build_component(
            args.good_dir,
            args.out,
            name=args.name,
            kind=args.kind,
            version=args.version,
            cores=args.cores,
            seed=args.seed,
            backbone=args.backbone,
            method=args.method,
            defects_dir=args.defects,
            input_size=args.input_size,
            progress=print,
            overwrite=args.force,
        )
    except TrainingError as exc:
        print(f"edge-agent train: error: {exc}", file=sys.stderr)
        return 2
    print(f"done: {component}")
    return 0
