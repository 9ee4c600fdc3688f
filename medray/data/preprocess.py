"""Image preprocessing as part of the model's contract: decoding, resizing, normalising.

A model was trained on pixels made a certain way: colour, size, how the image was
resized (squashed, shorter side + centre crop, letterboxed), the interpolation, the
per-channel mean/std and the layout.  Feed it other pixels and its AUC is wrong without
any warning, so :class:`PreprocessConfig` (config group ``preprocess=``) says how, with
presets: ``medray`` (the demo models), ``imagenet`` (torchvision / CheXNet), ``inception``
(Keras-style ``x/127.5 - 1``), ``xrv`` (torchxrayvision's [-1024, 1024], one channel) and
``timm`` (timm's own ``resolve_data_config`` on the model).

Two steps, the same for training (demo), calibration and evaluation:

* :func:`decode_image` — the CPU read tasks: file → PIL → resize / crop exactly as
  torchvision and timm do on PIL images → ``uint8`` ``(H, W)`` (grey) or ``(H, W, 3)``
  (small object-store traffic); ``tta=tencrop`` → the ten crops ``(10, H, W[, 3])`` cut
  here, from the image resized to ``floor(size / crop_pct)``, so the decode size and the
  crops cannot disagree.
* :func:`to_model_input` — the actor: ``x / 255``, ``(x - mean) / std`` in float32 as
  torchvision's ``ToTensor`` + ``Normalize``, channels repeated for a grey image fed to
  a 3-channel model, NCHW or NHWC.
"""

from __future__ import annotations

import io
import math
import os
from dataclasses import asdict, dataclass
from typing import Any, BinaryIO

import numpy as np

from medray.errors import (
    DecodeError,  # noqa: F401  (raised here; medray.data.preprocess.DecodeError is public)
    fail,
)

# The medray preset (the demo models): one grey mean/std for every channel — a grey image
# repeated to RGB keeps the same statistics per channel.
MEAN = 0.5
STD = 0.25
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

COLORS = ("grey", "rgb")
RESIZES = ("squash", "shorter_crop", "letterbox")
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos", "area")
LAYOUTS = ("nchw", "nhwc")

# Every preset's values; a key given on the command line wins over its preset.
PRESETS: dict[str, dict[str, Any]] = {
    # size None: the model's input_size (model.input_size), as the demo trained.
    "medray": dict(color="grey", size=None, resize="squash", crop_pct=1.0, interpolation="bilinear",
                   mean=[MEAN], std=[STD], layout="nchw", exact=True),
    # torchvision's ImageNet evaluation (CheXNet): Resize(256) + CenterCrop(224) + Normalize.
    "imagenet": dict(color="rgb", size=224, resize="shorter_crop", crop_pct=0.875, interpolation="bilinear",
                     mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD), layout="nchw", exact=True),
    # Keras / TF models: load_img (nearest) to the input size, x / 127.5 - 1.
    "inception": dict(color="rgb", size=299, resize="squash", crop_pct=1.0, interpolation="nearest",
                      mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5], layout="nchw", exact=True),
    # torchxrayvision: one channel, (2 x / 255 - 1) * 1024, centre square at 224.
    "xrv": dict(color="grey", size=224, resize="shorter_crop", crop_pct=1.0, interpolation="bilinear",
                mean=[0.5], std=[0.5 / 1024], layout="nchw", exact=True),
    # timm: every unset key from timm.data.resolve_data_config(model=<the timm arch>).
    "timm": dict(color="rgb", size=None, resize=None, crop_pct=None, interpolation=None, mean=None, std=None,
                 layout="nchw", exact=True),
}
_CROP_MODES = {"center": "shorter_crop", "squash": "squash", "border": "letterbox"}


