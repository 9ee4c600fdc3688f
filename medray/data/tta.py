"""Test-time augmentation for classification: ``tta=tencrop`` (seed 002, CheXNet).

CheXNet's evaluation resizes each image to 256 px, takes torchvision's ``TenCrop(224)``
(four corners + centre, and the same five of the horizontally flipped image) and
averages the model's outputs over the ten views.  medray does the same at any input
size: the decode tasks produce images ``round(input_size * 256 / 224)`` px square, the
Predictor cuts the ten ``input_size`` views, runs them through the backend and averages
the *probabilities* (softmax / sigmoid) per image.

Latency with TTA: the backend is called once per view (10 calls of the configured batch
size, so the shapes the backend was built and warmed up for do not change) and the
batch time is the sum of those 10 calls: per-sample latency = that sum / images in the
batch, i.e. the cost of one TTA prediction as served.
"""

from __future__ import annotations

import numpy as np

# CheXNet: Resize(256) then TenCrop(224).
TENCROP_RESIZE = 256 / 224
VIEWS = {"none": 1, "tencrop": 10}


def decode_size(input_size: int, tta: str) -> int:
    """Side of the images the decode tasks produce for ``tta``."""
    if tta == "tencrop":
        return int(round(input_size * TENCROP_RESIZE))
    return input_size


def five_crop(images: np.ndarray, size: int) -> list[np.ndarray]:
    """Top-left, top-right, bottom-left, bottom-right, centre crops of ``(N, H, W)`` images,
    at the positions torchvision's ``five_crop`` uses."""
    h, w = images.shape[-2:]
    if size > h or size > w:
        raise ValueError(f"crop size {size} is larger than the image ({h}x{w})")
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return [
        images[..., :size, :size],
        images[..., :size, w - size:],
        images[..., h - size:, :size],
        images[..., h - size:, w - size:],
        images[..., top:top + size, left:left + size],
    ]


def ten_crop(images: np.ndarray, size: int) -> list[np.ndarray]:
    """torchvision ``ten_crop`` order: five crops, then five crops of the h-flipped images."""
    flipped = images[..., ::-1]
    return [np.ascontiguousarray(c) for c in five_crop(images, size) + five_crop(flipped, size)]


def views(images: np.ndarray, size: int, tta: str) -> list[np.ndarray]:
    """The views of a uint8 ``(N, H, W)`` batch that the backend runs for ``tta``."""
    if tta == "none":
        return [images]
    if tta == "tencrop":
        return ten_crop(images, size)
    raise ValueError(f"tta={tta!r}: use one of {', '.join(VIEWS)}")
