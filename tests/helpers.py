"""Constants shared by test modules (importable through pytest's `pythonpath`)."""

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TINY_ARCH = "resnet10t"
TINY_SIZE = 32
# The tiny 3-label MONAI UNet of the segmentation tests (1 channel in) and its training ROI.
UNET_NET = {"channels": [4, 8], "strides": [2], "num_res_units": 0}
UNET_ROI = [16, 16, 16]


def margin_corr(a, b) -> float:
    """Correlation of two binary models' logit margins (class 1 - class 0)."""
    import numpy as np

    return float(np.corrcoef(a[:, 1] - a[:, 0], b[:, 1] - b[:, 0])[0, 1])


def image_calibration(samples, size: int = TINY_SIZE, in_chans: int = 3):
    """A backend's ``context["calibration"]`` for image files, as the classification task makes it."""
    from functools import partial

    from medray.data.calibration import CalibrationSource, load_calibration

    return CalibrationSource(samples, partial(load_calibration, prep=size, in_chans=in_chans))
