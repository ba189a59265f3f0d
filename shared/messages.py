"""Records the frontend and a worker exchange over their ZeroMQ pair.

Every message is a list of frames: a type tag, a JSON header, and for some
records one payload frame of raw bytes (an inline image or mask). Requests
and their replies carry the same ``id``. Errors cross the boundary as values
(``ErrorReply`` with a kind and a message), never as pickled exceptions.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, ClassVar

from shared.segments import SegmentRef

# Kinds of a failed request, as the worker reports them; the frontend maps
# each to a gRPC status.
KIND_INVALID_ARGUMENT = "invalid_argument"
KIND_INTERNAL = "internal"
KIND_DEADLINE = "deadline"


class ProtocolError(ValueError):
    """A message that does not decode into a known record."""


@dataclass(frozen=True)
class DetectRequest:
    """Run the model on one image.

    The image is in ``image`` (a segment) or, when that is None, in the
    payload frame. ``mask`` names a client segment the mask is written into;
    without it a segmentation model returns the mask as a payload frame.
    """

    TAG: ClassVar[bytes] = b"detect"
    id: int
    width: int
    height: int
    image: SegmentRef | None = None
    mask: SegmentRef | None = None
    # CLOCK_MONOTONIC seconds (system-wide on Linux) after which nobody
    # waits for the answer; 0 for none.
    deadline_s: float = 0.0


@dataclass(frozen=True)
class DetectReply:
    """The model's answer; ``fractions`` has background first."""

    TAG: ClassVar[bytes] = b"result"
    id: int
    score: float
    fractions: list[float] = field(default_factory=list)
    mask_width: int = 0
    mask_height: int = 0
    mask_in_segment: bool = False
    inference_s: float = 0.0
    # CLOCK_MONOTONIC seconds when the worker took the request from its
    # queue; 0 from a worker that does not say.
    started_s: float = 0.0


@dataclass(frozen=True)
class ErrorReply:
    TAG: ClassVar[bytes] = b"error"
    id: int
    kind: str
    message: str


@dataclass(frozen=True)
class Heartbeat:
    """Sent from the worker's serving loop: proof that it serves."""

    TAG: ClassVar[bytes] = b"heartbeat"
    pid: int
    state: str
    cores: list[int]
    rss_bytes: int
    requests: int
    latency_ms_p50: float
    # User and system CPU seconds of the worker process so far.
    cpu_s: float = 0.0


@dataclass(frozen=True)
class Ready:
    """The model is loaded and warm; the worker takes requests."""

    TAG: ClassVar[bytes] = b"ready"
    pid: int
    cores: list[int]
    load_s: float
    warmup_s: float


@dataclass(frozen=True)
class Fatal:
    """Why the worker is about to exit; ``kind`` is "model" or "internal"."""

    TAG: ClassVar[bytes] = b"fatal"
    kind: str
    message: str


@dataclass(frozen=True)
class Stop:
    """Finish the requests already received, then exit."""

    TAG: ClassVar[bytes] = b"stop"


Record = DetectRequest | DetectReply | ErrorReply | Heartbeat | Ready | Fatal | Stop

_TYPES: dict[bytes, type[Any]] = {
    t.TAG: t
    for t in (DetectRequest, DetectReply, ErrorReply, Heartbeat, Ready, Fatal, Stop)
}


def _fields(record: Record) -> dict[str, Any]:
    """The record's fields in order, segment references as dicts.

    ``dataclasses.asdict`` would do it, at several times the cost: it
    deep-copies every value, and this runs twice per request.
    """
    fields = dict(record.__dict__)
    for key in ("image", "mask"):
        ref = fields.get(key)
        if isinstance(ref, SegmentRef):
            fields[key] = dict(ref.__dict__)
    return fields


def encode(record: Record, payload: Any = None) -> list[Any]:
    """Frames for ``record``, with ``payload`` (a buffer) as the last frame."""
    header = json.dumps(_fields(record), separators=(",", ":"))
    frames: list[Any] = [record.TAG, header.encode()]
    if payload is not None:
        frames.append(payload)
    return frames


def decode(frames: list[Any]) -> tuple[Record, Any]:
    """Return the record and its payload frame (or None)."""
    if len(frames) not in (2, 3):
        raise ProtocolError(f"expected 2 or 3 frames, got {len(frames)}")
    tag = bytes(frames[0])
    record_type = _TYPES.get(tag)
    if record_type is None:
        raise ProtocolError(f"unknown message type {tag!r}")
    try:
        fields = json.loads(bytes(frames[1]))
        if not isinstance(fields, dict):
            raise ProtocolError(f"{tag.decode()} header is not a JSON object")
        for key in ("image", "mask"):
            if isinstance(fields.get(key), dict):
                fields[key] = SegmentRef(**fields[key])
        record = record_type(**fields)
    except (ValueError, TypeError) as exc:
        raise ProtocolError(f"bad {tag.decode()} header: {exc}") from exc
    return record, (frames[2] if len(frames) == 3 else None)