@dataclass
class PreprocessConfig:
    """The ``preprocess`` config group: how the model's pixels are made (see the module).

    ``name`` is the preset; the other keys, when set, override it (null = the preset's,
    or for ``timm`` timm's own for the model).
    """

    name: str = "medray"
    color: str | None = None
    # The model's input: an int (square) or [h, w]; null = the preset's / model.input_size.
    size: Any = None
    resize: str | None = None
    # shorter_crop / squash: resize to floor(size / crop_pct), then the centre crop (timm's
    # and torchvision's rule); tta=tencrop cuts its ten crops from that resized image.
    crop_pct: float | None = None
    interpolation: str | None = None
    # Per channel, 0–1 units (as timm / torchvision write them); one value = every channel.
    mean: list[float] | None = None
    std: list[float] | None = None
    layout: str | None = None
    # false: JPEGs may be decoded at reduced scale (PIL draft), faster, other pixels.
    exact: bool | None = None

    def __post_init__(self) -> None:
        if self.name not in PRESETS:
            fail("preprocess", self.name, f"available presets: {', '.join(PRESETS)}")
        for key, allowed in (("color", COLORS), ("resize", RESIZES), ("interpolation", INTERPOLATIONS), ("layout", LAYOUTS)):
            v = getattr(self, key)
            if v is not None and v not in allowed:
                fail(f"preprocess.{key}", v, f"use one of {', '.join(allowed)}")
        if self.size is not None:
            size = [self.size] if isinstance(self.size, int) else list(self.size)
            if len(size) not in (1, 2) or any(not isinstance(v, int) or v < 8 for v in size):
                fail("preprocess.size", self.size, "use the model's input size in pixels: an int (square) or [h, w], >= 8")
            self.size = size[0] if len(size) == 1 else size
        if self.crop_pct is not None and not 0 < self.crop_pct <= 1:
            fail("preprocess.crop_pct", self.crop_pct, "use a fraction in (0, 1] (e.g. 0.875 = Resize(256) + CenterCrop(224))")
        for key in ("mean", "std"):
            v = getattr(self, key)
            if v is not None:
                v = [float(x) for x in ([v] if isinstance(v, (int, float)) else v)]
                if len(v) not in (1, 3):
                    fail(f"preprocess.{key}", v, "give one value (every channel) or three (R, G, B), in 0-1 units")
                setattr(self, key, v)
        if self.std is not None and min(self.std) <= 0:
            fail("preprocess.std", self.std, "standard deviations must be positive")

    def settings(self) -> dict[str, Any]:
        """The preset's values with this config's overrides (None = still to resolve)."""
        out = dict(PRESETS[self.name])
        out.update({k: v for k, v in asdict(self).items() if k != "name" and v is not None})
        out["name"] = self.name
        return out


def resolve(cfg: PreprocessConfig, in_chans: int, input_size: int, timm_arch: str | None = None) -> dict[str, Any]:
    """The concrete preprocessing of a model: every key set, ``size`` as ``[h, w]``.

    ``timm`` fills what is unset from ``timm.data.resolve_data_config`` on ``timm_arch``
    (no download: the architecture's pretrained config).  The channels are checked
    against the model's ``in_chans`` here (a config error naming the key).
    """
    s = cfg.settings()
    if cfg.name == "timm":
        if not timm_arch:
            fail("preprocess", "timm", "the timm preset reads the model's timm config: give model.arch=<timm name>, or another preset")
        import timm
        from timm.data import resolve_data_config

        dc = resolve_data_config({}, model=timm.create_model(timm_arch, pretrained=False, num_classes=2))
        timm_values = {"size": list(dc["input_size"][1:]), "crop_pct": float(dc["crop_pct"]),
                       "interpolation": "area" if dc["interpolation"] == "box" else dc["interpolation"],
                       "mean": list(dc["mean"]), "std": list(dc["std"]),
                       "resize": _CROP_MODES.get(dc.get("crop_mode") or "center", "shorter_crop")}
        for k, v in timm_values.items():
            if s.get(k) is None:
                s[k] = v
        if s["interpolation"] not in INTERPOLATIONS:
            fail("preprocess.interpolation", s["interpolation"], f"timm's {s['interpolation']!r} is not supported; set one of {', '.join(INTERPOLATIONS)}")
    size = s["size"] if s["size"] is not None else input_size
    s["size"] = [int(size), int(size)] if isinstance(size, int) else [int(v) for v in size]
    channels = 3 if s["color"] == "rgb" else in_chans
    if s["color"] == "rgb" and in_chans != 3:
        fail("preprocess.color", "rgb", f"the model takes {in_chans} channel(s): use preprocess.color=grey, or a 3-channel model")
    for key in ("mean", "std"):
        v = list(s[key])
        if len(v) == 1:
            v = v * channels
        if len(v) != channels:
            fail(f"preprocess.{key}", s[key], f"the model takes {channels} channel(s): give {channels} values or one for every channel")
        s[key] = v
    s["channels"] = channels
    return s


# --------------------------------------------------------------------------- decoding


def medray_preset(size: int, exact: bool = False) -> dict:
    """The demo models' preprocessing at ``size`` (resolved)."""
    return resolve(PreprocessConfig(name="medray", size=int(size), exact=exact), 1, int(size))


def decode_gray(src: str | bytes | BinaryIO, size: int, draft: bool = True) -> np.ndarray:
    """The ``medray`` preset: a ``(size, size)`` uint8 grey array (JPEGs may be drafted)."""
    return decode_image(src, medray_preset(size, exact=not draft))


