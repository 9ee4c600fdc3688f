"""task=segmentation's own options: ``sliding_window.*`` (MONAI's sliding window around
the backend's session)."""

from __future__ import annotations

from dataclasses import dataclass

from medray.errors import fail as _fail

BLEND_MODES = ("constant", "gaussian")


@dataclass
class SlidingWindowConfig:
    """task=segmentation: MONAI ``sliding_window_inference`` around the backend's session."""

    # Window (model input) size in voxels; null = the ROI the model was trained on
    # (checkpoint meta). The exported artifacts (ONNX, engines) are built for this shape.
    roi_size: list[int] | None = None
    # Fraction of overlap between neighbouring windows, per axis.
    overlap: float = 0.25
    # Windows per backend call (the batch of a segmentation run).
    sw_batch_size: int = 4
    # Blending of overlapping windows: constant (mean) or gaussian (centre-weighted).
    mode: str = "constant"
    sigma_scale: float = 0.125

    def __post_init__(self) -> None:
        if self.roi_size is not None:
            self.roi_size = [int(v) for v in self.roi_size]
            if len(self.roi_size) != 3 or min(self.roi_size) < 1:
                _fail("sliding_window.roi_size", self.roi_size, "use three positive window sizes in voxels, e.g. [96, 96, 96], or null")
        if not 0 <= self.overlap < 1:
            _fail("sliding_window.overlap", self.overlap, "use a fraction in [0, 1), e.g. 0.25 or 0.5")
        if self.sw_batch_size < 1:
            _fail("sliding_window.sw_batch_size", self.sw_batch_size, "use a positive number of windows per backend call")
        if self.mode not in BLEND_MODES:
            _fail("sliding_window.mode", self.mode, f"use one of {', '.join(BLEND_MODES)}")
        if not self.sigma_scale > 0:
            _fail("sliding_window.sigma_scale", self.sigma_scale, "use a positive fraction of the window (0.125 is MONAI's default)")
