"""Reading photos into the packed RGB888 arrays the agent takes.

Used by the CLI and the model builder. Pillow's ``convert("RGB")`` clips
16-bit grayscale to 255 and so turns such photos white; they are scaled
down to 8 bits here instead. Other high-depth modes are refused.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

# The contract's limits on a bitmap's width and height, in pixels.
MIN_SIDE = 64
MAX_SIDE = 4096

_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")


class ImageError(ValueError):
    """A file that cannot be read as a photo, with the reason."""


def load_rgb(path: Path) -> np.ndarray:
    """The photo at ``path`` as a C-contiguous uint8 [height, width, 3]."""
    try:
        with Image.open(path) as picture:
            picture.load()
            if picture.mode in _SIXTEEN_BIT:
                gray = (np.asarray(picture, dtype=np.uint16) >> 8).astype(np.uint8)
                return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))
            if picture.mode in ("I", "F"):
                raise ImageError(
                    f"{path} has 32-bit {picture.mode!r} pixels; save it with 8 "
                    "or 16 bits per channel"
                )
            return np.ascontiguousarray(np.asarray(picture.convert("RGB")))
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        if isinstance(exc, ImageError):
            raise
        raise ImageError(f"cannot read {path} as an image: {exc}") from exc
