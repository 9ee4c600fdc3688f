"""task=segmentation's read stage: one case per block, read and preprocessed in a CPU task
(MONAI transforms, the label resampled with it); and the INT8 calibration windows."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from medray.data.calibration import CalibrationSet

log = logging.getLogger("medray.segmentation")


# Per-case vectors the read stage passes through: the input shape and spacing, the model-space spacing.
VECTORS = ("orig_shape", "orig_spacing", "spacing")


def read_case_batch(batch: dict[str, np.ndarray], prep: dict, num_classes: int) -> dict:
    """CPU task: one block = one case → preprocessed image (+ label) in model space.

    A case that cannot be read becomes a placeholder row with its ``skipped_reason``
    (never a silent drop); the driver applies data.on_error.
    """
    from medray.data.msd import VolumeError, load_case

    out: dict[str, list] = {k: [] for k in ("sample_id", "image", "label", "has_label", *VECTORS, "skipped_reason")}
    for sid, path, lab in zip(batch["sample_id"], batch["path"], batch["label_path"]):
        try:
            case, reason = load_case(str(path), str(lab) or None, prep, num_classes), ""
        except VolumeError as e:
            case, reason = None, str(e)
        out["sample_id"].append(sid)
        out["skipped_reason"].append(reason)
        if case is None:
            out["image"].append(np.zeros((1, 1, 1, 1), np.float32))
            out["label"].append(np.zeros((1, 1, 1), np.uint8))
            out["has_label"].append(False)
            for k in VECTORS:
                out[k].append(np.zeros(3))
            continue
        out["image"].append(case["image"])
        has = case["label"] is not None
        out["label"].append(case["label"] if has else np.zeros((1, 1, 1), np.uint8))
        out["has_label"].append(has)
        for k in VECTORS:
            out[k].append(np.asarray(case[k], dtype=np.float64))
    # One case per block: a (1, ...) view of the volume, not a stacked copy.
    return {k: (v[0][None] if len(v) == 1 else np.stack(v)) if k in ("image", "label", *VECTORS)
            else np.asarray(v) for k, v in out.items()}


def calibration_windows(samples: pd.DataFrame, prep: dict, roi: tuple[int, ...], max_windows: int, seed: int) -> CalibrationSet:
    """INT8 calibration inputs of a 3D model: ROI windows of the preprocessed calibration
    cases, tiled as the sliding window tiles them (no overlap), at most ``max_windows``
    drawn with ``seed``.  A case that cannot be read fails: a calibration set silently
    missing cases is not the one its cache key names."""
    from medray.data.calibration import CalibrationError, CalibrationSet
    from medray.data.msd import VolumeError, load_case

    if samples is None or len(samples) == 0:
        raise CalibrationError("precision=int8 needs calibration cases (calibration.split); none were given")
    windows, ids = [], []
    for sid, path in zip(samples["sample_id"], samples["path"]):
        try:
            image = load_case(str(path), None, prep)["image"]
        except VolumeError as e:
            raise CalibrationError(f"calibration case {sid} cannot be read: {e}") from e
        pad = [(0, 0)] + [(0, max(0, r - s)) for s, r in zip(image.shape[1:], roi)]
        image = np.pad(image, pad) if any(p[1] for p in pad) else image
        starts = [range(0, max(1, s - r + 1), r) for s, r in zip(image.shape[1:], roi)]
        for z in starts[0]:
            for y in starts[1]:
                for x in starts[2]:
                    windows.append(image[:, z:z + roi[0], y:y + roi[1], x:x + roi[2]])
                    ids.append(f"{sid}@{z},{y},{x}")
    order = np.random.default_rng(seed).permutation(len(windows))[:max_windows]
    order = np.sort(order)
    log.info("calibration: %d ROI windows of %d cases", len(order), len(samples))
    return CalibrationSet(np.ascontiguousarray(np.stack([windows[i] for i in order]), dtype=np.float32),
                          [ids[i] for i in order])
