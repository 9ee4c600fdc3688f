"""Segmentation metrics: TP/FP/FN/TN, Dice and IoU per case and label or region (nnU-Net's
``compute_metrics_on_folder`` numbers, :func:`overlap_counts`), Dice per class of two masks
(MONAI's DiceMetric, the candidate vs the baseline), HD95 and surface Dice, and summaries.

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


def overlap_counts(pred: np.ndarray, ref: np.ndarray, regions: list[tuple[int, ...]], ignore_label: int | None = None
                   ) -> np.ndarray:
    """TP, FP, FN, TN voxels of each label or region (a region: the union of its label
    values) of one case: int64 ``(R, 4)`` — nnU-Net's ``compute_tp_fp_fn_tn`` on
    ``region_or_label_to_mask`` masks, voxels of ``ignore_label`` in ``ref`` left out."""
    pred, ref = np.asarray(pred), np.asarray(ref)
    if pred.shape != ref.shape:
        raise ValueError(f"mask shapes differ: prediction {pred.shape}, reference {ref.shape}")
    keep = None if ignore_label is None else ref != ignore_label
    out = np.zeros((len(regions), 4), dtype=np.int64)
    for j, values in enumerate(regions):
        p, r = np.isin(pred, values), np.isin(ref, values)
        if keep is not None:
            p &= keep
            r &= keep
        tp = int(np.count_nonzero(p & r))
        fp, fn = int(np.count_nonzero(p)) - tp, int(np.count_nonzero(r)) - tp
        n = int(keep.sum()) if keep is not None else pred.size
        out[j] = (tp, fp, fn, n - tp - fp - fn)
    return out


def dice_iou(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Dice and IoU from ``(..., 4)`` TP/FP/FN/TN counts, as nnU-Net computes them: NaN
    where the label is in neither mask (TP + FP + FN = 0), 0 where only one has it."""
    c = np.asarray(counts, dtype=np.float64)
    tp, fp, fn = c[..., 0], c[..., 1], c[..., 2]
    with np.errstate(all="ignore"):
        none = tp + fp + fn == 0
        dice = np.where(none, np.nan, 2 * tp / (2 * tp + fp + fn))
        iou = np.where(none, np.nan, tp / (tp + fp + fn))
    return dice, iou


def label_summary(counts: np.ndarray, classes: list[str]) -> dict:
    """nnU-Net's ``mean`` (per label or region, over cases, NaN skipped) and
    ``foreground_mean`` (the mean of those) of Dice, IoU, TP, FP, FN, TN, n_pred, n_ref."""
    c = np.asarray(counts, dtype=np.float64).reshape(-1, len(classes), 4)
    dice, iou = dice_iou(c)
    per = {"Dice": dice, "IoU": iou, "TP": c[..., 0], "FP": c[..., 1], "FN": c[..., 2], "TN": c[..., 3],
           "n_pred": c[..., 0] + c[..., 1], "n_ref": c[..., 0] + c[..., 2]}
    mean = {}
    for j, name in enumerate(classes):
        mean[name] = {k: _nanmean(v[:, j]) for k, v in per.items()}
    fg = {k: _nanmean(np.array([mean[n][k] if mean[n][k] is not None else np.nan for n in classes])) for k in per}
    return {"mean": mean, "foreground_mean": fg}


def _nanmean(v: np.ndarray) -> float | None:
    v = np.asarray(v, dtype=np.float64)
    v = v[~np.isnan(v)]
    return float(v.mean()) if v.size else None


def surface_distances(pred: np.ndarray, target: np.ndarray, num_classes: int, spacing, tolerance_mm: float
                      ) -> tuple[np.ndarray, np.ndarray]:
    """HD95 (mm) and normalised surface Dice at ``tolerance_mm`` of each foreground class of
    one case, by MONAI's ``compute_hausdorff_distance(percentile=95)`` and
    ``compute_surface_dice`` on one-hot maps in the voxel ``spacing`` (mm per axis).

    A class absent from the reference is NaN (as Dice with ignore_empty); present in the
    reference but not predicted: HD95 is infinite (left out of the mean and counted in
    ``hd95_missed`` by :func:`surface_summary`), surface Dice 0.
    """
    return region_surface_distances(pred, target, [(c,) for c in range(1, num_classes)], spacing, tolerance_mm)


def region_surface_distances(pred: np.ndarray, target: np.ndarray, regions: list[tuple[int, ...]], spacing,
                             tolerance_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """:func:`surface_distances` of labels or regions (a region: the union of its label
    values), one at a time (two binary volumes in memory, not K one-hot ones)."""
    import warnings

    import torch
    from monai.metrics import compute_hausdorff_distance, compute_surface_dice

    pred, target = np.asarray(pred), np.asarray(target)
    if pred.shape != target.shape:
        raise ValueError(f"mask shapes differ: prediction {pred.shape}, reference {target.shape}")
    sp = [float(v) for v in spacing]
    hd, nsd = np.full(len(regions), np.nan), np.full(len(regions), np.nan)
    for j, values in enumerate(regions):
        t = np.isin(target, values)
        if not t.any():
            continue  # absent from the reference: NaN, as Dice with ignore_empty
        p = np.isin(pred, values)
        if not p.any():
            hd[j], nsd[j] = np.inf, 0.0
            continue
        pt = torch.from_numpy(p[None, None].astype(np.float32))
        tt = torch.from_numpy(t[None, None].astype(np.float32))
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            hd[j] = float(compute_hausdorff_distance(pt, tt, include_background=True, percentile=95, spacing=sp)[0, 0])
            nsd[j] = float(compute_surface_dice(pt, tt, class_thresholds=[tolerance_mm], include_background=True,
                                                spacing=sp)[0, 0])
    return hd, nsd


def surface_summary(hd: np.ndarray, nsd: np.ndarray, classes: list[str]) -> dict:
    """Per class: mean HD95 over the cases where it is finite (and how many were missed:
    a class in the labels the model did not predict), mean surface Dice.

    Surface Dice is MONAI's ``compute_surface_dice``: the fraction of boundary *voxels*
    within the tolerance (not Nikolov et al.'s area-weighted surface elements; ``definition``
    says so in metrics.json and the report).  ``surface_dice_mean`` averages like
    ``dice_mean``: each case's mean over its classes, then the mean over cases."""
    hd = np.asarray(hd, dtype=np.float64).reshape(-1, len(classes))
    nsd = np.asarray(nsd, dtype=np.float64).reshape(-1, len(classes))
    out: dict = {"hd95_per_class": {}, "hd95_missed": {}, "surface_dice_per_class": {}}
    for j, c in enumerate(classes):
        h, s = hd[:, j], nsd[:, j]
        fin = np.isfinite(h)
        out["hd95_per_class"][c] = float(h[fin].mean()) if fin.any() else None
        out["hd95_missed"][c] = int(np.isinf(h).sum())
        ok = ~np.isnan(s)
        out["surface_dice_per_class"][c] = float(s[ok].mean()) if ok.any() else None
    case_means = _nanmean_rows(nsd)
    case_means = case_means[~np.isnan(case_means)]
    out["surface_dice_mean"] = float(case_means.mean()) if case_means.size else None
    out["surface_dice_definition"] = ("MONAI compute_surface_dice: share of boundary voxels within the tolerance "
                                      "(voxel counts, not area-weighted); mean over cases of each case's class mean")
    return out


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
