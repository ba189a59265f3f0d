"""The five RPCs against a real agent: values, states and status codes."""

from __future__ import annotations

from collections.abc import Callable

import grpc
import numpy as np
import pytest

from frontend._proto import edge_agent_pb2 as pb2
from frontend.client import ClientSegment
from tests.agent import Agent

RED = 200


def colored_image(width: int = 128, height: int = 64) -> np.ndarray:
    """Top half red, bottom-left quarter blue, the rest black."""
    image = np.zeros((height, width, 3), np.uint8)
    image[: height // 2, :, 0] = RED
    image[height // 2 :, : width // 4, 2] = 255
    return image


def shm_request(
    model: str, image: np.ndarray, segment: ClientSegment, offset: int = 0
) -> pb2.DetectAnomaliesRequest:
    height, width = image.shape[:2]
    segment.array(image.shape, offset)[...] = image
    request = pb2.DetectAnomaliesRequest(model_component=model)
    request.bitmap.width, request.bitmap.height = width, height
    request.bitmap.shared_memory_handle.CopyFrom(segment.handle(image.nbytes, offset))
    return request


def inline_request(model: str, image: np.ndarray) -> pb2.DetectAnomaliesRequest:
    height, width = image.shape[:2]
    request = pb2.DetectAnomaliesRequest(model_component=model)
    request.bitmap.width, request.bitmap.height = width, height
    request.bitmap.byte_data = image.tobytes()
    return request


def expect_code(call: Callable[[], object], code: grpc.StatusCode) -> str:
    with pytest.raises(grpc.RpcError) as info:
        call()
    error = info.value
    assert error.code() == code, error.details()
    details = str(error.details())
    assert details, "every error carries a details text"
    return details


def test_list_models_lists_every_component(running: Agent) -> None:
    reply = running.stub.ListModels(pb2.ListModelsRequest(), timeout=10)
    by_name = {m.model_component: m for m in reply.models}
    assert sorted(by_name) == ["broken", "color-seg", "garbage", "red-mean", "slow"]
    assert by_name["red-mean"].status == pb2.RUNNING
    assert by_name["slow"].status == pb2.STOPPED
    assert by_name["red-mean"].lookout_vision_model_arn == (
        "arn:edge-agent:model/red-mean/1.0.0"
    )


def test_describe_model(running: Agent) -> None:
    reply = running.stub.DescribeModel(
        pb2.DescribeModelRequest(model_component="color-seg"), timeout=10
    )
    description = reply.model_description
    assert description.model_component == "color-seg"
    assert description.status == pb2.RUNNING
    assert description.lookout_vision_model_arn.endswith("color-seg/1.0.0")


def test_describe_unknown_and_empty_names(running: Agent) -> None:
    stub = running.stub
    details = expect_code(
        lambda: stub.DescribeModel(pb2.DescribeModelRequest(model_component="nope")),
        grpc.StatusCode.NOT_FOUND,
    )
    assert "nope" in details and "red-mean" in details
    details = expect_code(
        lambda: stub.DescribeModel(pb2.DescribeModelRequest()),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert "empty" in details


def test_classification_through_shared_memory(
    running: Agent, segment: Callable[[int], ClientSegment]
) -> None:
    image = colored_image()
    seg = segment(image.nbytes + 4096)
    reply = running.stub.DetectAnomalies(
        shm_request("red-mean", image, seg, offset=4096), timeout=10
    )
    result = reply.detect_anomaly_result
    expected = RED / 255 / 2
    assert result.anomaly_score == pytest.approx(expected, abs=1e-6)
    assert result.anomaly_threshold == pytest.approx(0.5)
    assert result.is_anomalous is False
    assert result.confidence == pytest.approx(1 - expected, abs=1e-6)
    assert not result.HasField("anomaly_mask")
    assert len(result.anomalies) == 0


def test_inline_equals_shared_memory(
    running: Agent, segment: Callable[[int], ClientSegment]
) -> None:
    image = colored_image(200, 100)
    image[:, :, 0] = 255
    seg = segment(image.nbytes)
    by_shm = running.stub.DetectAnomalies(shm_request("red-mean", image, seg))
    by_bytes = running.stub.DetectAnomalies(inline_request("red-mean", image))
    assert by_shm == by_bytes
    result = by_bytes.detect_anomaly_result
    assert result.anomaly_score == pytest.approx(1.0)
    assert result.is_anomalous is True
    assert result.confidence == pytest.approx(1.0)


def _check_segmentation(
    result: pb2.DetectAnomalyResult, width: int, height: int
) -> None:
    assert result.anomaly_score == pytest.approx(0.625)
    assert result.is_anomalous is True
    assert result.anomaly_threshold == pytest.approx(0.25)
    names = [(a.name, a.pixel_anomaly.hex_color) for a in result.anomalies]
    assert names == [("background", "#FFFFFF"), ("red", "#FF0000"), ("blue", "#0000FF")]
    areas = [a.pixel_anomaly.total_percentage_area for a in result.anomalies]
    assert areas == pytest.approx([0.375, 0.5, 0.125])
    assert sum(areas) == pytest.approx(1.0)
    assert (result.anomaly_mask.width, result.anomaly_mask.height) == (width, height)


def _expected_mask(image: np.ndarray) -> np.ndarray:
    mask = np.full(image.shape, 255, np.uint8)
    red = image[:, :, 0] > 127
    blue = (image[:, :, 2] > 127) & ~red
    mask[red] = (255, 0, 0)
    mask[blue] = (0, 0, 255)
    return mask


def test_segmentation_mask_inline(running: Agent) -> None:
    image = colored_image()
    reply = running.stub.DetectAnomalies(inline_request("color-seg", image))
    result = reply.detect_anomaly_result
    _check_segmentation(result, 128, 64)
    mask = np.frombuffer(result.anomaly_mask.byte_data, np.uint8).reshape(image.shape)
    np.testing.assert_array_equal(mask, _expected_mask(image))


@pytest.mark.parametrize(
    "field", ["shared_memory_handle", "shared_memory_handle_legacy"]
)
def test_segmentation_mask_into_client_segment(
    running: Agent, segment: Callable[[int], ClientSegment], field: str
) -> None:
    image = colored_image()
    seg = segment(image.nbytes)
    mask_seg = segment(image.nbytes + 100)
    request = shm_request("color-seg", image, seg)
    getattr(request.anomaly_mask_params, field).CopyFrom(
        mask_seg.handle(image.nbytes + 100 - 64, offset=64)
    )
    result = running.stub.DetectAnomalies(request).detect_anomaly_result
    _check_segmentation(result, 128, 64)
    handle = result.anomaly_mask.shared_memory_handle
    assert result.anomaly_mask.WhichOneof("data") == "shared_memory_handle"
    assert (handle.name, handle.offset, handle.size) == (
        mask_seg.name,
        64,
        image.nbytes,
    )
    written = mask_seg.array(image.shape, offset=64)
    np.testing.assert_array_equal(written, _expected_mask(image))


def test_red_and_blue_are_told_apart(running: Agent) -> None:
    """A BGR image must give a different answer: byte 0 is red."""
    image = colored_image()
    swapped = np.ascontiguousarray(image[:, :, ::-1])
    rgb = running.stub.DetectAnomalies(inline_request("color-seg", image))
    bgr = running.stub.DetectAnomalies(inline_request("color-seg", swapped))
    areas = {
        a.name: a.pixel_anomaly.total_percentage_area
        for a in bgr.detect_anomaly_result.anomalies
    }
    assert areas["red"] == pytest.approx(0.125)
    assert areas["blue"] == pytest.approx(0.5)
    assert rgb != bgr


def test_state_machine(running: Agent) -> None:
    stub = running.stub
    start = pb2.StartModelRequest(model_component="slow")
    stop = pb2.StopModelRequest(model_component="slow")
    details = expect_code(
        lambda: stub.StopModel(stop), grpc.StatusCode.FAILED_PRECONDITION
    )
    assert "STOPPED" in details
    expect_code(
        lambda: stub.DetectAnomalies(inline_request("slow", colored_image())),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert stub.StartModel(start).status == pb2.STARTING
    details = expect_code(
        lambda: stub.StartModel(start), grpc.StatusCode.FAILED_PRECONDITION
    )
    assert "already" in details
    running.wait_status("slow", "RUNNING")
    details = expect_code(
        lambda: stub.StartModel(start), grpc.StatusCode.FAILED_PRECONDITION
    )
    assert "already RUNNING" in details
    image = colored_image()
    image[0, 0, 0] = 0  # no extra loop iterations
    result = stub.DetectAnomalies(inline_request("slow", image)).detect_anomaly_result
    assert result.anomaly_score == pytest.approx((RED * 128 * 32 - RED) / 255 / 8192)
    assert stub.StopModel(stop).status == pb2.STOPPED
    assert running.status("slow") == "STOPPED"
    details = expect_code(
        lambda: stub.DetectAnomalies(inline_request("slow", image)),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert "STOPPED" in details
    assert stub.StartModel(start).status == pb2.STARTING
    running.wait_status("slow", "RUNNING")
    assert stub.StopModel(stop).status == pb2.STOPPED


def test_broken_components_fail_with_reason(running: Agent) -> None:
    stub = running.stub
    for name, reason in (("broken", "not valid JSON"), ("garbage", "model.onnx")):
        reply = stub.StartModel(pb2.StartModelRequest(model_component=name))
        assert reply.status == pb2.STARTING
        running.wait_status(name, "FAILED")
        description = stub.DescribeModel(
            pb2.DescribeModelRequest(model_component=name)
        ).model_description
        assert reason in description.status_message
    # FAILED allows another StartModel, which fails again the same way.
    reply = stub.StartModel(pb2.StartModelRequest(model_component="garbage"))
    assert reply.status == pb2.STARTING
    running.wait_status("garbage", "FAILED")


def test_unknown_model_is_not_found(running: Agent) -> None:
    stub = running.stub
    for call in (
        lambda: stub.StartModel(pb2.StartModelRequest(model_component="ghost")),
        lambda: stub.StopModel(pb2.StopModelRequest(model_component="ghost")),
        lambda: stub.DetectAnomalies(inline_request("ghost", colored_image())),
    ):
        assert "ghost" in expect_code(call, grpc.StatusCode.NOT_FOUND)


def test_a_folder_without_manifest_is_named_as_such(running: Agent) -> None:
    call = lambda: running.stub.StartModel(  # noqa: E731
        pb2.StartModelRequest(model_component="no-manifest")
    )
    details = expect_code(call, grpc.StatusCode.NOT_FOUND)
    assert f"the folder {running.model_dir / 'no-manifest'} exists" in details
    assert "holds no manifest.json" in details
    ghost = expect_code(
        lambda: running.stub.StartModel(pb2.StartModelRequest(model_component="x")),
        grpc.StatusCode.NOT_FOUND,
    )
    assert "exists" not in ghost
