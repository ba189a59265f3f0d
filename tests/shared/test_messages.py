"""shared.messages: every record survives encode/decode; bad frames do not."""

from __future__ import annotations

from typing import Any

import pytest
import zmq

from shared import messages
from shared.messages import (
    DetectReply,
    DetectRequest,
    ErrorReply,
    Fatal,
    Heartbeat,
    ProtocolError,
    Ready,
    Stop,
    decode,
    encode,
)
from shared.segments import SegmentRef

RECORDS: list[Any] = [
    DetectRequest(id=1, width=64, height=32),
    DetectRequest(
        id=2**53,
        width=4096,
        height=4096,
        image=SegmentRef(name="cam0", offset=2**64 - 1, size=50331648),
        mask=SegmentRef(name="mask-é", offset=0, size=6144),
    ),
    DetectRequest(id=3, width=64, height=64, mask=SegmentRef("m", 8, 12288)),
    DetectReply(id=4, score=0.1),
    DetectReply(
        id=5,
        score=0.3333333333333333,
        fractions=[0.5, 0.25, 0.25],
        mask_width=64,
        mask_height=32,
        mask_in_segment=True,
        inference_s=1e-05,
        started_s=123456.789,
    ),
    ErrorReply(
        id=6, kind=messages.KIND_INVALID_ARGUMENT, message='bad "name" é\n\0'
    ),
    ErrorReply(id=7, kind=messages.KIND_INTERNAL, message=""),
    Heartbeat(
        pid=1234,
        state="serving",
        cores=[0, 1],
        rss_bytes=2**40,
        requests=17,
        latency_ms_p50=3.25,
        cpu_s=12.5,
    ),
    Heartbeat(pid=1, state="serving", cores=[], rss_bytes=0, requests=0,
              latency_ms_p50=0.0),
    Ready(pid=99, cores=[1], load_s=0.125, warmup_s=2.5),
    Fatal(kind="model", message="the graph must take one input named 'image'"),
    Stop(),
]  # fmt: skip


def ids(record: Any) -> str:
    return type(record).__name__


@pytest.mark.parametrize("record", RECORDS, ids=ids)
def test_round_trip_without_payload(record: Any) -> None:
    frames = encode(record)
    assert len(frames) == 2
    assert frames[0] == type(record).TAG
    decoded, payload = decode(frames)
    assert decoded == record
    assert type(decoded) is type(record)
    assert payload is None


@pytest.mark.parametrize("record", RECORDS, ids=ids)
def test_round_trip_with_payload(record: Any) -> None:
    payload = memoryview(bytes(range(256)) * 3)
    frames = encode(record, payload)
    assert len(frames) == 3
    assert frames[2] is payload
    decoded, got = decode(frames)
    assert decoded == record
    assert got is payload


def test_empty_payload_is_still_a_frame() -> None:
    frames = encode(Stop(), b"")
    assert frames == [b"stop", b"{}", b""]
    record, payload = decode(frames)
    assert record == Stop()
    assert payload == b""


def test_segment_refs_decode_to_segment_refs() -> None:
    record, _ = decode(encode(RECORDS[1]))
    assert isinstance(record, DetectRequest)
    assert isinstance(record.image, SegmentRef)
    assert isinstance(record.mask, SegmentRef)
    assert record.image.offset == 2**64 - 1


def test_headers_without_the_timing_fields_still_decode() -> None:
    """A worker that predates ``started_s`` and ``cpu_s`` is still understood."""
    reply, _ = decode([b"result", b'{"id":4,"score":0.5,"inference_s":0.25}'])
    assert reply == DetectReply(id=4, score=0.5, inference_s=0.25, started_s=0.0)
    beat, _ = decode([
        b"heartbeat",
        b'{"pid":1,"state":"serving","cores":[0],"rss_bytes":9,"requests":0,'
        b'"latency_ms_p50":0.0}',
    ])  # fmt: skip
    assert isinstance(beat, Heartbeat)
    assert beat.cpu_s == 0.0


