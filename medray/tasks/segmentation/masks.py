"""Masks as they travel (compressed uint8 label maps with their sha256) and are named (a
file of the input's format, written by the model's recipe), and the candidate's masks
compared with the baseline's."""

from __future__ import annotations

import io
import os
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from medray.results import RunResult


def pack_mask(mask: np.ndarray) -> bytes:
    """A uint8 label map as compressed ``.npz`` bytes (the file format of the outputs)."""
    buf = io.BytesIO()
    np.savez_compressed(buf, mask=mask)
    return buf.getvalue()


def unpack_mask(blob: bytes) -> np.ndarray:
    with np.load(io.BytesIO(blob)) as z:
        return z["mask"]


def mask_name(sample_id: str, path: str = ".nii.gz") -> str:
    """``<case><ending of the input file>``: the mask file of a case (``path``: its image)."""
    name = os.path.basename(str(path))
    ending = ".nii.gz" if name.endswith(".nii.gz") else (os.path.splitext(name)[1] or ".nii.gz")
    return f"{str(sample_id).replace(os.sep, '__')}{ending}"


def compare_masks(base: RunResult, cand: RunResult, regions: list[tuple[int, ...]]) -> pd.DataFrame:
    """Per case: Dice of the candidate's mask vs the baseline's (per label or region; 1 where
    neither has it: agreeing that a label is absent is agreement) and voxel agreement."""
    from medray.metrics.agreement import pair_by_id
    from medray.metrics.segmentation import dice_iou, overlap_counts, voxel_agreement

    b, c = base.predictions, cand.predictions
    bi, ci = pair_by_id(b["sample_id"].to_numpy(), c["sample_id"].to_numpy())
    rows = []
    for i, j in zip(bi, ci):
        bm, cm = unpack_mask(b["mask"].iat[i]), unpack_mask(c["mask"].iat[j])
        dice, _ = dice_iou(overlap_counts(cm, bm, regions))
        rows.append({"sample_id": c["sample_id"].iat[j], "dice_vs_baseline": np.where(np.isnan(dice), 1.0, dice),
                     "voxel_agreement": voxel_agreement(cm, bm)})
    return pd.DataFrame(rows, columns=["sample_id", "dice_vs_baseline", "voxel_agreement"])
