"""Test-time augmentation for classification: ``tta=tencrop`` (seed 002, CheXNet).

CheXNet's evaluation resizes each image to 256 px on its shorter side, takes
torchvision's ``TenCrop(224)`` (four corners + centre, and the same five of the
horizontally flipped image) and averages the model's outputs over the ten views.  medray
does the same for any preprocessing: the read tasks resize to ``floor(size / crop_pct)``
(:func:`medray.data.preprocess.scale_size`; imagenet's 224 / 0.875 = 256) and cut the ten
``size`` crops there (:func:`medray.data.preprocess.decode_image`), so the decode size and
the crops live together; the Predictor runs the views through the backend and averages
the *probabilities* (softmax / sigmoid) per image.

Latency with TTA: the backend is called once per view (10 calls of the configured batch
size, so the shapes the backend was built and warmed up for do not change) and the batch
time is the sum of those 10 calls: per-sample latency = that sum / images in the batch,
i.e. the cost of one TTA prediction as served.
"""

from __future__ import annotations

import numpy as np

VIEWS = {"none": 1, "tencrop": 10}


def _hw(size) -> tuple[int, int]:
    return (int(size), int(size)) if np.ndim(size) == 0 else (int(size[0]), int(size[1]))


def five_crop(images: np.ndarray, size) -> list[np.ndarray]:
    """Top-left, top-right, bottom-left, bottom-right, centre crops of ``(N, H, W[, C])``
    images, at the positions torchvision's ``five_crop`` uses (``size``: int or (h, w))."""
    ch, cw = _hw(size)
    h, w = images.shape[1:3]
    if ch > h or cw > w:
        raise ValueError(f"crop size {(ch, cw)} is larger than the image ({h}x{w})")
    top, left = int(round((h - ch) / 2.0)), int(round((w - cw) / 2.0))
    return [
        images[:, :ch, :cw],
        images[:, :ch, w - cw:],
        images[:, h - ch:, :cw],
        images[:, h - ch:, w - cw:],
        images[:, top:top + ch, left:left + cw],
    ]


def ten_crop(images: np.ndarray, size) -> list[np.ndarray]:
    """torchvision ``ten_crop`` order: five crops, then five crops of the h-flipped images."""
    flipped = images[:, :, ::-1]
    return [np.ascontiguousarray(c) for c in five_crop(images, size) + five_crop(flipped, size)]


def views(images: np.ndarray, tta: str) -> list[np.ndarray]:
    """The views of a read batch that the backend runs: the images themselves, or for
    ``tencrop`` the ten crops the read task cut (``(N, 10, H, W[, C])``)."""
    if tta == "none":
        return [images]
    if tta == "tencrop":
        return [np.ascontiguousarray(images[:, v]) for v in range(images.shape[1])]
    raise ValueError(f"tta={tta!r}: use one of {', '.join(VIEWS)}")