def test_encoded_frames_are_exact() -> None:
    assert encode(Stop()) == [b"stop", b"{}"]
    assert encode(ErrorReply(id=1, kind="internal", message="x")) == [
        b"error",
        b'{"id":1,"kind":"internal","message":"x"}',
    ]
    assert encode(DetectRequest(id=9, width=64, height=64, mask=SegmentRef("m", 0, 3)))[
        1
    ] == (
        b'{"id":9,"width":64,"height":64,"image":null,'
        b'"mask":{"name":"m","offset":0,"size":3},"deadline_s":0.0}'
    )


def test_tags_are_distinct() -> None:
    tags = [r.TAG for r in (DetectRequest, DetectReply, ErrorReply, Heartbeat, Ready,
                            Fatal, Stop)]  # fmt: skip
    assert tags == [b"detect", b"result", b"error", b"heartbeat", b"ready",
                    b"fatal", b"stop"]  # fmt: skip


@pytest.mark.parametrize("record", RECORDS, ids=ids)
def test_round_trip_over_zeromq_without_copies(record: Any) -> None:
    """As the agent sends them: copy=False frames on a real socket pair."""
    context = zmq.Context()
    try:
        left = context.socket(zmq.PAIR)
        right = context.socket(zmq.PAIR)
        left.setsockopt(zmq.LINGER, 0)
        right.setsockopt(zmq.LINGER, 0)
        left.bind("inproc://messages-test")
        right.connect("inproc://messages-test")
        payload = bytes(range(256)) * 512  # 128 KiB: pyzmq does not copy it
        left.send_multipart(encode(record, memoryview(payload)), copy=False)
        assert right.poll(5000)
        frames = right.recv_multipart(copy=False)
        decoded, got = decode(frames)
        assert decoded == record
        assert bytes(got.buffer) == payload
        left.send_multipart(encode(record), copy=False)
        assert right.poll(5000)
        assert decode(right.recv_multipart(copy=False)) == (record, None)
        left.close()
        right.close()
    finally:
        context.term()


@pytest.mark.parametrize("count", [0, 1, 4, 5])
def test_decode_wrong_frame_count(count: int) -> None:
    frames = [b"stop", b"{}", b"", b"", b""][:count]
    with pytest.raises(ProtocolError) as info:
        decode(frames)
    assert str(info.value) == f"expected 2 or 3 frames, got {count}"


@pytest.mark.parametrize("tag", [b"nope", b"", b"STOP", b"stop ", b"\xff\x00"])
def test_decode_unknown_tag(tag: bytes) -> None:
    with pytest.raises(ProtocolError) as info:
        decode([tag, b"{}"])
    assert str(info.value) == f"unknown message type {tag!r}"


@pytest.mark.parametrize(
    ("tag", "header"),
    [
        (b"stop", b"{"),
        (b"stop", b""),
        (b"detect", b"not json"),
        (b"detect", b"\xff\xfe"),
        (b"result", b'{"id": 1, "score": 0.5,}'),
        # Missing and unknown fields.
        (b"detect", b'{"id": 1}'),
        (b"result", b'{"id": 1}'),
        (b"stop", b'{"id": 1}'),
        (b"error", b'{"id": 1, "kind": "internal", "message": "x", "extra": 1}'),
        # A segment reference with missing or unknown fields.
        (b"detect", b'{"id": 1, "width": 64, "height": 64, "image": {"name": "x"}}'),
        (
            b"detect",
            b'{"id": 1, "width": 64, "height": 64, '
            b'"image": {"name": "x", "offset": 0, "size": 1, "path": "/etc"}}',
        ),
    ],
)
def test_decode_bad_header(tag: bytes, header: bytes) -> None:
    with pytest.raises(ProtocolError) as info:
        decode([tag, header])
    assert str(info.value).startswith(f"bad {tag.decode()} header: ")


@pytest.mark.parametrize("header", [b"[]", b"null", b"1", b'"stop"'])
def test_decode_header_not_an_object(header: bytes) -> None:
    """Valid JSON that is no object is a bad header too, not a crash."""
    with pytest.raises(ProtocolError) as info:
        decode([b"detect", header])
    assert str(info.value).startswith("bad detect header: ")


def test_protocol_error_is_a_value_error() -> None:
    assert issubclass(ProtocolError, ValueError)
