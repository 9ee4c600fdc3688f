"""What a clinical reviewer checks before approving a faster model, beyond mean AUC.

* **Calibration** — expected calibration error with equal-width and equal-mass bins, the
  Brier score and the reliability curve (the points of a reliability diagram);
* **threshold transfer** — an operating threshold chosen on the baseline's predictions of
  a validation split (fixed, Youden's J, a target sensitivity or specificity), then applied
  unchanged to baseline and candidate on the test set; the decisions that flipped;
* **subgroups** — AUC per group of a metadata column (sex, age band, view position...) and
  the candidate's change in each: a quantized model can keep the mean and lose one group.

Scores are per "column": the positive class's probability of a binary task, each label's
of a multilabel task (multiclass with more than two classes: top-label confidence for
calibration; no threshold).  scikit-learn does the arithmetic where it has it.
"""

from __future__ import annotations

import math

import numpy as np

METHODS = ("fixed", "youden", "sensitivity", "specificity")
DEFAULT_BINS = 15


# --------------------------------------------------------------------------- calibration


def _bin_edges(conf: np.ndarray, n_bins: int, strategy: str) -> np.ndarray:
    """sklearn.calibration.calibration_curve's edges, computed the same way (the same
    percentile grid: ``linspace(0, 1) * 100``, not ``linspace(0, 100)``, which rounds apart)."""
    if strategy == "uniform":
        return np.linspace(0.0, 1.0, n_bins + 1)
    if strategy == "quantile":
        return np.percentile(conf, np.linspace(0, 1, n_bins + 1) * 100)
    raise ValueError(f"strategy must be 'uniform' or 'quantile', got {strategy!r}")


def reliability(y, conf, n_bins: int = DEFAULT_BINS, strategy: str = "uniform") -> dict:
    """Reliability curve and ECE of confidences ``conf`` for 0/1 outcomes ``y``.

    Bins as scikit-learn's ``calibration_curve`` (``uniform``: equal width on [0, 1];
    ``quantile``: equal mass); ECE = Σ_b (n_b / N) · |mean(y)_b − mean(conf)_b| over the
    non-empty bins.  Returns ``ece``, ``bins`` (edges), and per non-empty bin ``count``,
    ``mean_confidence``, ``fraction_positive``.
    """
    y = np.asarray(y, dtype=np.float64).ravel()
    c = np.asarray(conf, dtype=np.float64).ravel()
    if y.shape != c.shape or y.size == 0:
        raise ValueError(f"y and conf must be equal, non-empty shapes; got {y.shape} and {c.shape}")
    edges = _bin_edges(c, n_bins, strategy)
    # sklearn's assignment: searchsorted on the inner edges (left side: a value on an edge
    # goes to the lower bin).
    idx = np.searchsorted(edges[1:-1], c)
    count = np.bincount(idx, minlength=len(edges) - 1)
    s_conf = np.bincount(idx, weights=c, minlength=len(edges) - 1)
    s_true = np.bincount(idx, weights=y, minlength=len(edges) - 1)
    nz = count > 0
    mean_conf, frac = s_conf[nz] / count[nz], s_true[nz] / count[nz]
    ece = float(np.sum(count[nz] / y.size * np.abs(frac - mean_conf)))
    return {
        "ece": ece,
        "strategy": strategy,
        "n_bins": int(n_bins),
        "bins": [float(e) for e in edges],
        "count": count[nz].astype(int).tolist(),
        "mean_confidence": mean_conf.tolist(),
        "fraction_positive": frac.tolist(),
    }


def calibration(y, probs, task: str, positive: int = 1, n_bins: int = DEFAULT_BINS) -> dict:
    """ECE (equal-width and equal-mass bins) and Brier score of one run.

    Binary: the positive class's probability vs "is positive"; multilabel: every
    (sample, label) probability vs its label, pooled (and the per-label Brier score);
    more than two classes: top-label confidence vs "argmax is right", Brier over all
    classes (mean Σ_k (p_k − onehot_k)²).
    """
    from sklearn.metrics import brier_score_loss

    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(y)
    out: dict = {"n_bins": int(n_bins)}
    if task == "multilabel":
        yy, conf = y.astype(np.float64), p
        out["scope"] = "every (sample, label) probability, pooled"
        out["brier_definition"] = "mean over every (sample, label) of (p − y)²"
        out["brier"] = float(np.mean((p - yy) ** 2))
        out["brier_per_label"] = [float(brier_score_loss(yy[:, j], p[:, j])) for j in range(p.shape[1])]
    elif p.shape[1] == 2:
        yy, conf = (y == positive).astype(np.float64), p[:, positive]
        out["scope"] = "probability of the positive class"
        out["brier_definition"] = "mean over samples of (p(positive) − y)² (scikit-learn's brier_score_loss)"
        out["brier"] = float(brier_score_loss(yy, conf))
    else:
        pred = p.argmax(axis=1)
        yy, conf = (pred == y).astype(np.float64), p.max(axis=1)
        out["scope"] = "top-label confidence"
        out["brier_definition"] = "mean over samples of Σ_k (p_k − onehot_k)² (0 to 2)"
        out["brier"] = float(np.mean(np.sum((p - np.eye(p.shape[1])[y.astype(int)]) ** 2, axis=1)))
    out["equal_width"] = reliability(yy, conf, n_bins, "uniform")
    out["equal_mass"] = reliability(yy, conf, n_bins, "quantile")
    out["ece"] = out["equal_width"]["ece"]
    out["ece_equal_mass"] = out["equal_mass"]["ece"]
    return out


