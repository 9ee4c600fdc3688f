"""The actor's half: uint8 pixels → the float32 model input (torchvision's ``ToTensor`` +
``Normalize``, bit for bit), into arrays reused from batch to batch."""

from __future__ import annotations

import numpy as np

from medray.data.preprocess.config import MEAN, STD


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
