"""The read tasks' half: file → PIL → resize / crop exactly as torchvision and timm do on
PIL images → uint8 pixels (grey or RGB), the ten crops of ``tta=tencrop`` cut here."""

from __future__ import annotations

import io
import math
import os
from typing import BinaryIO

import numpy as np

from medray.data.preprocess.presets import medray_preset
from medray.errors import DecodeError


def decode_gray(src: str | bytes | BinaryIO, size: int, draft: bool = True) -> np.ndarray:
    """The ``medray`` preset: a ``(size, size)`` uint8 grey array (JPEGs may be drafted)."""
    return decode_image(src, medray_preset(size, exact=not draft))


def decode_image(src: str | bytes | BinaryIO, prep: dict, tta: str = "none") -> np.ndarray:
    """Decode an image file and make the model's pixels: uint8 ``(H, W)`` / ``(H, W, 3)``,
    or ``(10, H, W[, 3])`` for ``tta=tencrop``; float32 in 0-255 units for ``resize=xrv``
    (torchxrayvision resizes float pixels: rounding them to 8 bits would move them by up
    to 4 levels).

    JPEG, PNG (8/16-bit, L/RGB/...) and DICOM (``.dcm`` or the ``DICM`` magic; see
    :mod:`medray.data.dicom`), and plain ``.npy`` arrays.  16-bit images are scaled to 8
    bits by their full range; a grey image decoded for an RGB model is repeated.
    """
    name = str(src) if isinstance(src, (str, os.PathLike)) else None
    if isinstance(src, str) and "://" in src:
        from medray.io import is_local, local_path, read_bytes

        # data.root on shared storage (s3://, gs://...): the bytes come through pyarrow.fs.
        src = local_path(src) if is_local(src) else read_bytes(src)
    try:
        im = _open(src, prep)
    except DecodeError as e:
        if name is None or e.path is not None:
            raise
        raise DecodeError(e.reason, path=name) from e.__cause__
    if tta == "tencrop":
        from medray.data.tta import ten_crop

        scaled = _pixels(_scale(im, tencrop_prep(prep)))
        return np.stack(ten_crop(scaled[None], prep["size"]))[:, 0]
    if tta != "none":
        raise ValueError(f"tta={tta!r}: use none or tencrop")
    return _pixels(_crop(_scale(im, prep), prep))


def pixel_dtype(prep: dict) -> np.dtype:
    """What :func:`decode_image` returns for ``prep``: float32 for ``resize=xrv``, else uint8."""
    return np.dtype(np.float32 if prep["resize"] == "xrv" else np.uint8)


def _pixels(im) -> np.ndarray:
    """A PIL image as uint8; ``resize=xrv``'s float32 array (0-255 units) as it is."""
    return im if isinstance(im, np.ndarray) else np.asarray(im, dtype=np.uint8)


# tta=tencrop of a preprocessing that does not crop (crop_pct 1): CheXNet's Resize(256) / TenCrop(224).
TENCROP_CROP_PCT = 224 / 256


def tencrop_prep(prep: dict) -> dict:
    """The preprocessing the ten crops are cut from: its own crop_pct, or CheXNet's when it has none."""
    return prep if prep["crop_pct"] < 1 else {**prep, "crop_pct": TENCROP_CROP_PCT}


def _filter(prep: dict):
    from PIL import Image

    return {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC,
            "lanczos": Image.LANCZOS, "area": Image.BOX}[prep["interpolation"]]


def scale_size(prep: dict) -> tuple[int, int]:
    """(h, w) the image is resized to before the centre crop: ``floor(size / crop_pct)``."""
    h, w = prep["size"]
    pct = prep["crop_pct"]
    return math.floor(h / pct), math.floor(w / pct)


def _scale(im, prep: dict):
    """Resize as torchvision's / timm's eval transforms do on a PIL image."""
    sh, sw = scale_size(prep)
    f = _filter(prep)
    mode = prep["resize"]
    w, h = im.size
    if mode == "squash":
        return im.resize((sw, sh), f)
    if mode == "xrv":
        return _xrv_scale(im, sh, sw)
    if mode == "shorter_crop" and sh == sw:  # torchvision Resize(int): the shorter side to it
        short, long = (w, h) if w <= h else (h, w)
        new_short, new_long = sh, int(sh * long / short)
        return im.resize((new_short, new_long) if w <= h else (new_long, new_short), f)
    # timm's ResizeKeepRatio: shorter edge to its target (shorter_crop) or longer (letterbox)
    rh, rw = h / sh, w / sw
    ratio = max(rh, rw) if mode == "letterbox" else min(rh, rw)
    return im.resize((round(w / ratio), round(h / ratio)), f)


