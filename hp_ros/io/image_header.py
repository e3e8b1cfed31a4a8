"""The header fields of a sensor_msgs/Image, read from its CDR bytes without deserialising the
pixels, and their validation before the pixels are touched (re-exported by :mod:`hp_ros.io.msgs`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from hp_ros.io import validate


@dataclass
class ImageHeader:
    """The fields of a sensor_msgs/Image other than its pixels (see :func:`serialized_image_header`)."""

    stamp_ns: int
    frame_id: str
    height: int
    width: int
    encoding: str
    step: int
    data_bytes: int


def serialized_image_header(data: bytes) -> ImageHeader:
    """Everything but the pixels of a CDR-serialised sensor_msgs/Image, read without deserialising
    it (a few struct reads): stamp, frame_id, height, width, encoding, step and the length of its
    data. ValueError when the bytes are not such a message."""
    import struct

    view = memoryview(data)
    if len(view) < 12 or view[0] != 0 or view[1] not in (0, 1):
        raise ValueError("not a CDR-serialised message with a header")
    end = "<" if view[1] == 1 else ">"
    pos = 4  # CDR alignment is relative to the end of the 4-byte encapsulation header

    def u32():
        nonlocal pos
        pos += (-(pos - 4)) % 4
        if pos + 4 > len(view):
            raise ValueError("truncated Image message")
        (v,) = struct.unpack_from(end + "I", view, pos)
        pos += 4
        return v

    def string():
        nonlocal pos
        n = u32()
        if n > 4096 or pos + n > len(view):
            raise ValueError("Image message with an implausible string")
        text = bytes(view[pos:pos + max(0, n - 1)]).decode("utf-8", "replace")
        pos += n
        return text

    sec, nsec = u32(), u32()
    sec = sec - (1 << 32) if sec >= 1 << 31 else sec
    frame_id = string()
    height, width = u32(), u32()
    encoding = string()
    pos += 1  # is_bigendian
    step = u32()
    n_data = u32()
    return ImageHeader(sec * 1_000_000_000 + nsec, frame_id, height, width, encoding, step, n_data)


def check_image_header(h: Any, encodings: Sequence[str], frame_id: str | None = None) -> None:
    """Validate an image's header fields (an :class:`ImageHeader` or a sensor_msgs/Image) before its
    pixels are touched: encoding among ``encodings``, size within bounds, step and data length
    consistent, the expected frame. :class:`~hp_ros.io.validate.InvalidMessage` otherwise."""
    if h.encoding not in encodings:
        raise validate.InvalidMessage("image_encoding", f"image encoding {str(h.encoding)[:40]!r} not accepted "
                                      f"({list(encodings)})", value=str(h.encoding)[:40])
    w, hh = validate.check_image_size(h.width, h.height)
    from hp_ros.io.msgs import IMAGE_ENCODINGS

    dtype, channels = IMAGE_ENCODINGS[h.encoding]
    n = h.data_bytes if hasattr(h, "data_bytes") else len(h.data)
    if h.step < w * channels * dtype.itemsize or n != h.step * hh:
        raise validate.InvalidMessage("image_size", f"image step {h.step} / data length {n} do not fit "
                                      f"{w}x{hh} {h.encoding}")
    validate.check_frame(h.frame_id if hasattr(h, "frame_id") else h.header.frame_id, frame_id, "image")
