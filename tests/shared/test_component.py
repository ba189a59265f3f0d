"""shared.component: manifests, component folders and the model directory."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from shared.component import (
    ComponentError,
    Label,
    ModelComponent,
    check_component_name,
    load_component,
    parse_manifest,
    scan_model_dir,
)

SEGMENTATION: dict[str, Any] = {
    "format_version": 1,
    "name": "brick",
    "version": "1.2.3",
    "kind": "segmentation",
    "model_arn": "arn:edge-agent:model/brick/1.2.3",
    "threshold": 0.5,
    "input_size": [256, 128],
    "labels": [
        {"name": "crack", "color": "#FF0000"},
        {"name": "stain", "color": "#00FF7F"},
    ],
    "cores": 2,
    "description": "trained on bricks",
}
CLASSIFICATION: dict[str, Any] = {
    "format_version": 1,
    "name": "brick",
    "version": "1.0.0",
    "kind": "classification",
    "model_arn": "arn:edge-agent:model/brick/1.0.0",
    "threshold": 1,
    "input_size": [64, 64],
    "cores": 1,
}
FOLDER = Path("/models/brick")


def manifest(base: dict[str, Any] | None = None, /, **changes: Any) -> dict[str, Any]:
    data = copy.deepcopy(SEGMENTATION if base is None else base)
    data.update(changes)
    return data


def without(key: str, base: dict[str, Any] | None = None) -> dict[str, Any]:
    data = manifest(base)
    del data[key]
    return data


def error_of(data: Any, folder: Path = FOLDER) -> str:
    with pytest.raises(ComponentError) as info:
        parse_manifest(data, folder)
    return str(info.value)


def test_parse_manifest_segmentation() -> None:
    component = parse_manifest(manifest(), FOLDER)
    assert component == ModelComponent(
        name="brick",
        version="1.2.3",
        kind="segmentation",
        model_arn="arn:edge-agent:model/brick/1.2.3",
        threshold=0.5,
        input_size=(256, 128),
        labels=(Label("crack", "#FF0000"), Label("stain", "#00FF7F")),
        cores=2,
        description="trained on bricks",
        path=FOLDER,
    )
    assert component.is_segmentation
    assert component.model_path == Path("/models/brick/model.onnx")
    assert [label.rgb for label in component.labels] == [(255, 0, 0), (0, 255, 127)]


def test_parse_manifest_classification_without_labels_or_description() -> None:
    component = parse_manifest(manifest(CLASSIFICATION), FOLDER)
    assert component.kind == "classification"
    assert not component.is_segmentation
    assert component.labels == ()
    assert component.description == ""
    assert component.threshold == 1.0
    assert isinstance(component.threshold, float)
    assert component.input_size == (64, 64)
    assert component.cores == 1


def test_parse_manifest_accepts_an_empty_label_list_for_classification() -> None:
    component = parse_manifest(manifest(CLASSIFICATION, labels=[]), FOLDER)
    assert component.labels == ()


@pytest.mark.parametrize(
    ("threshold", "expected"), [(0, 0.0), (0.0, 0.0), (1.0, 1.0), (0.25, 0.25)]
)
def test_parse_manifest_threshold_bounds(threshold: float, expected: float) -> None:
    assert parse_manifest(manifest(threshold=threshold), FOLDER).threshold == expected


def test_parse_manifest_accepts_255_labels() -> None:
    labels = [{"name": f"l{i}", "color": f"#{i:06X}"} for i in range(255)]
    component = parse_manifest(manifest(labels=labels), FOLDER)
    assert len(component.labels) == 255


@pytest.mark.parametrize(
    "key",
    [
        "format_version",
        "name",
        "kind",
        "threshold",
        "input_size",
        "cores",
        "version",
        "model_arn",
    ],
)
def test_parse_manifest_missing_key(key: str) -> None:
    assert error_of(without(key)) == f"manifest.json: missing key {key!r}"


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        (
            "format_version",
            "1",
            "manifest.json: 'format_version' has type str, expected int",
        ),
        ("format_version", 1.0, "manifest.json: 'format_version' has type float, "
         "expected int"),
        ("name", 7, "manifest.json: 'name' has type int, expected str"),
        ("kind", None, "manifest.json: 'kind' has type NoneType, expected str"),
        ("input_size", "64x64", "manifest.json: 'input_size' has type str, "
         "expected list"),
        ("cores", 1.5, "manifest.json: 'cores' has type float, expected int"),
        ("cores", "1", "manifest.json: 'cores' has type str, expected int"),
        ("version", 1, "manifest.json: 'version' has type int, expected str"),
        ("model_arn", [], "manifest.json: 'model_arn' has type list, expected str"),
    ],
)  # fmt: skip
def test_parse_manifest_wrong_type(key: str, value: Any, message: str) -> None:
    assert error_of(manifest(**{key: value})) == message


@pytest.mark.parametrize("key", ["format_version", "cores", "threshold"])
@pytest.mark.parametrize("value", [True, False])
def test_parse_manifest_bool_is_not_a_number(key: str, value: bool) -> None:
    assert error_of(manifest(**{key: value})) == (
        f"manifest.json: {key!r} must not be a boolean"
    )


@pytest.mark.parametrize("value", ["0.5", None, [0.5]])
def test_parse_manifest_threshold_wrong_type_names_the_key(value: Any) -> None:
    message = error_of(manifest(threshold=value))
    assert message.startswith(
        f"manifest.json: 'threshold' has type {type(value).__name__}, expected "
    )


def test_parse_manifest_threshold_wrong_type_message_is_readable() -> None:
    # The message is for an operator: it must not print Python reprs such
    # as "(<class 'int'>, <class 'float'>)".
    message = error_of(manifest(threshold="0.5"))
    assert "<class" not in message, message


@pytest.mark.parametrize(
    "threshold", [-0.01, 1.01, 2, -1, float("nan"), float("inf"), float("-inf")]
)
def test_parse_manifest_threshold_out_of_range(threshold: float) -> None:
    assert error_of(manifest(threshold=threshold)) == (
        "manifest.json: threshold must be within [0, 1]"
    )


def test_parse_manifest_nan_threshold_from_json_text() -> None:
    data = json.loads(
        json.dumps(manifest()).replace('"threshold": 0.5', '"threshold": NaN')
    )
    assert error_of(data) == "manifest.json: threshold must be within [0, 1]"


@pytest.mark.parametrize("kind", ["detection", "Segmentation", "", "classification "])
def test_parse_manifest_bad_kind(kind: str) -> None:
    assert error_of(manifest(kind=kind)) == (
        f"manifest.json: kind {kind!r} is not one of classification, segmentation"
    )


@pytest.mark.parametrize(
    "size",
    [[], [64], [64, 64, 3], [0, 64], [64, 4097], [64.0, 64], [True, 64], ["64", 64]],
)
def test_parse_manifest_bad_input_size(size: list[Any]) -> None:
    assert error_of(manifest(input_size=size)) == (
        "manifest.json: input_size must be [width, height], 1..4096 each"
    )


@pytest.mark.parametrize("cores", [0, -1])
def test_parse_manifest_cores_at_least_one(cores: int) -> None:
    assert error_of(manifest(cores=cores)) == "manifest.json: cores must be at least 1"


@pytest.mark.parametrize("version", [0, 2, -1])
def test_parse_manifest_unsupported_format_version(version: int) -> None:
    assert error_of(manifest(format_version=version)) == (
        f"manifest.json: format_version {version} is not supported; this agent "
        "reads version 1"
    )


def test_parse_manifest_name_differs_from_folder() -> None:
    assert error_of(manifest(name="other")) == (
        "manifest.json: name 'other' differs from the folder name 'brick'; the "
        "folder name is the component name"
    )


@pytest.mark.parametrize("data", [[], "brick", None, 1])
def test_parse_manifest_top_level_not_an_object(data: Any) -> None:
    assert error_of(data) == "manifest.json: the top level must be an object"


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        ("crack", "manifest.json: 'labels' must be a list"),
        ({"name": "crack"}, "manifest.json: 'labels' must be a list"),
        ([], "manifest.json: a segmentation component needs at least one label"),
        (["crack"], "manifest.json: labels[0] is no object"),
        (
            [{"name": "a", "color": "#FF0000"}, 3],
            "manifest.json: labels[1] is no object",
        ),
        ([{"color": "#FF0000"}], "manifest.json: missing key 'name'"),
        ([{"name": "a"}], "manifest.json: missing key 'color'"),
        (
            [{"name": 1, "color": "#FF0000"}],
            "manifest.json: 'name' has type int, expected str",
        ),
        (
            [{"name": "a", "color": 16711680}],
            "manifest.json: 'color' has type int, expected str",
        ),
        (
            [{"name": "a", "color": "#ff0000"}],
            "manifest.json: labels[0].color '#ff0000' must be #RRGGBB in "
            "upper-case hex",
        ),
        (
            [{"name": "a", "color": "FF0000"}],
            "manifest.json: labels[0].color 'FF0000' must be #RRGGBB in "
            "upper-case hex",
        ),
        (
            [{"name": "a", "color": "#F00"}],
            "manifest.json: labels[0].color '#F00' must be #RRGGBB in "
            "upper-case hex",
        ),
        (
            [{"name": "a", "color": "#FF00000"}],
            "manifest.json: labels[0].color '#FF00000' must be #RRGGBB in "
            "upper-case hex",
        ),
        (
            [{"name": "a", "color": "#FF0000\n"}],
            "manifest.json: labels[0].color '#FF0000\\n' must be #RRGGBB in "
            "upper-case hex",
        ),
        (
            [{"name": "a", "color": "#FFFFFF"}],
            "manifest.json: labels[0].color #FFFFFF is used twice or is the "
            "background's #FFFFFF",
        ),
        (
            [{"name": "a", "color": "#FF0000"}, {"name": "b", "color": "#FF0000"}],
            "manifest.json: labels[1].color #FF0000 is used twice or is the "
            "background's #FFFFFF",
        ),
        (
            [{"name": "", "color": "#FF0000"}],
            "manifest.json: labels[0].name must be non-empty and not 'background'",
        ),
        (
            [
                {"name": "a", "color": "#FF0000"},
                {"name": "background", "color": "#00FF00"},
            ],
            "manifest.json: labels[1].name must be non-empty and not 'background'",
        ),
    ],
)  # fmt: skip
def test_parse_manifest_bad_labels(labels: Any, message: str) -> None:
    assert error_of(manifest(labels=labels)) == message


def test_parse_manifest_too_many_labels() -> None:
    labels = [{"name": f"l{i}", "color": f"#{i:06X}"} for i in range(256)]
    assert error_of(manifest(labels=labels)) == (
        "manifest.json: 256 labels; at most 255 are supported, since masks hold "
        "one byte of label index per pixel"
    )


def test_parse_manifest_labels_on_classification() -> None:
    data = manifest(CLASSIFICATION, labels=[{"name": "a", "color": "#FF0000"}])
    assert error_of(data) == "manifest.json: a classification component has no labels"


def test_parse_manifest_labels_not_a_list_on_classification() -> None:
    data = manifest(CLASSIFICATION, labels="none")
    assert error_of(data) == "manifest.json: 'labels' must be a list"


def test_component_error_is_a_value_error() -> None:
    assert issubclass(ComponentError, ValueError)


# load_component ------------------------------------------------------------


def write_folder(root: Path, data: Any, *, model: bool = True) -> Path:
    folder = root / (data.get("name", "brick") if isinstance(data, dict) else "brick")
    folder.mkdir(parents=True, exist_ok=True)
    text = data if isinstance(data, str) else json.dumps(data)
    (folder / "manifest.json").write_text(text, encoding="utf-8")
    if model:
        (folder / "model.onnx").write_bytes(b"graph")
    return folder


def test_load_component_good(tmp_path: Path) -> None:
    folder = write_folder(tmp_path, manifest())
    component = load_component(folder)
    assert component == parse_manifest(manifest(), folder)
    assert component.path == folder
    assert component.model_path == folder / "model.onnx"


def test_load_component_missing_manifest(tmp_path: Path) -> None:
    folder = tmp_path / "brick"
    folder.mkdir()
    with pytest.raises(ComponentError) as info:
        load_component(folder)
    assert str(info.value) == f"{folder / 'manifest.json'} does not exist"


def test_load_component_missing_model(tmp_path: Path) -> None:
    folder = write_folder(tmp_path, manifest(), model=False)
    with pytest.raises(ComponentError) as info:
        load_component(folder)
    assert str(info.value) == f"{folder / 'model.onnx'} does not exist"


def test_load_component_model_is_a_directory(tmp_path: Path) -> None:
    folder = write_folder(tmp_path, manifest(), model=False)
    (folder / "model.onnx").mkdir()
    with pytest.raises(ComponentError) as info:
        load_component(folder)
    assert str(info.value) == f"{folder / 'model.onnx'} does not exist"


def test_load_component_invalid_json(tmp_path: Path) -> None:
    folder = write_folder(tmp_path, '{"format_version": 1, "name": "brick"')
    with pytest.raises(ComponentError) as info:
        load_component(folder)
    assert str(info.value).startswith("manifest.json is not valid JSON: ")


def test_load_component_not_utf8(tmp_path: Path) -> None:
    folder = tmp_path / "brick"
    folder.mkdir()
    (folder / "manifest.json").write_bytes(b'{"name": "\xff"}')
    with pytest.raises(ComponentError) as info:
        load_component(folder)
    assert str(info.value).startswith(f"cannot read {folder / 'manifest.json'}: ")


def test_load_component_bad_field_names_the_key(tmp_path: Path) -> None:
    folder = write_folder(tmp_path, without("cores"))
    with pytest.raises(ComponentError) as info:
        load_component(folder)
    assert str(info.value) == "manifest.json: missing key 'cores'"


def test_load_component_name_mismatch(tmp_path: Path) -> None:
    folder = write_folder(tmp_path, manifest())
    renamed = folder.rename(tmp_path / "brick-2")
    with pytest.raises(ComponentError) as info:
        load_component(renamed)
    assert str(info.value) == (
        "manifest.json: name 'brick' differs from the folder name 'brick-2'; "
        "the folder name is the component name"
    )


# scan_model_dir ------------------------------------------------------------


def test_scan_model_dir_lists_folders_with_manifests_only(tmp_path: Path) -> None:
    write_folder(tmp_path, manifest(name="zeta"))
    write_folder(tmp_path, manifest(name="alpha"), model=False)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "manifest.json").write_text("{")
    (tmp_path / "empty").mkdir()
    (tmp_path / "only-model").mkdir()
    (tmp_path / "only-model" / "model.onnx").write_bytes(b"graph")
    (tmp_path / "file.json").write_text("{}")
    (tmp_path / "manifest.json").write_text("{}")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "manifest.json").write_text("{}")
    (tmp_path / "bad name").mkdir()
    (tmp_path / "bad name" / "manifest.json").write_text("{}")
    assert scan_model_dir(tmp_path) == ["alpha", "broken", "zeta"]


def test_scan_model_dir_missing_or_not_a_directory(tmp_path: Path) -> None:
    assert scan_model_dir(tmp_path / "absent") == []
    (tmp_path / "file").write_text("")
    assert scan_model_dir(tmp_path / "file") == []
    assert scan_model_dir(tmp_path) == []


@pytest.mark.parametrize("name", ["a", "Brick_2.v1", "9-lives", "x" * 128])
def test_check_component_name_accepts(name: str) -> None:
    assert check_component_name(name) is None


@pytest.mark.parametrize(
    "name", ["-a", ".", "..", "../x", "a/b", "a b", "x" * 129, "é", "a\0", "a\n"]
)
def test_check_component_name_rejects(name: str) -> None:
    assert check_component_name(name) == (
        f"model_component {name[:140]!r} is not a valid name: use 1 to 128 "
        "letters, digits, '.', '-' or '_', starting with a letter or digit"
    )


def test_check_component_name_empty() -> None:
    assert check_component_name("") == (
        "model_component is empty; give the name of a model component"
    )
