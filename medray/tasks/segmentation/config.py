"""task=segmentation's own options: ``sliding_window.*`` — the windows around the backend's
session.  Null values are the model's own (its recipe's: MONAI's defaults for medray's UNets,
nnUNetPredictor's for an nnU-Net model)."""

from __future__ import annotations

from dataclasses import dataclass

from medray.errors import fail as _fail

BLEND_MODES = ("constant", "gaussian")
SPACES = ("original", "model")


@dataclass
class SlidingWindowConfig:
    """task=segmentation: the sliding window around the backend's session."""

    # Window (model input) size in voxels; null = the ROI the model was trained on
    # (checkpoint meta; an nnU-Net model's plan patch size). The exported artifacts (ONNX,
    # engines) are built for this shape.
    roi_size: list[int] | None = None
    # Fraction of overlap between neighbouring windows, per axis (nnU-Net's tile step is
    # 1 - overlap); null = the model's (MONAI UNets 0.25, nnU-Net 0.5).
    overlap: float | None = None
    # Windows per backend call (the batch of a segmentation run; nnU-Net's mirrored
    # copies of a window count as windows).
    sw_batch_size: int = 4
    # Blending of overlapping windows: constant (mean) or gaussian (centre-weighted);
    # null = the model's (MONAI UNets constant, nnU-Net gaussian).
    mode: str | None = None
    # The Gaussian's sigma as a fraction of the window; null = the model's (0.125, MONAI's
    # and nnU-Net's default; a MONAI bundle's inferer may set its own).
    sigma_scale: float | None = None
    # Where masks and 3-D metrics are given: original (the input file's grid and affine) or
    # model (the grid the network saw; MONAI models only); null = original.
    space: str | None = None

    def __post_init__(self) -> None:
        if self.roi_size is not None:
            self.roi_size = [int(v) for v in self.roi_size]
            if len(self.roi_size) != 3 or min(self.roi_size) < 1:
                _fail("sliding_window.roi_size", self.roi_size, "use three positive window sizes in voxels, e.g. [96, 96, 96], or null")
        if self.overlap is not None and not 0 <= self.overlap < 1:
            _fail("sliding_window.overlap", self.overlap, "use a fraction in [0, 1), e.g. 0.25 or 0.5, or null (the model's)")
        if self.sw_batch_size < 1:
            _fail("sliding_window.sw_batch_size", self.sw_batch_size, "use a positive number of windows per backend call")
        if self.mode is not None and self.mode not in BLEND_MODES:
            _fail("sliding_window.mode", self.mode, f"use one of {', '.join(BLEND_MODES)}")
        if self.sigma_scale is not None and not self.sigma_scale > 0:
            _fail("sliding_window.sigma_scale", self.sigma_scale, "use a positive fraction of the window (0.125 is MONAI's default), or null (the model's)")
        if self.space is not None and self.space not in SPACES:
            _fail("sliding_window.space", self.space, f"use one of {', '.join(SPACES)}")
