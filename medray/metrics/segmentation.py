"""Segmentation metrics: Dice per case and per class (MONAI's DiceMetric), and summaries.

Masks are integer label maps (0 = background).  Per-case Dice is computed by MONAI's
``DiceMetric(include_background=False, num_classes=K)`` on the label maps directly (it
compares ``mask == c`` per class, so no one-hot volume of K × the voxels is built).

Two conventions for a class absent from the reference:
* vs labels (``ignore_empty=True``, MONAI's default): NaN — the case says nothing about
  that class, and means skip it (``nanmean``);
* vs the baseline's masks (``ignore_empty=False``): 1 when the candidate is empty too,
  0 otherwise — agreeing that a class is absent *is* agreement.
"""

from __future__ import annotations

import math

import numpy as np


def dice_per_class(pred: np.ndarray, target: np.ndarray, num_classes: int, ignore_empty: bool = True) -> np.ndarray:
    """Dice of each foreground class ``1..K-1`` of one case: float64 ``(K-1,)``, NaN allowed."""
    import torch
    from monai.metrics import DiceMetric

    pred, target = np.asarray(pred), np.asarray(target)
    if pred.shape != target.shape:
        raise ValueError(f"mask shapes differ: prediction {pred.shape}, reference {target.shape}")
    if num_classes < 2:
        raise ValueError(f"num_classes={num_classes}: need background plus at least one class")
    metric = DiceMetric(include_background=False, reduction="none", ignore_empty=ignore_empty, num_classes=num_classes)
    # (B=1, C=1, spatial...) label maps; uint8 → int16 keeps `== c` exact and is 2 bytes/voxel.
    p = torch.from_numpy(np.ascontiguousarray(pred, dtype=np.int16))[None, None]
    t = torch.from_numpy(np.ascontiguousarray(target, dtype=np.int16))[None, None]
    return metric(p, t)[0].double().numpy()


def dice_summary(per_case: np.ndarray, classes: list[str]) -> dict:
    """Mean Dice as MONAI's ``reduction="mean"``: each case's mean over its classes, then
    the mean over cases (NaNs skipped at both steps); per class as ``"mean_batch"``.

    ``per_case``: ``(N, K-1)``; ``classes``: the K-1 foreground names.
    """
    d = np.asarray(per_case, dtype=np.float64).reshape(-1, len(classes))
    per_class = {}
    for j, c in enumerate(classes):
        col = d[:, j][~np.isnan(d[:, j])]
        per_class[c] = float(col.mean()) if col.size else None
    case_means = _nanmean_rows(d)
    case_means = case_means[~np.isnan(case_means)]
    return {
        "dice_mean": float(case_means.mean()) if case_means.size else None,
        "dice_per_class": per_class,
        "dice_case_min": float(case_means.min()) if case_means.size else None,
        "dice_case_median": float(np.median(case_means)) if case_means.size else None,
        "n_cases": int(d.shape[0]),
        "n_cases_per_class": {c: int((~np.isnan(d[:, j])).sum()) for j, c in enumerate(classes)},
    }


def _nanmean_rows(d: np.ndarray) -> np.ndarray:
    """Row means ignoring NaN; NaN for an all-NaN row (without numpy's warning)."""
    ok = ~np.isnan(d)
    n = ok.sum(axis=1)
    s = np.where(ok, d, 0.0).sum(axis=1)
    out = np.full(d.shape[0], np.nan)
    out[n > 0] = s[n > 0] / n[n > 0]
    return out


def case_mean(per_class: np.ndarray) -> float:
    """One case's mean over its classes (NaN classes skipped; NaN if none)."""
    v = _nanmean_rows(np.asarray(per_class, dtype=np.float64).reshape(1, -1))[0]
    return float(v)


def voxel_agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Share of voxels with the same label in both masks."""
    if a.shape != b.shape:
        raise ValueError(f"mask shapes differ: {a.shape} vs {b.shape}")
    return float(np.count_nonzero(a == b)) / max(1, a.size)


def fmt(x: float | None) -> float | None:
    """JSON-safe: NaN → None."""
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)
