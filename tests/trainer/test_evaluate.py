"""Tests for ``edge-agent evaluate`` on a tiny MVTec-layout folder.

The photos are flat 64x64 images with a square of another red level, and
the test component ``red-map`` scores by the red channel alone, so every
figure of the report can be worked out by hand (see ``dataset``).
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from shared.component import load_component
from tests.agent import agent_context
from tests.model_factory import write_component
from trainer.evaluate import AgentScorer, EvaluationError, PixelHistogram, main
from trainer.metrics import auroc

SIDE = 64
SQUARE = 16
BACKGROUND = 40


def _red_map_graph() -> onnx.ModelProto:
    """anomaly_map = red / 255, mask = map >= 0.5, score = max of the map."""

    def const(name: str, value: np.ndarray) -> onnx.NodeProto:
        return helper.make_node(
            "Constant", [], [name], value=numpy_helper.from_array(value, name)
        )

    nodes = [
        const("start", np.array([0], np.int64)),
        const("end", np.array([1], np.int64)),
        const("axis", np.array([2], np.int64)),
        helper.make_node("Slice", ["image", "start", "end", "axis"], ["red_u8"]),
        helper.make_node("Cast", ["red_u8"], ["red"], to=TensorProto.FLOAT),
        const("scale", np.array(1 / 255, np.float32)),
        helper.make_node("Mul", ["red", "scale"], ["map_hw1"]),
        helper.make_node("Squeeze", ["map_hw1", "axis"], ["anomaly_map"]),
        const("half", np.array(0.5, np.float32)),
        helper.make_node("GreaterOrEqual", ["anomaly_map", "half"], ["hot"]),
        helper.make_node("Cast", ["hot"], ["mask"], to=TensorProto.UINT8),
        helper.make_node("ReduceMax", ["anomaly_map"], ["peak"], keepdims=0),
        const("one", np.array([1], np.int64)),
        helper.make_node("Reshape", ["peak", "one"], ["score"]),
    ]
    graph = helper.make_graph(
        nodes,
        "red-map",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, ["h", "w", 3])],
        [
            helper.make_tensor_value_info("score", TensorProto.FLOAT, [1]),
            helper.make_tensor_value_info("mask", TensorProto.UINT8, ["h", "w"]),
            helper.make_tensor_value_info("anomaly_map", TensorProto.FLOAT, ["h", "w"]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _write_red_map(model_dir: Path) -> Path:
    folder = model_dir / "red-map"
    folder.mkdir(parents=True)
    onnx.save(_red_map_graph(), str(folder / "model.onnx"))
    manifest = {
        "format_version": 1,
        "name": "red-map",
        "version": "1.0.0",
        "kind": "segmentation",
        "model_arn": "arn:edge-agent:model/red-map/1.0.0",
        "threshold": 0.5,
        "input_size": [SIDE, SIDE],
        "labels": [{"name": "anomaly", "color": "#FF0000"}],
        "cores": 1,
        "description": "test model: the red channel is the anomaly map",
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def _photo(red_square: int | None, corner: tuple[int, int] = (8, 8)) -> np.ndarray:
    image = np.full((SIDE, SIDE, 3), BACKGROUND, np.uint8)
    if red_square is not None:
        y, x = corner
        image[y : y + SQUARE, x : x + SQUARE, 0] = red_square
    return image


def _square_mask(corner: tuple[int, int] = (8, 8)) -> Image.Image:
    mask = np.zeros((SIDE, SIDE), np.uint8)
    y, x = corner
    mask[y : y + SQUARE, x : x + SQUARE] = 255
    return Image.fromarray(mask)


def _save(image: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)


def _make_dataset(root: Path) -> Path:
    """Six photos: three good, two with a bright square, one with a faint one.

    Red levels: good 40 (flat), 100 (a grayscale PNG) and 140 (flat, so a
    false alarm); "spot" 255 squares, "faint" a 120 square (missed).
    """
    test, truth = root / "test", root / "ground_truth"
    _save(_photo(None), test / "good" / "g0.png")
    gray = Image.fromarray(np.full((SIDE, SIDE), 100, np.uint8))
    gray.save(test / "good" / "g1.png")
    _save(np.full((SIDE, SIDE, 3), (140, 40, 40), np.uint8), test / "good" / "g2.png")
    _save(_photo(255), test / "spot" / "s0.png")
    _save(_photo(255, (30, 40)), test / "spot" / "s1.png")
    _save(_photo(120), test / "faint" / "f0.png")
    (truth / "spot").mkdir(parents=True)
    (truth / "faint").mkdir(parents=True)
    _square_mask().save(truth / "spot" / "s0.png")
    # MVTec proper names masks <stem>_mask.png.
    _square_mask((30, 40)).save(truth / "spot" / "s1_mask.png")
    _square_mask().save(truth / "faint" / "f0.png")
    return root


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _make_dataset(tmp_path_factory.mktemp("mvtec"))


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("models")
    _write_red_map(folder)
    write_component(folder, "color-seg")
    return folder


def _run(component: Path, data: Path, report: Path, *extra: str) -> dict[str, Any]:
    code = main([str(component), str(data), "--out", str(report), *extra])
    assert code == 0
    summary: dict[str, Any] = json.loads((report / "summary.json").read_text())
    return summary


def _rows(report: Path) -> list[dict[str, str]]:
    with (report / "results.csv").open(newline="") as stream:
        return list(csv.DictReader(stream))


# Worked out by hand from the photos: see _make_dataset.
NEGATIVE_PIXELS = 3 * SIDE * SIDE + 3 * (SIDE * SIDE - SQUARE * SQUARE)
PIXEL_AUROC = (
    2 * SQUARE**2 * NEGATIVE_PIXELS + SQUARE**2 * (NEGATIVE_PIXELS - SIDE * SIDE)
) / (3 * SQUARE**2 * NEGATIVE_PIXELS)
TP, FP, FN = 2 * SQUARE**2, SIDE * SIDE, SQUARE**2


def test_offline_figures(models: Path, dataset: Path, tmp_path: Path) -> None:
    summary = _run(models / "red-map", dataset, tmp_path, "--threads", "1")

    overall = summary["overall"]
    assert overall["photos"] == 6
    assert overall["defective_photos"] == 3
    # Positives 1, 1, 120/255 against 40, 100, 140 (/255): 8 of 9 pairs.
    assert overall["image_auroc"] == pytest.approx(8 / 9)
    assert overall["image_f1"] == pytest.approx(2 / 3)
    assert overall["false_alarm_rate"] == pytest.approx(1 / 3)
    assert overall["caught_rate"] == pytest.approx(2 / 3)
    pixel = overall["pixel"]
    assert pixel["auroc"] == pytest.approx(PIXEL_AUROC)
    assert pixel["auroc_error_bound"] == 0.0  # no bin holds both classes
    assert pixel["f1"] == pytest.approx(2 * TP / (2 * TP + FP + FN))
    assert pixel["iou"] == pytest.approx(TP / (TP + FP + FN))
    assert pixel["false_positive_rate"] == pytest.approx(FP / NEGATIVE_PIXELS)
    assert summary["pixel_auroc_unavailable"] is None

    spot, faint, good = (summary["kinds"][k] for k in ("spot", "faint", "good"))
    assert list(summary["kinds"]) == ["good", "faint", "spot"]
    assert (spot["photos"], spot["image_auroc"], spot["caught_rate"]) == (2, 1.0, 1.0)
    assert spot["image_f1"] == pytest.approx(0.8)
    assert spot["pixel"]["auroc"] == 1.0
    assert spot["pixel"]["f1"] == pytest.approx(2 * TP / (2 * TP + FP))
    assert faint["image_auroc"] == pytest.approx(2 / 3)
    assert (faint["caught_rate"], faint["image_f1"]) == (0.0, 0.0)
    assert good["photos"] == 3
    assert good["false_alarm_rate"] == pytest.approx(1 / 3)
    # g2 marked every pixel: the good row has a false positive rate, and no
    # F1 or IoU (it held no defect pixel), not 0 one time and None the next.
    assert (good["pixel"]["f1"], good["pixel"]["iou"]) == (None, None)
    assert good["pixel"]["false_positive_rate"] == pytest.approx(1 / 3)
    assert summary["latency_ms"]["median"] > 0
    assert summary["latency_ms"]["p90"] >= summary["latency_ms"]["median"]


def test_results_csv(models: Path, dataset: Path, tmp_path: Path) -> None:
    _run(models / "red-map", dataset, tmp_path)
    rows = _rows(tmp_path)

    assert [r["path"] for r in rows] == [
        "test/good/g0.png",
        "test/good/g1.png",
        "test/good/g2.png",
        "test/faint/f0.png",
        "test/spot/s0.png",
        "test/spot/s1.png",
    ]
    assert [r["label"] for r in rows] == ["0", "0", "0", "1", "1", "1"]
    assert [r["is_anomalous"] for r in rows] == ["0", "0", "1", "0", "1", "1"]
    scores = [float(r["score"]) for r in rows]
    # The grayscale photo went in as RGB: its red channel is its gray.
    expected = np.array([40, 100, 140, 120, 255, 255], np.float32) * np.float32(1 / 255)
    assert scores == pytest.approx(expected.tolist(), abs=1e-6)
    g0, _, g2, f0, s0, _ = rows
    assert (g0["pixel_f1"], g0["pixel_iou"], g0["predicted_fraction"]) == (
        "",
        "",
        "0.000000",
    )
    # Marking every pixel of a good photo has no F1 or IoU either (no defect
    # pixels), whatever it marked; predicted_fraction shows it.
    assert (g2["pixel_iou"], g2["predicted_fraction"]) == ("", "1.000000")
    assert (f0["pixel_f1"], f0["truth_fraction"]) == ("0.000000", "0.062500")
    assert (s0["pixel_f1"], s0["pixel_iou"]) == ("1.000000", "1.000000")
    assert float(s0["map_max"]) == pytest.approx(1.0)
    assert all(float(r["latency_ms"]) > 0 for r in rows)


def test_pictures(models: Path, dataset: Path, tmp_path: Path) -> None:
    _run(models / "red-map", dataset, tmp_path)

    with Image.open(tmp_path / "roc.png") as roc:
        assert (roc.format, roc.size, roc.mode) == ("PNG", (640, 640), "RGB")
        # Both curves are drawn: image (blue) and pixel (red).
        colours = {c for _, c in roc.getcolors(1 << 20) or []}
        assert {(31, 119, 180), (214, 39, 40)} <= colours
    for kind, stem in [("good", "g0"), ("good", "g2"), ("faint", "f0")]:
        with Image.open(tmp_path / "overlays" / kind / f"{stem}.png") as picture:
            assert picture.size == (SIDE, SIDE)
    spot = np.asarray(Image.open(tmp_path / "overlays" / "spot" / "s0.png"))
    faint = np.asarray(Image.open(tmp_path / "overlays" / "faint" / "f0.png"))
    false_alarm = np.asarray(Image.open(tmp_path / "overlays" / "good" / "g2.png"))
    # The prediction's outline (magenta) covers the truth's where they match;
    # a missed defect shows only the truth's (green).
    assert spot[8, 12].tolist() == [255, 0, 255]
    assert faint[8, 12].tolist() == [0, 255, 0]
    assert false_alarm[0, 30].tolist() == [255, 0, 255]
    assert spot[16, 16].tolist() not in ([255, 0, 255], [0, 255, 0])


def test_good_photos_only(
    models: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _save(_photo(None), tmp_path / "data" / "test" / "good" / "g0.png")
    _save(_photo(200), tmp_path / "data" / "test" / "good" / "g1.png")
    summary = _run(models / "red-map", tmp_path / "data", tmp_path / "report")

    overall = summary["overall"]
    assert (overall["image_auroc"], overall["caught_rate"]) == (None, None)
    assert overall["false_alarm_rate"] == 0.5
    assert overall["pixel"]["auroc"] is None
    assert overall["pixel"]["false_positive_rate"] == pytest.approx(1 / 32)
    captured = capsys.readouterr()
    assert "evaluated 2/2 photos" in captured.err
    assert captured.out.splitlines()[0].split()[:2] == ["kind", "photos"]
    assert (tmp_path / "report" / "roc.png").is_file()


def test_component_without_anomaly_map(
    models: Path, dataset: Path, tmp_path: Path
) -> None:
    summary = _run(models / "color-seg", dataset, tmp_path)

    # color-seg labels R > 127 or B > 127: the same pixels as red-map.
    pixel = summary["overall"]["pixel"]
    assert pixel["f1"] == pytest.approx(2 * TP / (2 * TP + FP + FN))
    assert pixel["auroc"] is None
    assert "no anomaly_map" in summary["pixel_auroc_unavailable"]
    # Scores are labelled fractions: 0, 0, 1 good; 0 faint; 1/16 spots.
    assert summary["overall"]["image_auroc"] == pytest.approx(5 / 9)
    with Image.open(tmp_path / "roc.png") as roc:
        assert roc.size == (640, 640)


def _without_latency(summary: dict[str, Any]) -> dict[str, Any]:
    keep = dict(summary)
    for key in ("latency_ms", "latency_measures", "mode", "agent"):
        del keep[key]
    del keep["pixel_auroc_unavailable"]
    for entry in [keep["overall"], *keep["kinds"].values()]:
        entry["pixel"] = {
            k: v for k, v in entry["pixel"].items() if not k.startswith("auroc")
        }
    return keep


def _rows_without_latency(report: Path) -> list[dict[str, str]]:
    rows = _rows(report)
    for row in rows:
        del row["latency_ms"], row["map_max"]
    return rows


def test_agent_gives_the_same_numbers(
    models: Path, dataset: Path, tmp_path: Path
) -> None:
    offline = {
        name: _run(models / name, dataset, tmp_path / f"offline-{name}")
        for name in ("red-map", "color-seg")
    }
    with agent_context(models, "--start", "red-map", "--start", "color-seg") as agent:
        for name in ("red-map", "color-seg"):
            agent.wait_status(name, "RUNNING")
        through = {
            name: _run(
                models / name,
                dataset,
                tmp_path / f"agent-{name}",
                "--agent",
                agent.address,
            )
            for name in ("red-map", "color-seg")
        }
        refused = main(
            [
                str(models / "red-map"),
                str(dataset),
                "--out",
                str(tmp_path / "refused"),
                "--agent",
                agent.address,
                "--model",
                "color-seg",
            ]
        )
    assert refused == 2  # the agent's color-seg is not the red-map folder

    for name in ("red-map", "color-seg"):
        assert through[name]["mode"] == "agent"
        assert through[name]["overall"]["pixel"]["auroc"] is None
        assert "only the mask" in through[name]["pixel_auroc_unavailable"]
        assert _without_latency(through[name]) == _without_latency(offline[name])
        assert _rows_without_latency(
            tmp_path / f"agent-{name}"
        ) == _rows_without_latency(tmp_path / f"offline-{name}")
    assert through["red-map"]["overall"]["image_auroc"] == pytest.approx(8 / 9)


def test_histogram_auroc_is_within_its_bound() -> None:
    rng = np.random.default_rng(0)
    truth = rng.random(20_000) < 0.1
    # Coarse values, so many pairs share a bin.
    values = np.round(rng.random(20_000) * 0.6 + truth * 0.3, 3).astype(np.float32)
    histogram = PixelHistogram(bins=100)
    histogram.add(values, truth)
    area = histogram.auroc()

    assert area is not None
    exact = auroc(truth, values)
    assert 0 < area[1] < 0.01
    assert abs(area[0] - exact) <= area[1]
    fine = PixelHistogram(bins=1000)
    fine.add(values, truth)
    # Values on a 0.001 grid each get a bin of their own: exact up to rounding.
    fine_area = fine.auroc()
    assert fine_area is not None
    assert fine_area[0] == pytest.approx(exact, abs=fine_area[1] + 1e-12)
    assert PixelHistogram().auroc() is None


def _error(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> str:
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("edge-agent evaluate: error: ")
    return err


def test_errors(
    models: Path, dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    red = models / "red-map"
    out = tmp_path / "report"

    missing = _error(capsys, red, tmp_path / "nothing", "--out", out)
    assert f"{tmp_path / 'nothing'} is not a folder; pass an MVTec-layout" in missing
    (tmp_path / "no-test").mkdir()
    no_test = _error(capsys, red, tmp_path / "no-test", "--out", out)
    assert f"{tmp_path / 'no-test' / 'test'} is not a folder" in no_test
    (tmp_path / "empty" / "test" / "good").mkdir(parents=True)
    assert "holds no photos" in _error(capsys, red, tmp_path / "empty", "--out", out)

    unmasked = _make_dataset(tmp_path / "unmasked")
    (unmasked / "ground_truth" / "faint" / "f0.png").unlink()
    err = _error(capsys, red, unmasked, "--out", out)
    assert "f0.png has no ground-truth mask" in err
    assert "f0_mask.png" in err

    broken = _make_dataset(tmp_path / "broken")
    (broken / "test" / "good" / "g1.png").write_bytes(b"not a picture")
    assert "cannot read" in _error(capsys, red, broken, "--out", out)

    tiny = _make_dataset(tmp_path / "tiny")
    _save(np.zeros((32, 80, 3), np.uint8), tiny / "test" / "good" / "g3.png")
    assert "64 to 4096 pixels a side" in _error(capsys, red, tiny, "--out", out)

    resized = _make_dataset(tmp_path / "resized")
    _square_mask().resize((32, 32)).save(resized / "ground_truth/faint/f0.png")
    assert "must have its photo's size" in _error(capsys, red, resized, "--out", out)

    garbage = write_component(tmp_path / "models", "garbage", "red-mean")
    (garbage / "model.onnx").write_bytes(b"this is not an ONNX graph")
    assert "does not load" in _error(capsys, garbage, dataset, "--out", out)
    err = _error(capsys, tmp_path / "models" / "absent", dataset, "--out", out)
    assert "manifest.json does not exist" in err

    err = _error(capsys, red, dataset, "--out", out, "--model", "red-map")
    assert "add --agent" in err


def test_an_agent_running_older_files_is_refused(
    models: Path, dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Retrained in place, the ARN stays; the scores tell the graphs apart."""
    mine = tmp_path / "models"
    shutil.copytree(models / "red-map", mine / "red-map")
    with agent_context(mine, "--start", "red-map") as agent:
        agent.wait_status("red-map", "RUNNING")
        # The folder now holds another graph; the agent runs its copy.
        shutil.copyfile(
            models / "color-seg" / "model.onnx", mine / "red-map" / "model.onnx"
        )
        err = _error(
            capsys, mine / "red-map", dataset, "--out", tmp_path / "r",
            "--agent", agent.address,
        )  # fmt: skip
    assert "the agent runs other files than the folder holds now" in err
    assert "edge-agent stop red-map" in err


