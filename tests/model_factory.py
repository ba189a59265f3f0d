"""Small real ONNX model components that tests build in a temporary folder.

Their answers are simple functions of the pixels, so a test can assert the
exact score and mask the agent must return:

- ``red-mean`` (classification): score = mean of the red channel / 255.
- ``color-seg`` (segmentation): label 1 "red" where R > 127, else label 2
  "blue" where B > 127; score = fraction of labelled pixels.
- ``slow`` (classification): as ``red-mean``, after a loop of 256x256
  matrix products whose count is 100 x the first pixel's red value, so a
  test picks how long a request takes by the image it sends.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = [helper.make_opsetid("", 17)]
IMAGE = helper.make_tensor_value_info("image", TensorProto.UINT8, ["h", "w", 3])
SCORE = helper.make_tensor_value_info("score", TensorProto.FLOAT, [1])
MASK = helper.make_tensor_value_info("mask", TensorProto.UINT8, ["h", "w"])


def _const(name: str, value: np.ndarray) -> onnx.NodeProto:
    return helper.make_node(
        "Constant", [], [name], value=numpy_helper.from_array(value, name)
    )


def _channel(index: int, out: str) -> list[onnx.NodeProto]:
    """Nodes slicing channel ``index`` of the image to float [h, w, 1]."""
    return [
        _const(f"{out}_start", np.array([index], np.int64)),
        _const(f"{out}_end", np.array([index + 1], np.int64)),
        _const(f"{out}_axis", np.array([2], np.int64)),
        helper.make_node(
            "Slice",
            ["image", f"{out}_start", f"{out}_end", f"{out}_axis"],
            [f"{out}_raw"],
        ),
        helper.make_node("Cast", [f"{out}_raw"], [out], to=TensorProto.FLOAT),
    ]


def _red_mean_nodes(out: str) -> list[onnx.NodeProto]:
    return [
        *_channel(0, "red"),
        helper.make_node("ReduceMean", ["red"], ["red_mean"], keepdims=0),
        _const("scale", np.array(1 / 255, np.float32)),
        _const("one_shape", np.array([1], np.int64)),
        helper.make_node("Mul", ["red_mean", "scale"], ["scaled"]),
        helper.make_node("Reshape", ["scaled", "one_shape"], [out]),
    ]


def red_mean_graph() -> onnx.ModelProto:
    graph = helper.make_graph(_red_mean_nodes("score"), "red-mean", [IMAGE], [SCORE])
    return helper.make_model(graph, opset_imports=OPSET)


def color_seg_graph() -> onnx.ModelProto:
    nodes = [
        *_channel(0, "red"),
        *_channel(2, "blue"),
        _const("half", np.array(127.0, np.float32)),
        helper.make_node("Greater", ["red", "half"], ["is_red"]),
        helper.make_node("Greater", ["blue", "half"], ["is_blue_any"]),
        helper.make_node("Not", ["is_red"], ["not_red"]),
        helper.make_node("And", ["is_blue_any", "not_red"], ["is_blue"]),
        helper.make_node("Cast", ["is_red"], ["red_u8"], to=TensorProto.UINT8),
        helper.make_node("Cast", ["is_blue"], ["blue_u8"], to=TensorProto.UINT8),
        helper.make_node("Add", ["blue_u8", "blue_u8"], ["blue_label"]),
        helper.make_node("Add", ["red_u8", "blue_label"], ["mask_hw1"]),
        _const("last_axis", np.array([2], np.int64)),
        helper.make_node("Squeeze", ["mask_hw1", "last_axis"], ["mask"]),
        helper.make_node("Or", ["is_red", "is_blue"], ["labelled"]),
        helper.make_node("Cast", ["labelled"], ["labelled_f"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["labelled_f"], ["fraction"], keepdims=0),
        _const("one_shape", np.array([1], np.int64)),
        helper.make_node("Reshape", ["fraction", "one_shape"], ["score"]),
    ]
    graph = helper.make_graph(nodes, "color-seg", [IMAGE], [SCORE, MASK])
    return helper.make_model(graph, opset_imports=OPSET)


def slow_graph() -> onnx.ModelProto:
    size = 256
    rng = np.random.default_rng(0)
    weight = (rng.standard_normal((size, size)) / np.sqrt(size)).astype(np.float32)
    body = helper.make_graph(
        [
            _const("w", weight),
            helper.make_node("MatMul", ["v_in", "w"], ["product"]),
            helper.make_node("Tanh", ["product"], ["v_out"]),
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_in", TensorProto.FLOAT, [size, size]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_out", TensorProto.FLOAT, [size, size]),
        ],
    )
    nodes = [
        *_red_mean_nodes("base"),
        _const("origin", np.array([[0, 0, 0]], np.int64)),
        helper.make_node("GatherND", ["image", "origin"], ["first_red"]),
        helper.make_node("Cast", ["first_red"], ["first_i64"], to=TensorProto.INT64),
        _const("hundred", np.array([100], np.int64)),
        helper.make_node("Mul", ["first_i64", "hundred"], ["trips_1"]),
        _const("scalar_shape", np.array([], np.int64)),
        helper.make_node("Reshape", ["trips_1", "scalar_shape"], ["trips"]),
        _const("true", np.array(True)),
        _const("v0", np.full((size, size), 0.01, np.float32)),
        helper.make_node("Loop", ["trips", "true", "v0"], ["v_final"], body=body),
        helper.make_node("ReduceSum", ["v_final"], ["v_sum"], keepdims=0),
        _const("nothing", np.array(0.0, np.float32)),
        helper.make_node("Mul", ["v_sum", "nothing"], ["zero"]),
        helper.make_node("Add", ["base", "zero"], ["score"]),
    ]
    graph = helper.make_graph(nodes, "slow", [IMAGE], [SCORE])
    return helper.make_model(graph, opset_imports=OPSET)


GRAPHS = {
    "red-mean": (red_mean_graph, "classification", 0.5, []),
    "color-seg": (
        color_seg_graph,
        "segmentation",
        0.25,
        [{"name": "red", "color": "#FF0000"}, {"name": "blue", "color": "#0000FF"}],
    ),
    "slow": (slow_graph, "classification", 0.5, []),
}


def write_component(
    model_dir: Path, name: str, graph_name: str | None = None, **overrides: object
) -> Path:
    """Write the test component ``graph_name`` as ``model_dir/name``."""
    build, kind, threshold, labels = GRAPHS[graph_name or name]
    folder = model_dir / name
    folder.mkdir(parents=True, exist_ok=True)
    model = build()
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(folder / "model.onnx"))
    manifest = {
        "format_version": 1,
        "name": name,
        "version": "1.0.0",
        "kind": kind,
        "model_arn": f"arn:edge-agent:model/{name}/1.0.0",
        "threshold": threshold,
        "input_size": [64, 64],
        "labels": labels,
        "cores": 1,
        "description": "test model",
    }
    manifest.update(overrides)
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return folder
