"""The read stage of task=segmentation: one case per block, read and preprocessed in a CPU
task by the model's recipe (:mod:`medray.models.recipes`): the network's input volume, the
label in the masks' geometry, and the recipe's geometry record for the way back."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from medray.specs import ModelSpec

log = logging.getLogger("medray.segmentation")


# Per-case vectors the read stage passes through: the input's shape (file voxel order) and
# spacing, the network grid's spacing, and the spacing of the masks' grid (per mask axis).
VECTORS = ("orig_shape", "orig_spacing", "spacing", "mask_spacing")
# The columns a read task hands the actors (besides the vectors).
CASE_COLUMNS = ("sample_id", "path", "channels", "label_path")


def read_case_batch(batch: dict[str, np.ndarray], model: ModelSpec, settings: dict) -> dict:
    """CPU task: one block = one case → the recipe's read.

    A case that cannot be read becomes a placeholder row with its ``skipped_reason``
    (never a silent drop); the driver applies data.on_error.
    """
    from medray.data.volumes import VolumeError
    from medray.models.recipes import recipe_of

    recipe = recipe_of(model)
    out: dict[str, list] = {k: [] for k in ("sample_id", "path", "image", "label", "has_label", "geometry", *VECTORS,
                                            "skipped_reason")}
    n = len(batch["sample_id"])
    for i in range(n):
        case = {k: str(batch[k][i]) if k in batch else "" for k in CASE_COLUMNS}
        try:
            got, reason = recipe.read(model, settings, case), ""
        except VolumeError as e:
            got, reason = None, str(e)
        out["sample_id"].append(batch["sample_id"][i])
        out["path"].append(case["path"])
        out["skipped_reason"].append(reason)
        if got is None:
            out["image"].append(np.zeros((1, 1, 1, 1), np.float32))
            out["label"].append(np.zeros((1, 1, 1), np.uint8))
            out["has_label"].append(False)
            out["geometry"].append(b"")
            for k in VECTORS:
                out[k].append(np.zeros(3))
            continue
        out["image"].append(got["image"])
        has = got["label"] is not None
        out["label"].append(got["label"] if has else np.zeros((1, 1, 1), np.uint8))
        out["has_label"].append(has)
        out["geometry"].append(got["geometry"])
        for k in VECTORS:
            out[k].append(np.asarray(got[k], dtype=np.float64))
    # One case per block: a (1, ...) view of the volume, not a stacked copy.
    return {k: (v[0][None] if len(v) == 1 else np.stack(v)) if k in ("image", "label", *VECTORS)
            else np.asarray(v, dtype=object if k in ("geometry", "path") else None) for k, v in out.items()}