def decode_image(src: str | bytes | BinaryIO, prep: dict, tta: str = "none") -> np.ndarray:
    """Decode an image file and make the model's pixels: uint8 ``(H, W)`` / ``(H, W, 3)``,
    or ``(10, H, W[, 3])`` for ``tta=tencrop``.

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

        scaled = np.asarray(_scale(im, tencrop_prep(prep)), dtype=np.uint8)
        return np.stack(ten_crop(scaled[None], prep["size"]))[:, 0]
    if tta != "none":
        raise ValueError(f"tta={tta!r}: use none or tencrop")
    return np.asarray(_crop(_scale(im, prep), prep), dtype=np.uint8)


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
    if mode == "shorter_crop" and sh == sw:  # torchvision Resize(int): the shorter side to it
        short, long = (w, h) if w <= h else (h, w)
        new_short, new_long = sh, int(sh * long / short)
        return im.resize((new_short, new_long) if w <= h else (new_long, new_short), f)
    # timm's ResizeKeepRatio: shorter edge to its target (shorter_crop) or longer (letterbox)
    rh, rw = h / sh, w / sw
    ratio = max(rh, rw) if mode == "letterbox" else min(rh, rw)
    return im.resize((round(w / ratio), round(h / ratio)), f)


def _crop(im, prep: dict):
    """torchvision's CenterCrop (timm's CenterCropOrPad for letterbox: pad with the mean)."""
    from PIL import Image

    ch, cw = prep["size"]
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
    top, left = int(round((h - ch) / 2.0)), int(round((w - cw) / 2.0))
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


def to_model_input(images_u8: np.ndarray, in_chans: int, prep: dict | None = None,
                   buffers: InputBuffers | None = None) -> np.ndarray:
    """uint8 ``(N, H, W)`` / ``(N, H, W, 3)`` → float32 model input, C-contiguous.

    ``x / 255`` then ``(x - mean) / std`` per channel in float32 — torchvision's ``ToTensor``
    + ``Normalize``, bit for bit — a grey image repeated to ``in_chans``; NCHW, or NHWC
    with ``prep["layout"]``.  ``prep=None`` is the medray preset.  With ``buffers`` the
    result is written into a reused array (valid until the next call with the same shape).
    """
    mean = np.asarray(prep["mean"] if prep else [MEAN] * in_chans, dtype=np.float32)
    std = np.asarray(prep["std"] if prep else [STD] * in_chans, dtype=np.float32)
    nchw = not prep or prep["layout"] == "nchw"
    if images_u8.dtype == np.uint8:
        return _normalise_u8(images_u8, in_chans, mean, std, nchw, buffers)
    x = images_u8.astype(np.float32) / np.float32(255)
    if x.ndim == 3:  # grey
        x = np.repeat(x[..., None], in_chans, axis=-1)
    x = (x - mean) / std
    if nchw:
        x = x.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(x)


class InputBuffers:
    """Model-input arrays reused from batch to batch, one per shape (the few most recent).

    A fresh float array per batch is paid in page faults: 3.4 ms for 64 grey 96-px images
    against 0.5 ms to normalise them into an array already touched (2-core VM)."""

    KEEP = 4  # full batches, the last partial one, ten-crop views

    def __init__(self):
        self._arrays: dict[tuple, np.ndarray] = {}

    def get(self, shape: tuple) -> np.ndarray:
        a = self._arrays.pop(shape, None)
        if a is None:
            a = np.empty(shape, dtype=np.float32)
            while len(self._arrays) >= self.KEEP:
                self._arrays.pop(next(iter(self._arrays)))
        self._arrays[shape] = a  # most recent last
        return a


def _normalise_u8(images: np.ndarray, in_chans: int, mean: np.ndarray, std: np.ndarray, nchw: bool,
                  buffers: InputBuffers | None = None) -> np.ndarray:
    """:func:`to_model_input` of uint8 images through a 256-entry table per channel.

    Each output value depends only on its pixel value and channel, so the table holds
    exactly what the float32 formula computes (the same operations in the same order):
    bit-identical, one pass instead of five (half the time for 224-px RGB batches, which
    the actor does before every backend call)."""
    grey = images.ndim == 3
    chans = in_chans if grey else images.shape[-1]
    v = np.arange(256, dtype=np.uint8).astype(np.float32) / np.float32(255)
    lut = np.ascontiguousarray(np.broadcast_to((v[:, None] - mean) / std, (256, chans)).T)  # (C, 256)
    n, h, w = images.shape[:3]
    shape = (n, chans, h, w) if nchw else (n, h, w, chans)
    out = buffers.get(shape) if buffers is not None else np.empty(shape, dtype=np.float32)
    for c in range(chans):
        src = images if grey else images[..., c]
        if nchw and grey and c and np.array_equal(lut[c], lut[0]):
            out[:, c] = out[:, 0]  # a grey image repeated with one mean/std: a copy
        elif nchw:
            np.take(lut[c], src, out=out[:, c])
        else:
            out[..., c] = lut[c][src]
    return out