def test_an_agent_failing_the_check_is_an_error_not_a_traceback(
    models: Path, dataset: Path, tmp_path: Path
) -> None:
    component = load_component(models / "red-map")
    with agent_context(models, "--start", "red-map") as agent:
        agent.wait_status("red-map", "RUNNING")
        scorer = AgentScorer(agent.address, "red-map", component)
    # The agent is gone now: the check's first call fails with UNAVAILABLE.
    try:
        with pytest.raises(EvaluationError, match=r"failed on a probe .*: UNAVAILABLE"):
            scorer.check_same_graph(
                component, [("a probe", np.zeros((64, 64, 3), np.uint8))]
            )
    finally:
        scorer.close()


def test_a_rerun_replaces_the_overlays(
    models: Path, dataset: Path, tmp_path: Path
) -> None:
    stale = tmp_path / "overlays" / "old-kind" / "old.png"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"from an earlier run")
    _run(models / "red-map", dataset, tmp_path)
    assert not stale.parent.exists()
    kinds = sorted(p.name for p in (tmp_path / "overlays").iterdir())
    assert kinds == sorted(p.name for p in (dataset / "test").iterdir())


def test_report_names_the_kind_each_mask_marks_most(
    models: Path, tmp_path: Path
) -> None:
    """Kinds named like the component's labels (color-seg: red, blue) are
    checked against the label that marks the most pixels, offline and
    through the agent alike."""
    root = tmp_path / "labelled"
    test, truth = root / "test", root / "ground_truth"
    red, blue = _photo(255), np.full((SIDE, SIDE, 3), BACKGROUND, np.uint8)
    blue[8 : 8 + SQUARE, 8 : 8 + SQUARE, 2] = 255
    for kind, name, image in (
        ("good", "g0", _photo(None)),
        ("red", "r0", red),
        ("blue", "b0", blue),
        ("blue", "b1", red),  # a blue defect the mask calls red
    ):
        _save(image, test / kind / f"{name}.png")
        if kind != "good":
            (truth / kind).mkdir(parents=True, exist_ok=True)
            _square_mask().save(truth / kind / f"{name}.png")
    offline = _run(models / "color-seg", root, tmp_path / "offline")
    rows = {
        Path(r["path"]).stem: r["predicted_kind"] for r in _rows(tmp_path / "offline")
    }
    assert rows == {"g0": "", "r0": "red", "b0": "blue", "b1": "red"}
    assert offline["kinds"]["red"]["labelled_right_rate"] == 1.0
    assert offline["kinds"]["blue"]["labelled_right_rate"] == 0.5
    assert offline["kinds"]["good"]["labelled_right_rate"] is None
    assert offline["overall"]["labelled_right_rate"] == pytest.approx(2 / 3)
    with agent_context(models, "--start", "color-seg") as agent:
        agent.wait_status("color-seg", "RUNNING")
        through = _run(
            models / "color-seg", root, tmp_path / "agent", "--agent", agent.address
        )
    assert _without_latency(through) == _without_latency(offline)
    assert _rows_without_latency(tmp_path / "agent") == _rows_without_latency(
        tmp_path / "offline"
    )


def test_kinds_not_named_like_a_label_have_no_labelled_rate(
    models: Path, dataset: Path, tmp_path: Path
) -> None:
    summary = _run(models / "color-seg", dataset, tmp_path)
    # The data set's kinds (spot, faint) are not color-seg's labels.
    assert summary["overall"]["labelled_right_rate"] is None
    rows = {Path(r["path"]).stem: r["predicted_kind"] for r in _rows(tmp_path)}
    assert rows["s0"] == "red" and rows["g0"] == "" and rows["f0"] == ""
