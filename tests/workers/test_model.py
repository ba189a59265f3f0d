"""workers.model.ModelRunner: exact answers, zero copy, signature checks."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from shared.component import load_component
from shared.segments import SegmentRef
from tests.model_factory import OPSET, write_component
from tests.workers.shm import mapped_regions
from workers.mapping import SegmentCache
from workers.model import ModelLoadError, ModelRunner

MakeSegment = Callable[[bytes], str]
SCALE = np.float32(1 / 255)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("models")
    write_component(folder, "red-mean")
    write_component(folder, "color-seg")
    return folder


@pytest.fixture(scope="module")
def red_mean(models: Path) -> ModelRunner:
    return ModelRunner(load_component(models / "red-mean"), threads=1)


@pytest.fixture(scope="module")
def color_seg(models: Path) -> ModelRunner:
    return ModelRunner(load_component(models / "color-seg"), threads=1)


def red_mean_score(red_mean_value: float) -> float:
    return float(np.float32(red_mean_value) * SCALE)


def expected_mask(image: np.ndarray) -> np.ndarray:
    red = image[..., 0] > 127
    blue = (image[..., 2] > 127) & ~red
    return (red * 1 + blue * 2).astype(np.uint8)


# Exact answers --------------------------------------------------------------


def test_red_mean_scores_the_red_channel(red_mean: ModelRunner) -> None:
    image = np.zeros((64, 128, 3), np.uint8)
    image[:32, :, 0] = 200  # red mean 100
    image[:, :, 1] = 255  # green and blue are ignored
    image[:, :, 2] = 77
    prediction = red_mean.predict(image)
    assert prediction.score == red_mean_score(100.0)
    assert prediction.score == pytest.approx(100 / 255, abs=1e-7)
    assert prediction.label_mask is None


@pytest.mark.parametrize(
    ("red", "score"), [(0, 0.0), (128, red_mean_score(128.0)), (255, 1.0)]
)
def test_red_mean_uniform_images(red_mean: ModelRunner, red: int, score: float) -> None:
    image = np.zeros((64, 64, 3), np.uint8)
    image[..., 0] = red
    prediction = red_mean.predict(image)
    assert prediction.score == score
    assert 0.0 <= prediction.score <= 1.0


def test_red_mean_does_not_see_blue(red_mean: ModelRunner) -> None:
    """A red/blue swap raises no error, only a wrong answer."""
    image = np.zeros((64, 64, 3), np.uint8)
    image[..., 2] = 255
    assert red_mean.predict(image).score == 0.0


def test_color_seg_mask_and_score(color_seg: ModelRunner) -> None:
    image = np.zeros((64, 128, 3), np.uint8)
    image[:16, :, 0] = 200  # red: label 1
    image[16:32, :64, 2] = 255  # blue: label 2
    image[32:40, :, 0] = 255  # red and blue: red wins
    image[32:40, :, 2] = 255
    image[40:48, :, 0] = 127  # not above the cut
    image[40:48, :, 2] = 127
    image[48:, :, 1] = 255  # green: background
    prediction = color_seg.predict(image)
    mask = prediction.label_mask
    assert mask is not None
    assert mask.dtype == np.uint8
    assert mask.shape == (64, 128)
    expected = expected_mask(image)
    assert np.array_equal(mask, expected)
    assert np.bincount(mask.reshape(-1), minlength=3).tolist() == [
        16 * 64 + 8 * 128 + 16 * 128,
        16 * 128 + 8 * 128,
        16 * 64,
    ]
    # Labelled fraction: (16 + 8) rows of 128 plus 16 rows of 64 of 64 x 128.
    assert prediction.score == (24 * 128 + 16 * 64) / (64 * 128)


def test_color_seg_channel_order(color_seg: ModelRunner) -> None:
    red = np.zeros((64, 64, 3), np.uint8)
    red[..., 0] = 255
    blue = red[..., ::-1].copy()
    red_mask = color_seg.predict(red).label_mask
    blue_mask = color_seg.predict(blue).label_mask
    assert red_mask is not None
    assert blue_mask is not None
    assert np.all(red_mask == 1)
    assert np.all(blue_mask == 2)


def test_predict_keeps_odd_sizes(color_seg: ModelRunner) -> None:
    image = np.zeros((67, 131, 3), np.uint8)
    image[::2, ::3, 0] = 255
    prediction = color_seg.predict(image)
    assert prediction.label_mask is not None
    assert np.array_equal(prediction.label_mask, expected_mask(image))


def test_warm_up(red_mean: ModelRunner) -> None:
    seconds = red_mean.warm_up(runs=2)
    assert isinstance(seconds, float)
    assert seconds > 0


# Zero copy -------------------------------------------------------------------


def test_input_value_wraps_the_mapped_bytes_without_copy(
    red_mean: ModelRunner, client_segment: MakeSegment
) -> None:
    height, width = 64, 96
    nbytes = height * width * 3
    offset = 3 * 4096 + 5  # not even aligned: still no copy
    image = np.zeros((height, width, 3), np.uint8)
    image[:, : width // 2, 0] = 255  # red mean 127.5
    data = bytes(offset) + image.tobytes() + bytes(100)
    name = client_segment(data)
    cache = SegmentCache(2, writable=False)
    view = cache.view(SegmentRef(name, offset, nbytes), (height, width, 3), "bitmap")
    regions = mapped_regions(name)
    assert len(regions) == 1
    assert regions[0].perms == "r--s"
    mapped_at = regions[0].start + offset
    value = red_mean.input_value(view)
    assert value.data_ptr() == mapped_at
    assert value.data_ptr() == view.ctypes.data
    assert value.shape() == [height, width, 3]
    assert value.element_type() == TensorProto.UINT8
    del value
    # The whole run reads the mapped bytes: the answer is the segment's.
    assert red_mean.predict(view).score == red_mean_score(127.5)
    del view
    cache.close()


def test_input_value_of_a_plain_array_shares_its_memory(red_mean: ModelRunner) -> None:
    image = np.zeros((64, 64, 3), np.uint8)
    value = red_mean.input_value(image)
    assert value.data_ptr() == image.ctypes.data
    image[0, 0, 0] = 9
    assert value.numpy()[0, 0, 0] == 9


@pytest.mark.parametrize(
    "make",
    [
        lambda: np.zeros((64, 128, 3), np.uint8)[:, ::2],
        lambda: np.zeros((64, 64, 4), np.uint8)[..., :3],
        lambda: np.asfortranarray(np.zeros((64, 64, 3), np.uint8)),
        lambda: np.zeros((64, 64, 3), np.uint8).transpose(1, 0, 2),
        lambda: np.zeros((64, 64, 3), np.float32),
        lambda: np.zeros((64, 64, 3), np.int8),
        lambda: np.zeros((64, 64, 3), np.uint16),
    ],
    ids=["strided", "rgba-slice", "fortran", "transposed", "float32", "int8",
         "uint16"],
)  # fmt: skip
def test_non_contiguous_or_non_uint8_input_is_refused(
    red_mean: ModelRunner, make: Callable[[], np.ndarray]
) -> None:
    image = make()
    with pytest.raises(ValueError) as info:
        red_mean.input_value(image)
    assert str(info.value) == "images must be C-contiguous uint8 arrays"
    with pytest.raises(ValueError) as info:
        red_mean.predict(image)
    assert str(info.value) == "images must be C-contiguous uint8 arrays"


# Threads -------------------------------------------------------------------


def thread_count() -> int:
    return len(os.listdir("/proc/self/task"))


@pytest.mark.parametrize("threads", [1, 2])
def test_session_starts_threads_minus_one_pool_threads(
    models: Path, threads: int
) -> None:
    """intra_op_num_threads=N: the caller plus N - 1 pool threads."""
    component = load_component(models / "red-mean")
    before = thread_count()
    runner = ModelRunner(component, threads=threads)
    runner.predict(np.zeros((64, 64, 3), np.uint8))
    assert thread_count() - before == threads - 1
    del runner


# Signature checks ------------------------------------------------------------


def score_nodes(source: str = "image") -> list[onnx.NodeProto]:
    shape = helper.make_tensor("one", TensorProto.INT64, [1], [1])
    return [
        helper.make_node("Cast", [source], ["as_float"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["as_float"], ["mean"], keepdims=0),
        helper.make_node("Constant", [], ["one_shape"], value=shape),
        helper.make_node("Reshape", ["mean", "one_shape"], ["score"]),
    ]


def image_input(
    name: str = "image",
    dtype: int = TensorProto.UINT8,
    shape: list[str | int | None] | None = None,
) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(
        name, dtype, ["h", "w", 3] if shape is None else shape
    )


SCORE = helper.make_tensor_value_info("score", TensorProto.FLOAT, [1])


def write_graph(  # noqa: PLR0917 -- a graph is its nodes, inputs and outputs
    root: Path,
    name: str,
    kind_of: str,
    nodes: list[onnx.NodeProto],
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
) -> Path:
    folder = write_component(root, name, kind_of)
    graph = helper.make_graph(nodes, name, inputs, outputs)
    model = helper.make_model(graph, opset_imports=OPSET)
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(folder / "model.onnx"))
    return folder


def load_error(folder: Path) -> str:
    with pytest.raises(ModelLoadError) as info:
        ModelRunner(load_component(folder), threads=1)
    return str(info.value)


def test_a_well_formed_custom_graph_loads(tmp_path: Path) -> None:
    folder = write_graph(
        tmp_path, "custom", "red-mean", score_nodes(), [image_input()], [SCORE]
    )
    runner = ModelRunner(load_component(folder), threads=1)
    image = np.full((64, 64, 3), 51, np.uint8)
    assert runner.predict(image).score == 1.0  # mean 51, clipped to [0, 1]


def test_wrong_input_name(tmp_path: Path) -> None:
    folder = write_graph(
        tmp_path, "c", "red-mean", score_nodes("img"), [image_input("img")], [SCORE]
    )
    assert load_error(folder) == (
        "the graph must take one input named 'image'; it takes ['img']"
    )


def test_two_inputs(tmp_path: Path) -> None:
    extra = helper.make_tensor_value_info("extra", TensorProto.FLOAT, [1])
    nodes = [*score_nodes(), helper.make_node("Add", ["score", "extra"], ["out"])]
    out = helper.make_tensor_value_info("out", TensorProto.FLOAT, [1])
    folder = write_graph(
        tmp_path, "c", "red-mean", nodes, [image_input(), extra], [SCORE, out]
    )
    assert load_error(folder) == (
        "the graph must take one input named 'image'; it takes ['image', 'extra']"
    )


@pytest.mark.parametrize(
    ("dtype", "type_name"),
    [
        (TensorProto.FLOAT, "tensor(float)"),
        (TensorProto.INT8, "tensor(int8)"),
        (TensorProto.UINT16, "tensor(uint16)"),
    ],
)
def test_wrong_input_dtype(tmp_path: Path, dtype: int, type_name: str) -> None:
    folder = write_graph(
        tmp_path, "c", "red-mean", score_nodes(), [image_input(dtype=dtype)], [SCORE]
    )
    assert load_error(folder) == (
        "input 'image' must be uint8 [height, width, 3] with height and width "
        f"dynamic; it is {type_name} ['h', 'w', 3]"
    )


@pytest.mark.parametrize(
    "shape", [[1, "h", "w", 3], ["h", "w"], ["n"]], ids=["nhwc", "hw", "flat"]
)
def test_wrong_input_rank(tmp_path: Path, shape: list[str | int | None]) -> None:
    folder = write_graph(
        tmp_path, "c", "red-mean", score_nodes(), [image_input(shape=shape)], [SCORE]
    )
    assert load_error(folder) == (
        "input 'image' must be uint8 [height, width, 3] with height and width "
        f"dynamic; it is tensor(uint8) {shape}"
    )


def test_missing_score_output(tmp_path: Path) -> None:
    nodes = [*score_nodes(), helper.make_node("Identity", ["score"], ["result"])]
    out = helper.make_tensor_value_info("result", TensorProto.FLOAT, [1])
    folder = write_graph(tmp_path, "c", "red-mean", nodes, [image_input()], [out])
    assert load_error(folder) == (
        "the graph lacks output(s) ['score'] that a classification component must have"
    )


def test_segmentation_graph_without_mask(tmp_path: Path) -> None:
    folder = write_graph(
        tmp_path, "c", "color-seg", score_nodes(), [image_input()], [SCORE]
    )
    assert load_error(folder) == (
        "the graph lacks output(s) ['mask'] that a segmentation component must have"
    )


def test_segmentation_graph_without_any_output_it_needs(tmp_path: Path) -> None:
    nodes = [*score_nodes(), helper.make_node("Identity", ["score"], ["result"])]
    out = helper.make_tensor_value_info("result", TensorProto.FLOAT, [1])
    folder = write_graph(tmp_path, "c", "color-seg", nodes, [image_input()], [out])
    assert load_error(folder) == (
        "the graph lacks output(s) ['score', 'mask'] that a segmentation "
        "component must have"
    )


def test_not_an_onnx_graph(tmp_path: Path) -> None:
    folder = write_component(tmp_path, "c", "red-mean")
    (folder / "model.onnx").write_bytes(b"this is not an ONNX graph")
    assert load_error(folder).startswith(f"{folder / 'model.onnx'}: ")


def mask_nodes(dtype: int) -> list[onnx.NodeProto]:
    axis = helper.make_tensor("axis", TensorProto.INT64, [1], [2])
    zero = helper.make_tensor("zero", TensorProto.INT64, [1], [0])
    one = helper.make_tensor("one1", TensorProto.INT64, [1], [1])
    return [
        helper.make_node("Constant", [], ["c_axis"], value=axis),
        helper.make_node("Constant", [], ["c_zero"], value=zero),
        helper.make_node("Constant", [], ["c_one"], value=one),
        helper.make_node("Slice", ["image", "c_zero", "c_one", "c_axis"], ["r"]),
        helper.make_node("Squeeze", ["r", "c_axis"], ["r_hw"]),
        helper.make_node("Cast", ["r_hw"], ["mask"], to=dtype),
    ]


MASK_FLOAT = helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["h", "w"])
OUTSIDE_THE_INTERFACE = {
    "four-channels": (
        "red-mean", score_nodes(), [image_input(shape=["h", "w", 4])], [SCORE]
    ),
    "fixed-size": (
        "red-mean", score_nodes(), [image_input(shape=[64, 64, 3])], [SCORE]
    ),
    "float-mask": (
        "color-seg", [*score_nodes(), *mask_nodes(TensorProto.FLOAT)],
        [image_input()], [SCORE, MASK_FLOAT],
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(OUTSIDE_THE_INTERFACE))
def test_a_graph_outside_the_interface_is_refused_at_load(
    tmp_path: Path, case: str
) -> None:
    """docs/components.md: image is uint8 [height, width, 3], both symbolic;
    mask is uint8 [height, width]. A graph that breaks this must be refused
    when loaded, with a ModelLoadError naming the problem, rather than pass
    the warm-up at input_size and then fail every request (fixed-size,
    float-mask) or fail the warm-up with a runtime error (four-channels)."""
    kind_of, nodes, inputs, outputs = OUTSIDE_THE_INTERFACE[case]
    folder = write_graph(tmp_path, "c", kind_of, nodes, inputs, outputs)
    message = load_error(folder)
    assert "'image'" in message or "'mask'" in message, message


def test_mask_of_the_wrong_size_is_an_error(tmp_path: Path) -> None:
    mask = helper.make_tensor("m", TensorProto.UINT8, [1, 1], [0])
    nodes = [*score_nodes(), helper.make_node("Constant", [], ["mask"], value=mask)]
    out = helper.make_tensor_value_info("mask", TensorProto.UINT8, [1, 1])
    folder = write_graph(
        tmp_path, "c", "color-seg", nodes, [image_input()], [SCORE, out]
    )
    runner = ModelRunner(load_component(folder), threads=1)
    with pytest.raises(ValueError) as info:
        runner.predict(np.zeros((64, 32, 3), np.uint8))
    assert str(info.value) == (
        "the graph returned a mask of shape (1, 1) for an image of (64, 32); "
        "masks must have the image's size"
    )