# --------------------------------------------------------------------------- thresholds


def score_columns(y, probs, task: str, classes: list[str], positive: int = 1) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, 0/1 truth, score) of each thresholded column: the positive class of a binary
    task, every label of a multilabel one."""
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(y)
    if task == "multilabel":
        return [(classes[j], y[:, j].astype(bool), p[:, j]) for j in range(p.shape[1])]
    if p.shape[1] != 2:
        raise ValueError(f"a decision threshold applies to binary and multilabel tasks, not {p.shape[1]} classes")
    return [(classes[positive], y == positive, p[:, positive])]


def choose_threshold(y_pos, score, method: str, target: float | None = None, value: float = 0.5) -> float:
    """The operating threshold of one score on validation data.

    ``fixed``: ``value``; ``youden``: maximises sensitivity + specificity − 1;
    ``sensitivity``: the highest threshold whose sensitivity is ≥ ``target``;
    ``specificity``: the lowest threshold whose specificity is ≥ ``target`` (the most
    sensitive one that keeps it).  Decisions are ``score >= threshold``.
    """
    from sklearn.metrics import roc_curve

    if method == "fixed":
        return float(value)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    y_pos = np.asarray(y_pos).astype(bool)
    if y_pos.all() or not y_pos.any():
        raise ValueError("choosing a threshold needs positive and negative validation samples")
    fpr, tpr, thr = roc_curve(y_pos, np.asarray(score, dtype=np.float64), drop_intermediate=False)
    if method == "youden":
        i = int(np.argmax(tpr - fpr))
    elif method == "sensitivity":
        i = int(np.flatnonzero(tpr >= target - 1e-12)[0])
    else:
        i = int(np.flatnonzero(1 - fpr >= target - 1e-12)[-1])
    # roc_curve's first threshold is +inf (nothing positive): the same decisions as 1 + ε.
    return float(thr[i]) if math.isfinite(thr[i]) else float(np.nextafter(1.0, 2.0))


def flips(ids, base_scores: np.ndarray, cand_scores: np.ndarray, thresholds: list[float], names: list[str],
          limit: int = 50) -> dict:
    """Samples whose decision at the transferred threshold(s) differs between the runs."""
    b = np.asarray(base_scores) >= np.asarray(thresholds)[None, :]
    c = np.asarray(cand_scores) >= np.asarray(thresholds)[None, :]
    changed = b != c
    ids = np.asarray(ids).astype(str)
    per = {}
    for j, name in enumerate(names):
        rows = np.flatnonzero(changed[:, j])
        per[name] = {
            "n": int(rows.size),
            "to_positive": int((c[rows, j] & ~b[rows, j]).sum()),
            "to_negative": int((b[rows, j] & ~c[rows, j]).sum()),
            "sample_ids": ids[rows[:limit]].tolist(),
        }
    any_row = changed.any(axis=1)
    return {"n": int(any_row.sum()), "n_samples": int(len(ids)), "per_label": per,
            "sample_ids": ids[np.flatnonzero(any_row)[:limit]].tolist()}


# --------------------------------------------------------------------------- subgroups

# Ages above the oldest recorded human lifespans are entry errors (NIH ChestX-ray14 lists
# ages 148-155): "unknown", not "80+".
MAX_AGE = 120
AGE_BANDS = ((0, 18, "0-17"), (18, 40, "18-39"), (40, 60, "40-59"), (60, 80, "60-79"), (80, MAX_AGE + 1, "80+"))


def age_band(age) -> str:
    """NIH-style ages ("058Y", "58") → a band; unknown or implausible (negative, over
    :data:`MAX_AGE`) → "unknown"."""
    s = str(age).strip().upper().rstrip("Y")
    try:
        a = float(s)
    except ValueError:
        return "unknown"
    for lo, hi, name in AGE_BANDS:
        if lo <= a < hi:
            return name
    return "unknown"


def subgroup_table(values, y, probs, task: str, min_n: int = 1) -> list[dict]:
    """Per value of a metadata column: n, positives (per class present), macro AUC.

    AUC follows :func:`medray.metrics.statistics.auc_macro` (classes/labels with both
    outcomes present in the group); a group where none has both is ``None``.  A group with
    fewer than ``min_n`` samples is listed with its ``n``, ``small: True`` and no AUC (too
    few samples for one): reported, never dropped.
    """
    from medray.metrics.statistics import auc_macro

    values = np.asarray(values).astype(str)
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(y)
    rows = []
    for g in sorted(set(values.tolist())):
        m = values == g
        if m.sum() < min_n:
            rows.append({"group": g, "n": int(m.sum()), "auc_macro": None, "small": True})
            continue
        auc = auc_macro(y[m], p[m], task)
        rows.append({"group": g, "n": int(m.sum()), "auc_macro": None if math.isnan(auc) else float(auc)})
    return rows
