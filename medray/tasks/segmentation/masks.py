"""Masks as they travel and are stored: compressed uint8 label maps with their sha256,
their file names, and the candidate's masks compared with the baseline's."""

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


def load_mask(mask_dir, name: str) -> np.ndarray:
    """A mask file written to ``predictions/<run>_masks/``."""
    from medray import io as medray_io

    return unpack_mask(medray_io.read_bytes(medray_io.join(str(mask_dir), name)))


def mask_name(sample_id: str) -> str:
    return f"{str(sample_id).replace(os.sep, '__')}.npz"


def compare_masks(base: RunResult, cand: RunResult, num_classes: int) -> pd.DataFrame:
    """Per case: Dice of the candidate's mask vs the baseline's (per class) and voxel agreement."""
    from medray.metrics.agreement import pair_by_id
    from medray.metrics.segmentation import dice_per_class, voxel_agreement

    b, c = base.predictions, cand.predictions
    bi, ci = pair_by_id(b["sample_id"].to_numpy(), c["sample_id"].to_numpy())
    rows = []
    for i, j in zip(bi, ci):
        bm, cm = unpack_mask(b["mask"].iat[i]), unpack_mask(c["mask"].iat[j])
        rows.append({"sample_id": c["sample_id"].iat[j], "dice_vs_baseline": dice_per_class(cm, bm, num_classes, ignore_empty=False),
                     "voxel_agreement": voxel_agreement(cm, bm)})
    return pd.DataFrame(rows, columns=["sample_id", "dice_vs_baseline", "voxel_agreement"])