def _xrv_scale(im, sh: int, sw: int) -> np.ndarray:
    """torchxrayvision's ``XRayCenterCrop`` (the centred square, offsets ``h // 2 - s // 2``)
    then ``XRayResizer`` (``skimage.transform.resize``, mode constant, anti-aliased) on
    float pixels; in 0-255 units, so the border value is 127.5 (xrv's 0 after normalize)."""
    import warnings

    import skimage.transform

    a = np.asarray(im, dtype=np.float32)
    h, w = a.shape
    s = min(h, w)
    y0, x0 = h // 2 - s // 2, w // 2 - s // 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # skimage's notes on anti-aliasing defaults
        out = skimage.transform.resize(a[None, y0:y0 + s, x0:x0 + s], (1, sh, sw), mode="constant", cval=127.5,
                                       preserve_range=True)
    return out[0].astype(np.float32)


def _crop(im, prep: dict):
    """torchvision's CenterCrop (timm's CenterCropOrPad for letterbox: pad with the mean);
    ``crop_offset=floor``: transformers' centre crop."""
    from PIL import Image

    ch, cw = prep["size"]
    if isinstance(im, np.ndarray):  # resize=xrv: a float square, cropped only below crop_pct 1
        h, w = im.shape
    else:
        w, h = im.size
    if cw > w or ch > h:
        fill = tuple(round(255 * m) for m in prep["mean"]) if prep["resize"] == "letterbox" else 0
        if im.mode == "L":
            fill = fill[0] if isinstance(fill, tuple) else fill
        left, top = (cw - w) // 2 if cw > w else 0, (ch - h) // 2 if ch > h else 0
        canvas = Image.new(im.mode, (max(w, cw), max(h, ch)), fill)
        canvas.paste(im, (left, top))
        im = canvas
        w, h = im.size
        if (w, h) == (cw, ch):
            return im
    if prep["crop_offset"] == "floor":
        top, left = (h - ch) // 2, (w - cw) // 2
    else:
        top, left = int(round((h - ch) / 2.0)), int(round((w - cw) / 2.0))
    if isinstance(im, np.ndarray):
        return np.ascontiguousarray(im[top:top + ch, left:left + cw])
    return im.crop((left, top, left + cw, top + ch))


def _open(src, prep: dict):
    """File → PIL image in ``L`` (grey) or ``RGB``, 8 bits."""
    from PIL import Image, UnidentifiedImageError

    mode = "RGB" if prep["color"] == "rgb" else "L"

    def from_gray(a: np.ndarray):
        im = Image.fromarray(a)
        return im.convert(mode) if mode != "L" else im

    if isinstance(src, (str, os.PathLike)):
        if os.path.isfile(src) and os.path.getsize(src) == 0:
            raise DecodeError("empty file (0 bytes)")
        if str(src).lower().endswith(".dcm"):
            from medray.data.dicom import decode_dicom_gray

            return from_gray(decode_dicom_gray(src))
        if str(src).lower().endswith(".npy"):
            return from_gray(array_to_gray_u8(_load_npy(src)))
    elif isinstance(src, bytes):
        if not src:
            raise DecodeError("empty file (0 bytes)")
        src = io.BytesIO(src)
    try:
        with Image.open(src) as im:
            if im.format == "JPEG" and not prep["exact"]:
                # draft() lets libjpeg decode at 1/2, 1/4 or 1/8 scale (at least the size
                # the resize needs): most of the CPU cost of a large radiograph, other pixels.
                sh, sw = scale_size(prep)
                im.draft(mode, (sw, sh))
            im.load()
            if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                return from_gray(_to_gray_u8(im))
            return im.convert(mode) if im.mode != mode else im.copy()
    except UnidentifiedImageError as e:
        from medray.data.dicom import decode_dicom_gray, is_dicom

        # DICOM files often have no suffix at all: recognised by their magic bytes.
        if isinstance(src, io.BytesIO):
            if is_dicom(src.getvalue()):
                return from_gray(decode_dicom_gray(src.getvalue()))
        elif isinstance(src, (str, os.PathLike)) and is_dicom(src):
            return from_gray(decode_dicom_gray(src))
        raise DecodeError("not a JPEG, PNG or DICOM image (unrecognised or corrupt header)") from e
    except Image.DecompressionBombError as e:
        # PIL's guard against images whose pixels would exhaust memory (e.g. 30000×30000):
        # a bad sample like any other, named by the caller, never a crash of the run.
        raise DecodeError(f"image too large to decode safely: {e}") from e
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
