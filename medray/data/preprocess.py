"""Image decoding and preprocessing shared by training, evaluation and benchmarks.

The CPU read tasks produce *uint8* single-channel images at the model's input size
(small object-store traffic); the actor turns them into normalised float tensors with
the model's channel count (`to_model_input`).  Training uses the very same two steps so
the demo model sees at evaluation exactly what it saw in training.
"""

from __future__ import annotations

import io
import os
from typing import BinaryIO

import numpy as np

from medray.errors import DecodeError  # noqa: F401  (raised here; medray.data.preprocess.DecodeError is public)

# One grey mean/std for every channel: radiographs are grey; a grey image repeated to
# RGB keeps the same statistics per channel.
MEAN = 0.5
STD = 0.25


def decode_gray(src: str | bytes | BinaryIO, size: int, draft: bool = True) -> np.ndarray:
    """Decode an image file to a ``(size, size)`` uint8 grey array.

    JPEG, PNG (8/16-bit, L/RGB/...) and DICOM (``.dcm`` or the ``DICM`` magic; see
    :mod:`medray.data.dicom`).  JPEGs are decoded at reduced scale (PIL draft mode) when
    the image is much larger than ``size`` (``draft=False`` forces a full-size decode, for
    benchmarks); 16-bit PNGs are scaled to 8 bits by their full range.
    """
    name = str(src) if isinstance(src, (str, os.PathLike)) else None
    if isinstance(src, str) and "://" in src:
        from medray.io import is_local, local_path, read_bytes

        # data.root on shared storage (s3://, gs://...): the bytes come through pyarrow.fs.
        src = local_path(src) if is_local(src) else read_bytes(src)
    try:
        arr = _decode_full_or_draft(src, size, draft)
    except DecodeError as e:
        if name is None or e.path is not None:
            raise
        raise DecodeError(e.reason, path=name) from e.__cause__
    if arr.shape != (size, size):
        from PIL import Image

        arr = np.asarray(Image.fromarray(arr).resize((size, size), Image.BILINEAR))
    return arr


def _decode_full_or_draft(src, size: int, draft: bool) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    if isinstance(src, (str, os.PathLike)):
        if os.path.isfile(src) and os.path.getsize(src) == 0:
            raise DecodeError("empty file (0 bytes)")
        if str(src).lower().endswith(".dcm"):
            from medray.data.dicom import decode_dicom_gray

            return decode_dicom_gray(src)
        if str(src).lower().endswith(".npy"):
            return array_to_gray_u8(_load_npy(src))
    elif isinstance(src, bytes):
        if not src:
            raise DecodeError("empty file (0 bytes)")
        src = io.BytesIO(src)
    try:
        with Image.open(src) as im:
            if im.format == "JPEG" and draft:
                # draft() lets libjpeg decode at 1/2, 1/4 or 1/8 scale: the decode is
                # most of the CPU cost for large radiographs and a small model input.
                im.draft("L", (size, size))
            im.load()
            return _to_gray_u8(im)
    except UnidentifiedImageError as e:
        from medray.data.dicom import decode_dicom_gray, is_dicom

        # DICOM files often have no suffix at all: recognised by their magic bytes.
        if isinstance(src, io.BytesIO):
            if is_dicom(src.getvalue()):
                return decode_dicom_gray(src.getvalue())
        elif isinstance(src, (str, os.PathLike)) and is_dicom(src):
            return decode_dicom_gray(src)
        raise DecodeError("not a JPEG, PNG or DICOM image (unrecognised or corrupt header)") from e
    except (OSError, SyntaxError, ValueError) as e:
        # PIL: "image file is truncated (N bytes not processed)", "broken PNG file"...
        raise DecodeError(f"corrupt or truncated image ({str(e) or type(e).__name__})") from e


def check_pixels(a: np.ndarray, channels: tuple[int, ...] | None = None, what: str = "pixels") -> np.ndarray:
    """Reject arrays a model must never see: NaN/inf values, an unexpected channel count.

    ``channels``: allowed sizes of the last axis of a 3-D array (None = not checked).
    Raises DecodeError (the per-sample error that data.on_error fails on or skips).
    """
    if a.size == 0:
        raise DecodeError(f"no {what} (array of shape {a.shape})")
    if channels is not None and a.ndim == 3 and a.shape[-1] not in channels:
        raise DecodeError(f"wrong channel count: {a.shape[-1]} (expected {' or '.join(map(str, channels))})")
    if a.dtype.kind in "fc":
        bad = int(a.size - np.count_nonzero(np.isfinite(a)))
        if bad:
            raise DecodeError(f"{bad} NaN/inf {what} of {a.size}")
    return a


def _load_npy(path) -> np.ndarray:
    """A 2-D image saved with ``np.save`` (pickled object arrays are refused: data, not code)."""
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as e:
        raise DecodeError(f"not a plain numeric .npy array ({e})") from e


def array_to_gray_u8(a: np.ndarray) -> np.ndarray:
    """``(H, W)`` or ``(H, W, 1|3|4)`` array → uint8 grey; non-uint8 scaled by its range."""
    check_pixels(a, channels=(1, 3, 4))
    if a.ndim == 3:
        a = a[..., 0] if a.shape[-1] == 1 else a[..., :3].astype(np.float32).mean(axis=-1)
    if a.ndim != 2:
        raise DecodeError(f"expected a 2-D image, got an array of shape {a.shape}")
    if a.dtype == np.uint8:
        return a
    a = a.astype(np.float32)
    lo, hi = float(a.min()), float(a.max())
    a = (a - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(a)
    return a.round().astype(np.uint8)


def _to_gray_u8(im) -> np.ndarray:
    if im.mode == "F":  # 32-bit float images can carry NaN/inf, which PIL's convert hides
        check_pixels(np.asarray(im, dtype=np.float32))
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
