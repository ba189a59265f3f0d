"""Model components: the folder format, and reading it safely.

A model component is a folder ``<model_dir>/<name>/`` holding ``manifest.json``
and ``model.onnx``. The folder name is the component name clients send; a
manifest that names itself differently is refused. ``docs/components.md``
describes the format and the graph interface.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MANIFEST_FILE = "manifest.json"
MODEL_FILE = "model.onnx"
FORMAT_VERSION = 1
KINDS = ("classification", "segmentation")
BACKGROUND_NAME = "background"
BACKGROUND_COLOR = "#FFFFFF"

# Greengrass component names: letters, digits, '.', '-', '_'. Nothing that
# could climb out of the model directory.
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_COLOR_RE = re.compile(r"^#[0-9A-F]{6}$")

# Masks carry one byte of label index per pixel, index 0 being background.
MAX_LABELS = 255
# Largest working width or height a manifest may ask for.
MAX_INPUT_SIDE = 4096


class ComponentError(ValueError):
    """A model component that cannot be used, with the reason."""


def check_component_name(name: str) -> str | None:
    """Say what is wrong with a component name, or None when it is valid."""
    if not name:
        return "model_component is empty; give the name of a model component"
    if not _NAME_RE.fullmatch(name):
        return (
            f"model_component {name[:140]!r} is not a valid name: use 1 to 128 "
            "letters, digits, '.', '-' or '_', starting with a letter or digit"
        )
    return None


@dataclass(frozen=True)
class Label:
    """One anomaly type of a segmentation model and its mask color."""

    name: str
    color: str

    @property
    def rgb(self) -> tuple[int, int, int]:
        value = int(self.color[1:], 16)
        return (value >> 16) & 0xFF, (value >> 8) & 0xFF, value & 0xFF


@dataclass(frozen=True)
class ModelComponent:
    """A validated manifest, with the paths of the component's files."""

    name: str
    version: str
    kind: str
    model_arn: str
    threshold: float
    input_size: tuple[int, int]
    labels: tuple[Label, ...]
    cores: int
    description: str
    path: Path

    @property
    def model_path(self) -> Path:
        return self.path / MODEL_FILE

    @property
    def is_segmentation(self) -> bool:
        return self.kind == "segmentation"


def _require(data: dict[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    if key not in data:
        raise ComponentError(f"{MANIFEST_FILE}: missing key {key!r}")
    value = data[key]
    # bool is an int in Python; a manifest saying "cores": true is wrong.
    if isinstance(value, bool) and kind is not bool:
        raise ComponentError(f"{MANIFEST_FILE}: {key!r} must not be a boolean")
    if not isinstance(value, kind):
        kinds = kind if isinstance(kind, tuple) else (kind,)
        expected = " or ".join(k.__name__ for k in kinds)
        raise ComponentError(
            f"{MANIFEST_FILE}: {key!r} has type {type(value).__name__}, "
            f"expected {expected}"
        )
    return value


def _parse_labels(data: dict[str, Any], kind: str) -> tuple[Label, ...]:
    raw = data.get("labels", [])
    if not isinstance(raw, list):
        raise ComponentError(f"{MANIFEST_FILE}: 'labels' must be a list")
    if kind == "classification":
        if raw:
            raise ComponentError(
                f"{MANIFEST_FILE}: a classification component has no labels"
            )
        return ()
    if not raw:
        raise ComponentError(
            f"{MANIFEST_FILE}: a segmentation component needs at least one label"
        )
    if len(raw) > MAX_LABELS:
        raise ComponentError(
            f"{MANIFEST_FILE}: {len(raw)} labels; at most {MAX_LABELS} are "
            "supported, since masks hold one byte of label index per pixel"
        )
    labels = []
    seen_colors = {BACKGROUND_COLOR}
    for index, item in enumerate(raw):
        if not isinstance(item, dict):
            raise ComponentError(f"{MANIFEST_FILE}: labels[{index}] is no object")
        name = _require(item, "name", str)
        color = _require(item, "color", str)
        if not _COLOR_RE.fullmatch(color):
            raise ComponentError(
                f"{MANIFEST_FILE}: labels[{index}].color {color!r} must be "
                "#RRGGBB in upper-case hex"
            )
        if color in seen_colors:
            raise ComponentError(
                f"{MANIFEST_FILE}: labels[{index}].color {color} is used twice "
                f"or is the background's {BACKGROUND_COLOR}"
            )
        if not name or name == BACKGROUND_NAME:
            raise ComponentError(
                f"{MANIFEST_FILE}: labels[{index}].name must be non-empty and "
                f"not {BACKGROUND_NAME!r}"
            )
        seen_colors.add(color)
        labels.append(Label(name=name, color=color))
    return tuple(labels)


def parse_manifest(data: Any, path: Path) -> ModelComponent:
    """Validate a decoded manifest for the component folder ``path``."""
    if not isinstance(data, dict):
        raise ComponentError(f"{MANIFEST_FILE}: the top level must be an object")
    version = _require(data, "format_version", int)
    if version != FORMAT_VERSION:
        raise ComponentError(
            f"{MANIFEST_FILE}: format_version {version} is not supported; "
            f"this agent reads version {FORMAT_VERSION}"
        )
    name = _require(data, "name", str)
    if name != path.name:
        raise ComponentError(
            f"{MANIFEST_FILE}: name {name!r} differs from the folder name "
            f"{path.name!r}; the folder name is the component name"
        )
    kind = _require(data, "kind", str)
    if kind not in KINDS:
        raise ComponentError(
            f"{MANIFEST_FILE}: kind {kind!r} is not one of {', '.join(KINDS)}"
        )
    threshold = float(_require(data, "threshold", (int, float)))
    if not 0.0 <= threshold <= 1.0:
        raise ComponentError(f"{MANIFEST_FILE}: threshold must be within [0, 1]")
    size = _require(data, "input_size", list)
    if (
        len(size) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in size)
        or not all(1 <= v <= MAX_INPUT_SIDE for v in size)
    ):
        raise ComponentError(
            f"{MANIFEST_FILE}: input_size must be [width, height], "
            f"1..{MAX_INPUT_SIDE} each"
        )
    cores = _require(data, "cores", int)
    if cores < 1:
        raise ComponentError(f"{MANIFEST_FILE}: cores must be at least 1")
    return ModelComponent(
        name=name,
        version=str(_require(data, "version", str)),
        kind=kind,
        model_arn=str(_require(data, "model_arn", str)),
        threshold=threshold,
        input_size=(size[0], size[1]),
        labels=_parse_labels(data, kind),
        cores=cores,
        description=str(data.get("description", "")),
        path=path,
    )


def load_component(path: Path) -> ModelComponent:
    """Read and validate the component in folder ``path``."""
    manifest = path / MANIFEST_FILE
    try:
        text = manifest.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ComponentError(f"{manifest} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ComponentError(f"cannot read {manifest}: {exc}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ComponentError(f"{MANIFEST_FILE} is not valid JSON: {exc}") from exc
    component = parse_manifest(data, path)
    if not component.model_path.is_file():
        raise ComponentError(f"{component.model_path} does not exist")
    return component


def scan_model_dir(model_dir: Path) -> list[str]:
    """Names of the component folders in ``model_dir``, sorted.

    A folder counts as a component when it holds a manifest, even a broken
    one: it is listed, and starting it fails with the reason.
    """
    if not model_dir.is_dir():
        return []
    return sorted(
        entry.name
        for entry in model_dir.iterdir()
        if entry.is_dir()
        and (entry / MANIFEST_FILE).exists()
        and check_component_name(entry.name) is None
    )
