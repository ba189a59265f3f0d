"""Checks on a DetectAnomalies request, before any memory is touched.

Everything here is arithmetic on the message's fields, in Python ints; the
segments themselves are checked (opened and fstat-ed, never mapped) by
``check_segments`` once the model is known to be running.
"""

from __future__ import annotations

from dataclasses import dataclass

from frontend._proto import edge_agent_pb2 as pb2
from frontend.errors import invalid
from shared.component import check_component_name
from shared.images import MAX_SIDE, MIN_SIDE
from shared.segments import SegmentError, SegmentRef, check_segment, normalise_name

# Cameras pad rows to an alignment of at most a few hundred bytes; a larger
# surplus is some other mistake, and no stride hint is given for it.
_MAX_ROW_PADDING = 1024


@dataclass(frozen=True)
class DetectJob:
    """A request that passed every check that needs no model."""

    model: str
    width: int
    height: int
    inline: bytes | None
    image: SegmentRef | None
    mask: SegmentRef | None

    @property
    def image_bytes(self) -> int:
        return self.width * self.height * 3


def check_name(name: str) -> str:
    problem = check_component_name(name)
    if problem is not None:
        raise invalid(problem)
    return name


def _byte_count_problem(got: int, width: int, height: int, what: str) -> str:
    """Explain a wrong byte count in terms a camera integrator recognises."""
    expected = width * height * 3
    message = (
        f"{what} holds {got} bytes; a {width}x{height} RGB888 image is "
        f"width x height x 3 = {expected} bytes"
    )
    pixels = width * height
    if got == pixels * 4:
        message += "; got 4 bytes per pixel (RGBA or BGRA?): the agent takes RGB888"
    elif got == pixels:
        message += "; got 1 byte per pixel (grayscale?): the agent takes RGB888"
    elif got == pixels * 2:
        message += "; got 2 bytes per pixel (YUV or RGB565?): the agent takes RGB888"
    elif (
        got > expected
        and height
        and got % height == 0
        and (got // height - width * 3 <= _MAX_ROW_PADDING)
    ):
        message += (
            f"; rows of {got // height} bytes instead of {width * 3} look "
            "padded: send rows packed, without stride padding"
        )
    return message


def _handle(handle: pb2.SharedMemoryHandle, role: str) -> tuple[str, int, int]:
    try:
        name = normalise_name(handle.name, role)
    except SegmentError as exc:
        raise invalid(str(exc)) from None
    return name, int(handle.offset), int(handle.size)


def _same_segment(params: pb2.AnomalyMaskParams) -> bool:
    first, second = params.shared_memory_handle, params.shared_memory_handle_legacy
    return (first.name.lstrip("/"), first.offset, first.size) == (
        second.name.lstrip("/"),
        second.offset,
        second.size,
    )


def _mask_handle(request: pb2.DetectAnomaliesRequest) -> pb2.SharedMemoryHandle | None:
    if not request.HasField("anomaly_mask_params"):
        return None
    params = request.anomaly_mask_params
    current = params.HasField("shared_memory_handle")
    legacy = params.HasField("shared_memory_handle_legacy")
    if current and legacy and not _same_segment(params):
        raise invalid(
            "anomaly_mask_params names two different mask segments (fields 2 "
            "and 3); set one of them"
        )
    if current:
        return params.shared_memory_handle
    if legacy:
        return params.shared_memory_handle_legacy
    return None


def parse_detect(request: pb2.DetectAnomaliesRequest) -> DetectJob:
    model = check_name(request.model_component)
    if not request.HasField("bitmap"):
        raise invalid("bitmap is missing; send the image in bitmap")
    bitmap = request.bitmap
    width, height = int(bitmap.width), int(bitmap.height)
    for side, value in (("width", width), ("height", height)):
        if not MIN_SIDE <= value <= MAX_SIDE:
            raise invalid(
                f"bitmap {side} {value} is outside the allowed "
                f"{MIN_SIDE}..{MAX_SIDE} pixels"
            )
    expected = width * height * 3
    source = bitmap.WhichOneof("data")
    inline: bytes | None = None
    image: SegmentRef | None = None
    if source == "byte_data":
        # Each read of a bytes field copies it: read it once.
        inline = bitmap.byte_data
        if len(inline) != expected:
            raise invalid(_byte_count_problem(len(inline), width, height, "byte_data"))
    elif source == "shared_memory_handle":
        name, offset, size = _handle(bitmap.shared_memory_handle, "bitmap")
        if size != expected:
            raise invalid(
                _byte_count_problem(size, width, height, "shared_memory_handle.size")
            )
        image = SegmentRef(name=name, offset=offset, size=size)
    else:
        raise invalid("bitmap carries no image: set byte_data or shared_memory_handle")
    mask: SegmentRef | None = None
    handle = _mask_handle(request)
    if handle is not None:
        name, offset, size = _handle(handle, "anomaly_mask_params")
        if size < expected:
            raise invalid(
                f"anomaly_mask_params: the mask segment's size {size} is too "
                f"small; the mask is an RGB888 bitmap of the image's size, "
                f"{width}x{height}x3 = {expected} bytes"
            )
        mask = SegmentRef(name=name, offset=offset, size=size)
    written = None if mask is None else SegmentRef(mask.name, mask.offset, expected)
    if image is not None and written is not None and _overlap(image, written):
        raise invalid(
            "anomaly_mask_params: the mask's bytes overlap the image's in segment "
            f"{image.name!r}; the mask would overwrite the image: give it its own "
            "range or segment"
        )
    return DetectJob(model, width, height, inline, image, mask)


def _overlap(first: SegmentRef, second: SegmentRef) -> bool:
    return first.name == second.name and (
        first.offset < second.offset + second.size
        and second.offset < first.offset + first.size
    )


def check_segments(job: DetectJob) -> None:
    """Open and fstat the job's segments (never map them), or raise."""
    try:
        if job.image is not None:
            check_segment(job.image, "bitmap")
        if job.mask is not None:
            check_segment(job.mask, "anomaly_mask_params", writable=True)
    except SegmentError as exc:
        raise invalid(str(exc)) from None
