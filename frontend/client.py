"""A Python client of the Edge Agent API, for scripts and the CLI.

Images go through a shared-memory segment this client creates and owns (and
removes when closed, also on Ctrl-C) or inline in the request. Any program
compiled from the same ``edge-agent.proto`` works the same way; this module
only saves the boilerplate.
"""

from __future__ import annotations

import mmap
import os
import secrets
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import grpc
import numpy as np

from frontend._proto import edge_agent_pb2 as pb2
from frontend._proto import edge_agent_pb2_grpc as pb2_grpc
from frontend.config import DEFAULT_SOCKET, MIB
from shared.segments import create_segment, unlink_segment

MESSAGE_LIMIT = 64 * MIB + MIB


class ClientSegment:
    """A segment owned by this client: created here, unlinked on close."""

    def __init__(
        self, size: int, prefix: str = "edge-agent-client", mode: int = 0o600
    ) -> None:
        self.name = f"{prefix}-{os.getpid()}-{secrets.token_hex(4)}"
        self.size = size
        fd = create_segment(self.name, size, mode)
        try:
            self.region = mmap.mmap(fd, size)
        except BaseException:
            unlink_segment(self.name)
            raise
        finally:
            os.close(fd)

    def array(self, shape: tuple[int, ...], offset: int = 0) -> np.ndarray:
        count = int(np.prod(shape))
        view = np.frombuffer(self.region, np.uint8, count=count, offset=offset)
        return view.reshape(shape)

    def handle(self, size: int, offset: int = 0) -> pb2.SharedMemoryHandle:
        return pb2.SharedMemoryHandle(name="/" + self.name, size=size, offset=offset)

    def close(self) -> None:
        try:
            self.region.close()
        finally:
            unlink_segment(self.name)

    def __enter__(self) -> ClientSegment:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


@dataclass
class Detection:
    """A DetectAnomalies result, with the mask as an HxWx3 array if any."""

    is_anomalous: bool
    confidence: float
    anomaly_score: float
    anomaly_threshold: float
    anomalies: list[dict[str, Any]] = field(default_factory=list)
    mask: np.ndarray | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "is_anomalous": self.is_anomalous,
            "confidence": round(self.confidence, 6),
            "anomaly_score": round(self.anomaly_score, 6),
            "anomaly_threshold": round(self.anomaly_threshold, 6),
            "anomalies": self.anomalies,
        }
        if self.mask is not None:
            out["anomaly_mask"] = {
                "width": int(self.mask.shape[1]),
                "height": int(self.mask.shape[0]),
            }
        return out


def status_name(status: int) -> str:
    return str(pb2.ModelStatus.Name(status))  # type: ignore[arg-type]


class EdgeAgentClient:
    """A channel to the agent and the five calls."""

    def __init__(
        self,
        address: str = DEFAULT_SOCKET,
        timeout_s: float = 60.0,
        segment_mode: int = 0o600,
    ) -> None:
        """``address`` is a gRPC target; a bare absolute path means
        ``unix://PATH``. ``segment_mode`` 0o660 lets an agent of the same
        group, run as another user (as under deploy/edge-agent.service), use
        our segments."""
        self.segment_mode = segment_mode
        if address.startswith("/"):
            address = f"unix://{address}"  # a bare socket path
        self.channel = grpc.insecure_channel(
            address,
            options=[
                ("grpc.max_receive_message_length", MESSAGE_LIMIT),
                ("grpc.max_send_message_length", MESSAGE_LIMIT),
            ],
        )
        self.stub = pb2_grpc.EdgeAgentStub(self.channel)
        self.timeout_s = timeout_s

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> EdgeAgentClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def detect(
        self,
        model: str,
        image: np.ndarray,
        *,
        inline: bool = False,
        want_mask_in_segment: bool = False,
    ) -> Detection:
        """Score an HxWx3 uint8 RGB image (byte 0 red)."""
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise TypeError(
                f"images must be uint8 arrays of shape (height, width, 3), RGB; "
                f"got {image.dtype} {image.shape}"
            )
        image = np.ascontiguousarray(image)
        height, width = image.shape[:2]
        size = image.nbytes
        request = pb2.DetectAnomaliesRequest(model_component=model)
        request.bitmap.width, request.bitmap.height = width, height
        segments: list[ClientSegment] = []
        try:
            if inline:
                request.bitmap.byte_data = image.tobytes()
            else:
                segment = ClientSegment(size, mode=self.segment_mode)
                segments.append(segment)
                segment.array(image.shape)[...] = image
                request.bitmap.shared_memory_handle.CopyFrom(segment.handle(size))
            mask_segment = None
            if want_mask_in_segment:
                mask_segment = ClientSegment(size, mode=self.segment_mode)
                segments.append(mask_segment)
                request.anomaly_mask_params.shared_memory_handle.CopyFrom(
                    mask_segment.handle(size)
                )
            response = self.stub.DetectAnomalies(request, timeout=self.timeout_s)
            return _detection(response.detect_anomaly_result, mask_segment)
        finally:
            for segment in segments:
                segment.close()

    def start(self, model: str) -> str:
        request = pb2.StartModelRequest(model_component=model)
        return status_name(self.stub.StartModel(request, timeout=self.timeout_s).status)

    def stop(self, model: str) -> str:
        request = pb2.StopModelRequest(model_component=model)
        return status_name(self.stub.StopModel(request, timeout=self.timeout_s).status)

    def describe(self, model: str) -> dict[str, str]:
        request = pb2.DescribeModelRequest(model_component=model)
        reply = self.stub.DescribeModel(request, timeout=self.timeout_s)
        return _metadata(reply.model_description)

    def models(self) -> list[dict[str, str]]:
        reply = self.stub.ListModels(pb2.ListModelsRequest(), timeout=self.timeout_s)
        return [_metadata(m) for m in reply.models]


def _metadata(message: Any) -> dict[str, str]:
    return {
        "model_component": message.model_component,
        "lookout_vision_model_arn": message.lookout_vision_model_arn,
        "status": status_name(message.status),
        "status_message": message.status_message,
    }


def _detection(
    result: pb2.DetectAnomalyResult, mask_segment: ClientSegment | None
) -> Detection:
    mask = None
    if result.HasField("anomaly_mask"):
        bitmap = result.anomaly_mask
        shape = (bitmap.height, bitmap.width, 3)
        if bitmap.WhichOneof("data") == "byte_data":
            mask = np.frombuffer(bitmap.byte_data, np.uint8).reshape(shape)
        elif mask_segment is not None:
            offset = bitmap.shared_memory_handle.offset
            mask = mask_segment.array(shape, offset).copy()
    return Detection(
        is_anomalous=result.is_anomalous,
        confidence=result.confidence,
        anomaly_score=result.anomaly_score,
        anomaly_threshold=result.anomaly_threshold,
        anomalies=[
            {
                "name": a.name,
                "hex_color": a.pixel_anomaly.hex_color,
                "total_percentage_area": round(
                    a.pixel_anomaly.total_percentage_area, 6
                ),
            }
            for a in result.anomalies
        ],
        mask=mask,
    )
