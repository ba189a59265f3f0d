"""A client compiled from its own copy of the proto works unchanged.

The foreign client's ``edge-agent.proto`` is rendered from the contract's
table (tests/contract_table.py), not copied from proto/, and compiled here
with grpc_tools.protoc. Two modules defining the package AWS.LookoutVision
cannot share one process's descriptor pool, so the foreign client runs in
a subprocess; it prints its answers as JSON, and the test compares them
with what the project's own stub gets for the same requests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from frontend._proto import edge_agent_pb2 as pb2
from frontend.client import ClientSegment
from tests import contract_table as contract
from tests.agent import Agent
from tests.integration.test_rpcs import colored_image, inline_request, shm_request

# The foreign client: only the generated modules, grpc and the standard
# library. It makes and owns its segments as a C client would: a file in
# /dev/shm, mapped; image handle named with a leading '/', mask without.
FOREIGN_CLIENT = r"""
import json
import mmap
import os
import sys

import grpc

import edge_agent_pb2
import edge_agent_pb2_grpc

assert "frontend" not in sys.modules

address, image_path, width, height = sys.argv[1:5]
width, height = int(width), int(height)
image = open(image_path, "rb").read()
assert len(image) == width * height * 3
out = {}


def call(name, fn):
    try:
        out[name] = {"ok": True, "reply": fn()}
    except grpc.RpcError as exc:
        out[name] = {"ok": False, "code": exc.code().name, "details": exc.details()}


def result_dict(result):
    mask = None
    if result.HasField("anomaly_mask"):
        bitmap = result.anomaly_mask
        mask = {
            "width": bitmap.width,
            "height": bitmap.height,
            "data": bitmap.WhichOneof("data"),
        }
        if mask["data"] == "byte_data":
            mask["bytes"] = bitmap.byte_data.hex()
        elif mask["data"] == "shared_memory_handle":
            handle = bitmap.shared_memory_handle
            mask["handle"] = [handle.name, handle.size, handle.offset]
    return {
        "is_anomalous": result.is_anomalous,
        "confidence": result.confidence,
        "anomaly_score": result.anomaly_score,
        "anomaly_threshold": result.anomaly_threshold,
        "anomalies": [
            [a.name, a.pixel_anomaly.hex_color, a.pixel_anomaly.total_percentage_area]
            for a in result.anomalies
        ],
        "mask": mask,
    }


def model_dict(m):
    return [
        m.model_component,
        m.lookout_vision_model_arn,
        edge_agent_pb2.ModelStatus.Name(m.status),
        m.status_message,
    ]


class Segment:
    def __init__(self, name, size):
        self.name = name
        self.path = "/dev/shm/" + name
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        try:
            os.ftruncate(fd, size)
            self.region = mmap.mmap(fd, size)
        finally:
            os.close(fd)

    def close(self):
        self.region.close()
        os.unlink(self.path)


channel = grpc.insecure_channel(address)
stub = edge_agent_pb2_grpc.EdgeAgentStub(channel)
Request = edge_agent_pb2.DetectAnomaliesRequest

call("list", lambda: [model_dict(m) for m in stub.ListModels(
    edge_agent_pb2.ListModelsRequest(), timeout=10).models])
call("describe", lambda: model_dict(stub.DescribeModel(
    edge_agent_pb2.DescribeModelRequest(model_component="color-seg"),
    timeout=10).model_description))
call("describe_ghost", lambda: model_dict(stub.DescribeModel(
    edge_agent_pb2.DescribeModelRequest(model_component="ghost"),
    timeout=10).model_description))
call("start_running", lambda: edge_agent_pb2.ModelStatus.Name(stub.StartModel(
    edge_agent_pb2.StartModelRequest(model_component="red-mean"),
    timeout=10).status))
call("stop_stopped", lambda: edge_agent_pb2.ModelStatus.Name(stub.StopModel(
    edge_agent_pb2.StopModelRequest(model_component="slow"), timeout=10).status))
for model in ("red-mean", "color-seg"):
    request = Request(model_component=model)
    request.bitmap.width, request.bitmap.height = width, height
    request.bitmap.byte_data = image
    call(f"inline_{model}", lambda: result_dict(
        stub.DetectAnomalies(request, timeout=10).detect_anomaly_result))
bad = Request(model_component="red-mean")
bad.bitmap.width, bad.bitmap.height = width, height
bad.bitmap.byte_data = image[:-3]
call("inline_short", lambda: result_dict(
    stub.DetectAnomalies(bad, timeout=10).detect_anomaly_result))

