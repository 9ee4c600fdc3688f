"""Image decoding and preprocessing shared by training, evaluation and benchmarks.

The CPU read tasks produce *uint8* single-channel images at the model's input size
(small object-store traffic); the actor turns them into normalised float tensors with
the model's channel count (`to_model_input`).  Training uses the very same two steps so
the demo model sees at evaluation exactly what it saw in training.
"""

from __future__ import annotations

import io
from typing import BinaryIO

import numpy as np

# One grey mean/std for every channel: radiographs are grey; a grey image repeated to
# RGB keeps the same statistics per channel.
MEAN = 0.5
STD = 0.25


class DecodeError(ValueError):
    """An image file could not be decoded (truncated, empty, wrong format...)."""


def decode_gray(src: str | bytes | BinaryIO, size: int) -> np.ndarray:
    """Decode an image file to a ``(size, size)`` uint8 grey array.

    JPEGs are decoded at reduced scale (PIL draft mode) when the image is much larger
    than ``size``; 16-bit PNGs are scaled to 8 bits by their full range.
    """
    from PIL import Image, UnidentifiedImageError

    if isinstance(src, bytes):
        if not src:
            raise DecodeError("empty file")
        src = io.BytesIO(src)
    try:
        with Image.open(src) as im:
            if im.format == "JPEG":
                # draft() lets libjpeg decode at 1/2, 1/4 or 1/8 scale: the decode is
                # most of the CPU cost for large radiographs and a small model input.
                im.draft("L", (size, size))
            im.load()
            arr = _to_gray_u8(im)
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise DecodeError(str(e) or type(e).__name__) from e
    if arr.shape != (size, size):
        from PIL import Image as _I

        arr = np.asarray(_I.fromarray(arr).resize((size, size), _I.BILINEAR))
    return arr


def _to_gray_u8(im) -> np.ndarray:
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(im, dtype=np.float32)
        lo, hi = float(a.min()), float(a.max())
        a = (a - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(a)
        return a.round().astype(np.uint8)
    if im.mode != "L":
        im = im.convert("L")
    return np.asarray(im, dtype=np.uint8)


def to_model_input(images_u8: np.ndarray, in_chans: int) -> np.ndarray:
    """uint8 ``(N, H, W)`` → float32 ``(N, in_chans, H, W)``, normalised, C-contiguous."""
    x = images_u8.astype(np.float32)
    x *= 1.0 / (255.0 * STD)
    x -= MEAN / STD
    x = x[:, None, :, :]
    if in_chans != 1:
        x = np.repeat(x, in_chans, axis=1)
    return np.ascontiguousarray(x)
