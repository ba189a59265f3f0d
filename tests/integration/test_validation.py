"""The validation matrix against a real agent: one case per rule.

Every malformed request is refused with INVALID_ARGUMENT and a details text
that says what was wrong and what is allowed. After the whole matrix a good
request still gets the right answer, no worker died (same pids) and the
agent left no segment behind and unlinked none of the client's.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import grpc
import numpy as np
import pytest

from frontend._proto import edge_agent_pb2 as pb2
from frontend.client import ClientSegment
from tests.agent import Agent, agent_segments
from tests.integration.test_rpcs import (
    RED,
    colored_image,
    expect_code,
    inline_request,
    shm_request,
)

INVALID = grpc.StatusCode.INVALID_ARGUMENT
W, H = 128, 64
NBYTES = W * H * 3  # 24576
U64_MAX = 2**64 - 1
RED_SCORE = RED / 255 / 2  # colored_image(): top half red at RED
MODELS = ("red-mean", "color-seg")
BACKLOG = 4  # conftest starts the agent with --backlog 4


class Segments:
    """Client-owned segments for one case; removed after it."""

    def __init__(self) -> None:
        self.made: list[ClientSegment] = []
        self.paths: list[str] = []

    def __call__(self, size: int) -> ClientSegment:
        self.made.append(ClientSegment(size, prefix=f"ea-val-{os.getpid()}"))
        self.paths.append(f"/dev/shm/{self.made[-1].name}")
        return self.made[-1]

    def named(self, name: str, size: int) -> str:
        """A segment with exactly ``name`` (as a C client would make it)."""
        path = f"/dev/shm/{name}"
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        try:
            os.ftruncate(fd, size)
        finally:
            os.close(fd)
        self.paths.append(path)
        return path

    def symlink(self, name: str, target: str) -> None:
        path = f"/dev/shm/{name}"
        os.symlink(target, path)
        self.paths.append(path)

    def directory(self, name: str) -> None:
        path = f"/dev/shm/{name}"
        os.mkdir(path)
        self.paths.append(path)

    def fifo(self, name: str) -> None:
        path = f"/dev/shm/{name}"
        os.mkfifo(path, 0o600)
        self.paths.append(path)

    def all_exist(self) -> bool:
        return all(os.path.lexists(p) for p in self.paths)

    def close(self) -> None:
        for item in self.made:
            item.close()
        for path in self.paths:
            with contextlib.suppress(FileNotFoundError):
                if os.path.isdir(path) and not os.path.islink(path):
                    os.rmdir(path)
                else:
                    os.unlink(path)


@pytest.fixture
def segs() -> Iterator[Segments]:
    made = Segments()
    yield made
    made.close()


def _unique(tag: str) -> str:
    return f"ea-val-{os.getpid()}-{tag}"


def _image() -> np.ndarray:
    return colored_image(W, H)


def _inline(
    model: str = "red-mean", width: int = W, height: int = H, data: bytes | None = None
) -> pb2.DetectAnomaliesRequest:
    request = pb2.DetectAnomaliesRequest(model_component=model)
    request.bitmap.width, request.bitmap.height = width, height
    request.bitmap.byte_data = _image().tobytes() if data is None else data
    return request


def _handle_request(
    name: str, size: int = NBYTES, offset: int = 0, model: str = "red-mean"
) -> pb2.DetectAnomaliesRequest:
    request = pb2.DetectAnomaliesRequest(model_component=model)
    request.bitmap.width, request.bitmap.height = W, H
    handle = request.bitmap.shared_memory_handle
    handle.name, handle.size, handle.offset = name, size, offset
    return request


def _good_shm(segs: Segments, model: str = "red-mean") -> pb2.DetectAnomaliesRequest:
    return shm_request(model, _image(), segs(NBYTES))


def _with_mask(
    segs: Segments, name: str | None = None, size: int = NBYTES, offset: int = 0
) -> pb2.DetectAnomaliesRequest:
    request = _good_shm(segs, "color-seg")
    if name is None:
        name = "/" + segs(NBYTES).name
    handle = request.anomaly_mask_params.shared_memory_handle
    handle.name, handle.size, handle.offset = name, size, offset
    return request


Build = Callable[[Segments], pb2.DetectAnomaliesRequest]


@dataclass(frozen=True)
class Case:
    id: str
    build: Build
    words: tuple[str, ...] = field(default_factory=tuple)


def _named_model(name: str) -> Build:
    return lambda segs: _inline(model=name)


def _no_bitmap(segs: Segments) -> pb2.DetectAnomaliesRequest:
    return pb2.DetectAnomaliesRequest(model_component="red-mean")


def _sides(width: int, height: int) -> Build:
    def build(segs: Segments) -> pb2.DetectAnomaliesRequest:
        request = pb2.DetectAnomaliesRequest(model_component="red-mean")
        request.bitmap.width, request.bitmap.height = width, height
        # The right byte count for the claimed size where it is positive.
        request.bitmap.byte_data = bytes(max(width, 0) * max(height, 0) * 3)
        return request

    return build


def _no_data(segs: Segments) -> pb2.DetectAnomaliesRequest:
    request = pb2.DetectAnomaliesRequest(model_component="red-mean")
    request.bitmap.width, request.bitmap.height = W, H
    return request


def _bytes(count: int, width: int = W, height: int = H) -> Build:
    return lambda segs: _inline(width=width, height=height, data=bytes(count))


def _padded_rows(segs: Segments) -> pb2.DetectAnomaliesRequest:
    width, height, stride = 100, 64, 320  # 300 bytes a row, padded to 320
    return _inline(width=width, height=height, data=bytes(stride * height))


def _shm_size(size: int) -> Build:
    def build(segs: Segments) -> pb2.DetectAnomaliesRequest:
        segment = segs(min(max(size, NBYTES), 8 * NBYTES))
        return _handle_request("/" + segment.name, size=size)

    return build


def _shm_name(name: str) -> Build:
    return lambda segs: _handle_request(name)


def _slash_inside(segs: Segments) -> pb2.DetectAnomaliesRequest:
    segment = segs(NBYTES)
    return _handle_request(f"/{segment.name}/../{segment.name}")


def _nonexistent(segs: Segments) -> pb2.DetectAnomaliesRequest:
    return _handle_request("/" + _unique("never-created"))


def _past_end(offset: int, segment_size: int = NBYTES) -> Build:
    def build(segs: Segments) -> pb2.DetectAnomaliesRequest:
        segment = segs(segment_size)
        return _handle_request(segment.name, offset=offset)

    return build


def _symlink(segs: Segments) -> pb2.DetectAnomaliesRequest:
    target = segs(NBYTES)
    name = _unique("link")
    segs.symlink(name, f"/dev/shm/{target.name}")
    return _handle_request(name)


def _directory(segs: Segments) -> pb2.DetectAnomaliesRequest:
    name = _unique("dir")
    segs.directory(name)
    return _handle_request(name)


def _fifo(segs: Segments) -> pb2.DetectAnomaliesRequest:
    name = _unique("fifo")
    segs.fifo(name)
    return _handle_request(name)


def _mask_small_handle(segs: Segments) -> pb2.DetectAnomaliesRequest:
    return _with_mask(segs, size=NBYTES - 1)


def _mask_small_segment(segs: Segments) -> pb2.DetectAnomaliesRequest:
    return _with_mask(segs, name=segs(NBYTES - 3).name)


def _mask_offset_past_end(segs: Segments) -> pb2.DetectAnomaliesRequest:
    return _with_mask(segs, offset=1)


def _mask_offset_wraps(segs: Segments) -> pb2.DetectAnomaliesRequest:
    return _with_mask(segs, offset=2**64 - NBYTES)


def _mask_missing(segs: Segments) -> pb2.DetectAnomaliesRequest:
    return _with_mask(segs, name="/" + _unique("no-mask"))


def _mask_bad_name(segs: Segments) -> pb2.DetectAnomaliesRequest:
    return _with_mask(segs, name="/a/b")


def _mask_two_segments(segs: Segments) -> pb2.DetectAnomaliesRequest:
    request = _with_mask(segs)
    other = segs(NBYTES)
    request.anomaly_mask_params.shared_memory_handle_legacy.CopyFrom(
        other.handle(NBYTES)
    )
    return request


VALID_NAME_WORDS = ("not a valid name", "letters, digits")
SIDE_WORDS = ("outside the allowed", "64..4096")

CASES = [
    Case("model-empty", _named_model(""), ("model_component", "empty")),
    Case("model-space", _named_model("red mean"), VALID_NAME_WORDS),
    Case("model-traversal", _named_model("../red-mean"), VALID_NAME_WORDS),
    Case("model-slash", _named_model("models/red-mean"), VALID_NAME_WORDS),
    Case("model-semicolon", _named_model("red-mean;ls"), VALID_NAME_WORDS),
    Case("model-leading-dash", _named_model("-red-mean"), VALID_NAME_WORDS),
    Case("model-non-ascii", _named_model("réd-mean"), VALID_NAME_WORDS),
    Case("model-nul", _named_model("red-mean\0"), VALID_NAME_WORDS),
    Case("model-129-chars", _named_model("r" * 129), ("1 to 128",)),
    Case("bitmap-missing", _no_bitmap, ("bitmap is missing",)),
    *[
        Case(f"{side}-{value}", _sides(*dims), (side, str(value), *SIDE_WORDS))
        for value in (0, 63, 4097, -1, -(2**31))
        for side, dims in (("width", (value, H)), ("height", (W, value)))
    ],
    Case("bitmap-no-data", _no_data, ("no image", "byte_data", "shared_memory")),
    Case("bytes-empty", _bytes(0), ("holds 0 bytes", str(NBYTES))),
    Case("bytes-one-short", _bytes(NBYTES - 1), (str(NBYTES - 1), str(NBYTES))),
    Case("bytes-one-over", _bytes(NBYTES + 1), (str(NBYTES + 1), str(NBYTES))),
    Case(
        "bytes-rgba",
        _bytes(W * H * 4),
        ("4 bytes per pixel", "RGB888", "width x height x 3", str(NBYTES)),
    ),
    Case("bytes-gray", _bytes(W * H), ("1 byte per pixel", "RGB888", str(NBYTES))),
    Case("bytes-2-per-pixel", _bytes(W * H * 2), ("2 bytes per pixel", "RGB888")),
    Case("bytes-padded-rows", _padded_rows, ("padded", "320", "300", "packed")),
    Case("shm-size-short", _shm_size(NBYTES - 1), ("size", str(NBYTES))),
    Case("shm-size-over", _shm_size(NBYTES + 3), ("size", str(NBYTES))),
    Case("shm-size-zero", _shm_size(0), ("size", str(NBYTES))),
    Case("shm-size-rgba", _shm_size(W * H * 4), ("4 bytes per pixel", "RGB888")),
    Case("shm-size-u64-max", _shm_size(U64_MAX), (str(U64_MAX), str(NBYTES))),
    Case("shm-slash-inside", _slash_inside, ("'/'", "at its start")),
    Case("shm-dotdot", _shm_name(".."), ("'..'", "not allowed")),
    Case("shm-slash-dotdot", _shm_name("/.."), ("not allowed",)),
    Case("shm-dot", _shm_name("/."), ("not allowed",)),
    Case("shm-nul", _shm_name("/ea-val\0x"), ("NUL",)),
    Case("shm-256-bytes", _shm_name("/" + "a" * 256), ("longer than 255 bytes",)),
    Case("shm-256-utf8-bytes", _shm_name("é" * 128), ("longer than 255 bytes",)),
    Case("shm-empty", _shm_name(""), ("name is empty",)),
    Case("shm-only-slash", _shm_name("/"), ("name is empty",)),
    Case("shm-double-slash", _shm_name("//seg"), ("'/'",)),
    Case("shm-nonexistent", _nonexistent, ("does not exist", "shm_open")),
    Case(
        "shm-offset-past-end",
        _past_end(1),
        ("offset 1", f"size {NBYTES}", "past the end", f"holds {NBYTES} bytes"),
    ),
    Case("shm-segment-too-small", _past_end(0, NBYTES - 1), ("past the end",)),
    Case("shm-offset-u64-max", _past_end(U64_MAX), (str(U64_MAX), "past the end")),
    Case(
        "shm-offset-wraps-to-zero",
        _past_end(2**64 - NBYTES),
        (str(2**64 - NBYTES), str(2**64), "past the end"),
    ),
    Case(
        "shm-offset-wraps-to-small",
        _past_end(2**64 - NBYTES + 16),
        ("past the end",),
    ),
    Case("shm-symlink", _symlink, ("symbolic link",)),
    Case("shm-directory", _directory, ("not a shared memory segment",)),
    Case("shm-fifo", _fifo, ("not a shared memory segment",)),
    Case(
        "mask-handle-too-small",
        _mask_small_handle,
        ("anomaly_mask_params", "too small", str(NBYTES - 1), str(NBYTES)),
    ),
    Case(
        "mask-segment-too-small",
        _mask_small_segment,
        ("anomaly_mask_params", "past the end", f"holds {NBYTES - 3} bytes"),
    ),
    Case("mask-offset-past-end", _mask_offset_past_end, ("past the end",)),
    Case("mask-offset-wraps", _mask_offset_wraps, ("past the end",)),
    Case(
        "mask-nonexistent",
        _mask_missing,
        ("anomaly_mask_params", "does not exist"),
    ),
    Case("mask-bad-name", _mask_bad_name, ("anomaly_mask_params", "'/'")),
    Case(
        "mask-fields-2-and-3-differ",
        _mask_two_segments,
        ("two different", "2", "3", "set one"),
    ),
]


@dataclass
class Baseline:
    pids: dict[str, int]
    segments: set[str]


@pytest.fixture(scope="module")
def baseline(agent: Agent) -> Baseline:
    """Worker pids and agent segments before the matrix."""
    for model in MODELS:
        agent.wait_status(model, "RUNNING")
    return Baseline(
        pids={m: agent.worker(m).pid for m in MODELS},
        segments=set(agent_segments(agent.pid)),
    )


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_refused_with_reason(
    running: Agent, baseline: Baseline, segs: Segments, case: Case
) -> None:
    request = case.build(segs)
    details = expect_code(lambda: running.stub.DetectAnomalies(request), INVALID)
    missing = [w for w in case.words if w not in details]
    assert not missing, f"details {details!r} lack {missing}"
    assert segs.all_exist(), "the agent removed a client's segment"


@pytest.mark.parametrize(
    ("rpc", "name"),
    [
        (rpc, name)
        for rpc in ("DescribeModel", "StartModel", "StopModel")
        for name in ("", "../red-mean", "red mean")
    ],
)
def test_other_rpcs_refuse_bad_names(
    running: Agent, baseline: Baseline, rpc: str, name: str
) -> None:
    request = getattr(pb2, f"{rpc}Request")(model_component=name)
    details = expect_code(lambda: getattr(running.stub, rpc)(request), INVALID)
    assert "model_component" in details
    assert ("empty" if not name else "not a valid name") in details


def _score(reply: pb2.DetectAnomaliesResponse) -> float:
    return float(reply.detect_anomaly_result.anomaly_score)


@pytest.mark.parametrize("leading_slash", [True, False], ids=["slash", "no-slash"])
def test_segment_name_with_or_without_slash(
    running: Agent, baseline: Baseline, segs: Segments, leading_slash: bool
) -> None:
    image_seg, mask_seg = segs(NBYTES), segs(NBYTES)
    prefix = "/" if leading_slash else ""
    request = _handle_request(prefix + image_seg.name)
    image_seg.array((H, W, 3))[...] = _image()
    reply = running.stub.DetectAnomalies(request, timeout=10)
    assert _score(reply) == pytest.approx(RED_SCORE, abs=1e-6)
    request = _handle_request(prefix + image_seg.name, model="color-seg")
    mask = request.anomaly_mask_params.shared_memory_handle
    mask.name, mask.size = prefix + mask_seg.name, NBYTES
    result = running.stub.DetectAnomalies(request, timeout=10).detect_anomaly_result
    assert result.anomaly_mask.WhichOneof("data") == "shared_memory_handle"
    assert result.anomaly_mask.shared_memory_handle.name.lstrip("/") == mask_seg.name
    assert mask_seg.array((H, W, 3))[0, 0].tolist() == [255, 0, 0]
    assert segs.all_exist()


def test_extent_exactly_at_the_end_is_accepted(
    running: Agent, baseline: Baseline, segs: Segments
) -> None:
    offset = 12345  # unaligned, and offset + size == the segment's size
    segment = segs(NBYTES + offset)
    reply = running.stub.DetectAnomalies(
        shm_request("red-mean", _image(), segment, offset=offset), timeout=10
    )
    assert _score(reply) == pytest.approx(RED_SCORE, abs=1e-6)


def test_name_of_255_bytes_is_accepted(
    running: Agent, baseline: Baseline, segs: Segments
) -> None:
    name = _unique("long-")
    name += "n" * (255 - len(name))
    segs.named(name, NBYTES)
    fd = os.open(f"/dev/shm/{name}", os.O_RDWR)
    with open(fd, "r+b") as region:
        region.write(_image().tobytes())
    reply = running.stub.DetectAnomalies(_handle_request("/" + name), timeout=10)
    assert _score(reply) == pytest.approx(RED_SCORE, abs=1e-6)


def test_mask_fields_2_and_3_naming_the_same_segment(
    running: Agent, baseline: Baseline, segs: Segments
) -> None:
    request = _with_mask(segs)
    params = request.anomaly_mask_params
    params.shared_memory_handle_legacy.CopyFrom(params.shared_memory_handle)
    result = running.stub.DetectAnomalies(request, timeout=10).detect_anomaly_result
    assert result.anomaly_score == pytest.approx(0.625)
    assert result.anomaly_mask.WhichOneof("data") == "shared_memory_handle"


def test_mask_params_without_handle_give_the_mask_inline(
    running: Agent, baseline: Baseline
) -> None:
    request = inline_request("color-seg", _image())
    request.anomaly_mask_params.SetInParent()
    result = running.stub.DetectAnomalies(request, timeout=10).detect_anomaly_result
    assert result.anomaly_mask.WhichOneof("data") == "byte_data"
    assert len(result.anomaly_mask.byte_data) == NBYTES


def test_mask_overlapping_the_image_is_refused(
    running: Agent, baseline: Baseline, segs: Segments
) -> None:
    """A mask written over the image it came from would corrupt the image."""
    image = _image()
    shared = segs(2 * NBYTES)
    for mask_offset, refused in ((0, True), (NBYTES - 1, True), (NBYTES, False)):
        request = shm_request("color-seg", image, shared)
        handle = request.anomaly_mask_params.shared_memory_handle
        handle.name, handle.size, handle.offset = shared.name, NBYTES, mask_offset
        if refused:
            details = expect_code(
                lambda r=request: running.stub.DetectAnomalies(r, timeout=10),
                INVALID,
            )
            assert "overlap" in details and "own range" in details
        else:
            result = running.stub.DetectAnomalies(request, timeout=10)
            assert result.detect_anomaly_result.anomaly_score == pytest.approx(0.625)
    np.testing.assert_array_equal(shared.array(image.shape), image)


def test_segments_the_agent_owns_are_refused(
    running: Agent, baseline: Baseline
) -> None:
    """A handle may not name the agent's own staging segments.

    They hold other clients' inline images: reading one would hand a
    client someone else's image, and a mask written into one would corrupt
    a request in flight. The contract has clients pass segments they own.
    """
    for model in MODELS:  # make sure each model has a staging segment
        running.stub.DetectAnomalies(inline_request(model, _image()), timeout=10)
    staging = sorted(agent_segments(running.pid))
    assert staging, "inline requests are staged in agent-owned segments"
    problems = []
    for name in staging:
        for slash in ("", "/"):
            image_request = _handle_request(slash + name)
            mask_request = inline_request("color-seg", _image())
            mask = mask_request.anomaly_mask_params.shared_memory_handle
            mask.name, mask.size = slash + name, NBYTES
            for role, request in (("bitmap", image_request), ("mask", mask_request)):
                try:
                    running.stub.DetectAnomalies(request, timeout=10)
                except grpc.RpcError as error:
                    if error.code() != INVALID:
                        problems.append(f"{role} {slash}{name}: {error.code()}")
                    continue
                problems.append(f"{role} handle naming {slash}{name} was served")
    assert not problems, "\n".join(problems)


def _quarter_red(width: int, height: int) -> np.ndarray:
    image = np.zeros((height, width, 3), np.uint8)
    image[: height // 4, :, 0] = 255
    image[height // 4 : height // 2, : width // 2, 2] = 255
    return image


def _reference_red_mean(image: np.ndarray) -> float:
    import onnxruntime

    from tests.model_factory import red_mean_graph

    model = red_mean_graph()
    model.ir_version = 8
    session = onnxruntime.InferenceSession(
        model.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    return float(session.run(None, {"image": image})[0][0])


def test_largest_image_through_shared_memory(
    running: Agent, baseline: Baseline, segs: Segments
) -> None:
    image = _quarter_red(4096, 4096)
    reply = running.stub.DetectAnomalies(
        shm_request("red-mean", image, segs(image.nbytes)), timeout=30
    )
    # float32 ReduceMean over 16 Mi pixels is 0.2509, not 0.25: compare with
    # the same graph run here on the same pixels.
    assert _score(reply) == pytest.approx(0.25, abs=2e-3)
    assert _score(reply) == pytest.approx(_reference_red_mean(image), abs=1e-6)


def test_smallest_image_inline(running: Agent, baseline: Baseline) -> None:
    image = _quarter_red(64, 64)
    reply = running.stub.DetectAnomalies(inline_request("red-mean", image))
    assert _score(reply) == pytest.approx(0.25, abs=1e-6)
    reply = running.stub.DetectAnomalies(inline_request("color-seg", image))
    result = reply.detect_anomaly_result
    assert result.anomaly_score == pytest.approx(0.375)
    assert (result.anomaly_mask.width, result.anomaly_mask.height) == (64, 64)


def test_inline_message_above_4_mib(running: Agent, baseline: Baseline) -> None:
    image = _quarter_red(1920, 1080)
    assert image.nbytes > 4 * 1024 * 1024
    reply = running.stub.DetectAnomalies(inline_request("red-mean", image))
    assert _score(reply) == pytest.approx(0.25, abs=1e-6)


def test_largest_image_inline_both_directions(
    running: Agent, baseline: Baseline
) -> None:
    """A 48 MiB request, and a 48 MiB mask in the reply."""
    image = _quarter_red(4096, 4096)
    reply = running.stub.DetectAnomalies(inline_request("color-seg", image), timeout=30)
    result = reply.detect_anomaly_result
    assert result.anomaly_score == pytest.approx(0.375)
    assert len(result.anomaly_mask.byte_data) == image.nbytes
    mask = np.frombuffer(result.anomaly_mask.byte_data, np.uint8)
    mask = mask.reshape(image.shape)
    assert mask[0, 0].tolist() == [255, 0, 0]
    assert mask[1024, 0].tolist() == [0, 0, 255]
    assert mask[-1, -1].tolist() == [255, 255, 255]


def test_largest_rgba_image_inline_is_explained(
    running: Agent, baseline: Baseline
) -> None:
    """64 MiB of RGBA at the largest size reaches validation, not a limit."""
    request = _inline(width=4096, height=4096, data=bytes(4096 * 4096 * 4))
    details = expect_code(
        lambda: running.stub.DetectAnomalies(request, timeout=30), INVALID
    )
    assert "4 bytes per pixel" in details and "RGB888" in details


def test_after_the_matrix(running: Agent, baseline: Baseline, segs: Segments) -> None:
    """A good request succeeds; no worker died; no segment leaked."""
    reply = running.stub.DetectAnomalies(_good_shm(segs), timeout=10)
    assert _score(reply) == pytest.approx(RED_SCORE, abs=1e-6)
    reply = running.stub.DetectAnomalies(_inline(), timeout=10)
    assert _score(reply) == pytest.approx(RED_SCORE, abs=1e-6)
    for model in MODELS:
        assert running.status(model) == "RUNNING"
        assert running.worker(model).pid == baseline.pids[model], (
            f"the worker of {model} was replaced: it crashed"
        )
    # Staging segments are pooled: at most the backlog per model, all of
    # this agent's run; nothing else of the agent's in /dev/shm.
    segments = set(agent_segments(running.pid))
    for model in MODELS:
        mine = [s for s in segments if f".{model}-" in s]
        assert len(mine) <= BACKLOG, mine
    assert all(any(f".{m}-" in s for m in MODELS) for s in segments), segments
    # Every client segment of earlier cases was removed by its test, none
    # by the agent (each case checked that they all still existed).
    ours = {n for n in os.listdir("/dev/shm") if n.startswith(_unique(""))}
    assert ours == {os.path.basename(p) for p in segs.paths}
    assert "Traceback" not in running.log(), running.log()[-4000:]


@pytest.mark.parametrize(
    "rpc", ["DetectAnomalies", "StartModel", "StopModel", "DescribeModel"]
)
def test_bytes_that_are_no_message_are_invalid_argument(agent: Agent, rpc: str) -> None:
    # Field 1 as a length-delimited value claiming 100 bytes, with 2 present.
    garbage = b"\x0a\x64ab"
    call = agent.channel.unary_unary(
        f"/AWS.LookoutVision.EdgeAgent/{rpc}",
        request_serializer=None,
        response_deserializer=None,
    )
    with pytest.raises(grpc.RpcError) as caught:
        call(garbage, timeout=10)
    assert caught.value.code() == INVALID
    details = caught.value.details() or ""
    assert f"the {rpc} request is not a valid AWS.LookoutVision." in details
    # The agent still answers a good request of the same RPC.
    described = agent.stub.DescribeModel(
        pb2.DescribeModelRequest(model_component="red-mean"), timeout=10
    )
    assert described.model_description.model_component == "red-mean"