pid = os.getpid()
image_seg = Segment(f"ea-foreign-{pid}-image", 4096 + len(image))
mask_seg = Segment(f"ea-foreign-{pid}-mask", 128 + len(image))
try:
    image_seg.region[4096:] = image
    mask_seg.region[:] = b"\x07" * len(mask_seg.region)
    request = Request(model_component="color-seg")
    request.bitmap.width, request.bitmap.height = width, height
    handle = request.bitmap.shared_memory_handle
    handle.name, handle.size, handle.offset = "/" + image_seg.name, len(image), 4096
    mask = request.anomaly_mask_params.shared_memory_handle
    mask.name, mask.size, mask.offset = mask_seg.name, len(image), 128
    call("shm_color-seg", lambda: result_dict(
        stub.DetectAnomalies(request, timeout=10).detect_anomaly_result))
    out["mask_segment"] = bytes(mask_seg.region).hex()
    out["mask_name"] = mask_seg.name
    out["segments_alive"] = [
        os.path.exists(image_seg.path), os.path.exists(mask_seg.path)
    ]
finally:
    image_seg.close()
    mask_seg.close()
channel.close()
print(json.dumps(out))
"""


def _compile_foreign_proto(folder: Path, mask_number: int) -> None:
    folder.mkdir()
    (folder / contract.PROTO_FILE).write_text(contract.render_proto(mask_number))
    compiled = subprocess.run(
        [
            sys.executable, "-m", "grpc_tools.protoc",
            f"-I{folder}",
            f"--python_out={folder}",
            f"--grpc_python_out={folder}",
            str(folder / contract.PROTO_FILE),
        ],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert compiled.returncode == 0, compiled.stderr
    assert (folder / "edge_agent_pb2.py").exists()
    assert (folder / "edge_agent_pb2_grpc.py").exists()


def _run_foreign(folder: Path, agent: Agent, image: np.ndarray) -> dict[str, Any]:
    image_path = folder / "image.rgb"
    image_path.write_bytes(image.tobytes())
    script = folder / "foreign_client.py"
    script.write_text(FOREIGN_CLIENT)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    height, width = image.shape[:2]
    done = subprocess.run(
        [sys.executable, str(script), agent.address, str(image_path),
         str(width), str(height)],
        capture_output=True, text=True, timeout=60, cwd=folder, env=env,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    answers: dict[str, Any] = json.loads(done.stdout)
    return answers


def _model_list(message: Any) -> list[Any]:
    return [
        message.model_component,
        message.lookout_vision_model_arn,
        pb2.ModelStatus.Name(message.status),
        message.status_message,
    ]


def _result_dict(
    result: pb2.DetectAnomalyResult, mask_name: str | None = None
) -> dict[str, Any]:
    """The project stub's answer, in the foreign client's JSON shape."""
    # Round through float32 -> Python float exactly as the other side does.
    mask: dict[str, Any] | None = None
    if result.HasField("anomaly_mask"):
        bitmap = result.anomaly_mask
        mask = {
            "width": bitmap.width,
            "height": bitmap.height,
            "data": bitmap.WhichOneof("data"),
        }
        if mask["data"] == "byte_data":
            mask["bytes"] = bitmap.byte_data.hex()
        elif mask["data"] == "shared_memory_handle":
            handle = bitmap.shared_memory_handle
            mask["handle"] = [mask_name, handle.size, handle.offset]
    return {
        "is_anomalous": result.is_anomalous,
        "confidence": result.confidence,
        "anomaly_score": result.anomaly_score,
        "anomaly_threshold": result.anomaly_threshold,
        "anomalies": [
            [a.name, a.pixel_anomaly.hex_color, a.pixel_anomaly.total_percentage_area]
            for a in result.anomalies
        ],
        "mask": mask,
    }


def _code(call: Callable[[], object]) -> str:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return str(info.value.code().name)


def _own_answers(
    agent: Agent, image: np.ndarray, segment: Callable[[int], ClientSegment]
) -> dict[str, Any]:
    stub = agent.stub
    own: dict[str, Any] = {
        "list": [
            _model_list(m) for m in stub.ListModels(pb2.ListModelsRequest()).models
        ],
        "describe": _model_list(
            stub.DescribeModel(
                pb2.DescribeModelRequest(model_component="color-seg")
            ).model_description
        ),
        "describe_ghost": _code(
            lambda: stub.DescribeModel(
                pb2.DescribeModelRequest(model_component="ghost")
            )
        ),
        "start_running": _code(
            lambda: stub.StartModel(pb2.StartModelRequest(model_component="red-mean"))
        ),
        "stop_stopped": _code(
            lambda: stub.StopModel(pb2.StopModelRequest(model_component="slow"))
        ),
    }
    for model in ("red-mean", "color-seg"):
        reply = stub.DetectAnomalies(inline_request(model, image), timeout=10)
        own[f"inline_{model}"] = _result_dict(reply.detect_anomaly_result)
    bad = inline_request("red-mean", image)
    bad.bitmap.byte_data = bad.bitmap.byte_data[:-3]
    own["inline_short"] = _code(lambda: stub.DetectAnomalies(bad, timeout=10))
    image_seg = segment(image.nbytes)
    mask_seg = segment(image.nbytes + 128)
    request = shm_request("color-seg", image, image_seg)
    request.anomaly_mask_params.shared_memory_handle.CopyFrom(
        mask_seg.handle(image.nbytes, offset=128)
    )
    reply = stub.DetectAnomalies(request, timeout=10)
    own["shm_color-seg"] = _result_dict(reply.detect_anomaly_result, "mask")
    own["mask_written"] = bytes(mask_seg.region[128:]).hex()
    return own


@pytest.mark.parametrize("mask_number", [2, 3], ids=["mask-field-2", "mask-field-3"])
def test_foreign_client_gets_the_same_answers(
    running: Agent,
    tmp_path: Path,
    segment: Callable[[int], ClientSegment],
    mask_number: int,
) -> None:
    folder = tmp_path / f"foreign-{mask_number}"
    _compile_foreign_proto(folder, mask_number)
    image = colored_image()
    foreign = _run_foreign(folder, running, image)
    own = _own_answers(running, image, segment)

    assert {k: v["ok"] for k, v in foreign.items() if isinstance(v, dict)} == {
        "list": True,
        "describe": True,
        "describe_ghost": False,
        "start_running": False,
        "stop_stopped": False,
        "inline_red-mean": True,
        "inline_color-seg": True,
        "inline_short": False,
        "shm_color-seg": True,
    }
    assert foreign["list"]["reply"] == own["list"]
    assert foreign["describe"]["reply"] == own["describe"]
    assert foreign["describe"]["reply"][2] == "RUNNING"
    codes = {
        "describe_ghost": "NOT_FOUND",
        "start_running": "FAILED_PRECONDITION",
        "stop_stopped": "FAILED_PRECONDITION",
        "inline_short": "INVALID_ARGUMENT",
    }
    for call, code in codes.items():
        assert foreign[call]["code"] == code == own[call], foreign[call]
        assert foreign[call]["details"], "every error carries a details text"
    assert "already RUNNING" in foreign["start_running"]["details"]
    assert "ghost" in foreign["describe_ghost"]["details"]

    for model in ("red-mean", "color-seg"):
        assert foreign[f"inline_{model}"]["reply"] == own[f"inline_{model}"], model
    red = foreign["inline_red-mean"]["reply"]
    assert red["anomaly_score"] == pytest.approx(200 / 255 / 2, abs=1e-6)
    assert red["anomaly_threshold"] == pytest.approx(0.5)
    assert red["is_anomalous"] is False
    assert red["mask"] is None and red["anomalies"] == []
    seg = foreign["inline_color-seg"]["reply"]
    assert [a[:2] for a in seg["anomalies"]] == [
        ["background", "#FFFFFF"],
        ["red", "#FF0000"],
        ["blue", "#0000FF"],
    ]
    assert seg["mask"]["data"] == "byte_data"
    assert (seg["mask"]["width"], seg["mask"]["height"]) == (128, 64)

    # The mask written into the foreign client's own segment, under its
    # own field number, equals the one the project's client gets.
    shm = foreign["shm_color-seg"]["reply"]
    own_shm = own["shm_color-seg"]
    name, size, offset = shm["mask"].pop("handle")
    assert name.lstrip("/") == foreign["mask_name"]
    assert (size, offset) == (image.nbytes, 128)
    own_shm["mask"].pop("handle")
    assert shm == own_shm
    assert shm["mask"]["data"] == "shared_memory_handle"
    foreign_mask = bytes.fromhex(foreign["mask_segment"])
    assert foreign_mask[:128] == b"\x07" * 128, "the agent wrote before offset"
    assert foreign_mask[128:].hex() == own["mask_written"]
    assert foreign_mask[128:].hex() == seg["mask"]["bytes"]
    assert foreign["segments_alive"] == [True, True], "the agent unlinked them"
