"""Uncertainty of a metric and of a candidate-vs-baseline difference, on the same samples.

What a reviewer asks before accepting "the INT8 model is as good as the FP32 one":

* a confidence interval of each run's AUC / balanced accuracy / Dice (percentile bootstrap
  over samples — cases for Dice);
* a *paired* test of the difference, since both runs scored the same samples: DeLong's
  test for a binary AUC (the fast algorithm of Sun & Xu 2014, exact for ties), and a
  paired bootstrap otherwise (multi-class / multi-label macro AUC, balanced accuracy, Dice);
* a non-inferiority verdict: the candidate is non-inferior at margin ``m`` when the lower
  confidence bound of (candidate − baseline) lies above ``−m``.

Metric definitions match :mod:`medray.metrics.classification` (macro AUC over the classes
with both outcomes present; balanced accuracy = mean recall over the classes present,
multi-label: mean over labels of (sensitivity + specificity) / 2).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import norm, rankdata

# --------------------------------------------------------------------------- DeLong


def fast_delong(scores: np.ndarray, n_pos: int) -> tuple[np.ndarray, np.ndarray]:
    """AUCs and their DeLong covariance matrix for ``k`` score vectors on the same samples.

    ``scores`` is ``(k, n)`` with the ``n_pos`` positive samples first.  Midranks make the
    structural components exact with ties (a tie counts 1/2), in O(k · n log n)
    (Sun & Xu, IEEE Signal Processing Letters 21(11), 2014).
    """
    s = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    m = int(n_pos)
    n = s.shape[1] - m
    if m < 1 or n < 1:
        raise ValueError(f"DeLong needs positives and negatives, got {m} positive and {n} negative samples")
    pos, neg = s[:, :m], s[:, m:]
    tx = rankdata(pos, axis=1)  # midranks within the positives
    ty = rankdata(neg, axis=1)  # within the negatives
    tz = rankdata(s, axis=1)  # within all samples
    aucs = tz[:, :m].sum(axis=1) / (m * n) - (m + 1.0) / (2.0 * n)
    v01 = (tz[:, :m] - tx) / n  # per positive: fraction of negatives it outranks
    v10 = 1.0 - (tz[:, m:] - ty) / m  # per negative: fraction of positives that outrank it
    sx = np.atleast_2d(np.cov(v01)) if m > 1 else np.zeros((s.shape[0], s.shape[0]))
    sy = np.atleast_2d(np.cov(v10)) if n > 1 else np.zeros((s.shape[0], s.shape[0]))
    return aucs, sx / m + sy / n


def _binary_order(y: np.ndarray) -> tuple[np.ndarray, int]:
    y = np.asarray(y).astype(bool).ravel()
    order = np.concatenate([np.flatnonzero(y), np.flatnonzero(~y)])
    return order, int(y.sum())


def delong_auc(y_true, score) -> dict:
    """AUC of one binary score with its DeLong standard error."""
    order, m = _binary_order(y_true)
    aucs, cov = fast_delong(np.asarray(score, dtype=np.float64)[order][None, :], m)
    return {"auc": float(aucs[0]), "se": float(math.sqrt(max(cov[0, 0], 0.0)))}


def delong_test(y_true, score_a, score_b, confidence: float = 0.95) -> dict:
    """DeLong's paired test of AUC(b) − AUC(a) on the same samples.

    Returns both AUCs, the difference, its standard error, the two-sided p-value of
    "no difference" and the ``confidence`` interval of the difference (normal).
    """
    order, m = _binary_order(y_true)
    s = np.stack([np.asarray(score_a, dtype=np.float64), np.asarray(score_b, dtype=np.float64)])[:, order]
    aucs, cov = fast_delong(s, m)
    diff = float(aucs[1] - aucs[0])
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    se = math.sqrt(max(var, 0.0))
    zq = float(norm.ppf(0.5 + confidence / 2))
    if se > 0:
        z = diff / se
        p = float(2 * norm.sf(abs(z)))
    else:  # identical rankings: no evidence of any difference
        z, p = 0.0 if diff == 0 else math.copysign(math.inf, diff), 1.0 if diff == 0 else 0.0
    return {
        "a": float(aucs[0]),
        "b": float(aucs[1]),
        "difference": diff,
        "se": se,
        "z": z,
        "p_value": p,
        "ci": [diff - zq * se, diff + zq * se],
        "method": "DeLong",
    }


# --------------------------------------------------------------------------- metrics


def _auc_binary(y: np.ndarray, s: np.ndarray) -> float:
    """Mann–Whitney AUC with midranks (= sklearn's roc_auc_score); NaN if one outcome."""
    m = int(y.sum())
    n = y.size - m
    if m == 0 or n == 0:
        return math.nan
    r = rankdata(s)
    return float((r[y].sum() - m * (m + 1) / 2.0) / (m * n))


def auc_macro(y: np.ndarray, probs: np.ndarray, task: str) -> float:
    """Macro one-vs-rest AUC over the classes/labels with both outcomes present."""
    probs = np.asarray(probs, dtype=np.float64)
    if task == "multiclass":
        onehot = np.asarray(y)[:, None] == np.arange(probs.shape[1])[None, :]
    else:
        onehot = np.asarray(y).astype(bool)
    vals = [_auc_binary(onehot[:, j], probs[:, j]) for j in range(probs.shape[1])]
    vals = [v for v in vals if not math.isnan(v)]
    return float(np.mean(vals)) if vals else math.nan


def balanced_accuracy(y: np.ndarray, probs: np.ndarray, task: str, threshold: float = 0.5, positive: int = 1) -> float:
    """Mean recall over the classes present (multilabel: mean (sens + spec) / 2 per label).

    Decisions as :func:`medray.metrics.classification.binary_decisions` (binary: the
    positive class's probability ``>= threshold``)."""
    from medray.metrics.classification import binary_decisions

    probs = np.asarray(probs, dtype=np.float64)
    if task == "multiclass":
        y = np.asarray(y).astype(np.int64)
        pred = binary_decisions(probs, threshold, positive)
        k = probs.shape[1]
        support = np.bincount(y, minlength=k)
        hits = np.bincount(y[pred == y], minlength=k)
        present = support > 0
        return float(np.mean(hits[present] / support[present]))
    y = np.asarray(y).astype(bool)
    dec = probs >= threshold
    pos = y.sum(axis=0)
    neg = (~y).sum(axis=0)
    both = (pos > 0) & (neg > 0)
    if not both.any():
        return math.nan
    sens = (dec & y).sum(axis=0)[both] / pos[both]
    spec = (~dec & ~y).sum(axis=0)[both] / neg[both]
    return float(np.mean((sens + spec) / 2))


def accuracy(y: np.ndarray, probs: np.ndarray, task: str, threshold: float = 0.5, positive: int = 1) -> float:
    """Top-1 (binary: the positive class's probability ``>= threshold``) or, multilabel, exact
    match at ``threshold`` — :func:`medray.metrics.classification.classification_metrics`'s."""
    from medray.metrics.classification import binary_decisions

    probs = np.asarray(probs, dtype=np.float64)
    if task == "multiclass":
        return float(np.mean(binary_decisions(probs, threshold, positive) == np.asarray(y)))
    return float(np.mean(np.all((probs >= threshold) == np.asarray(y).astype(bool), axis=1)))


def _nanmean(v: np.ndarray) -> float:
    v = np.asarray(v, dtype=np.float64)
    v = v[~np.isnan(v)]
    return float(v.mean()) if v.size else math.nan


def _metric_fn(metric: str, task: str, threshold: float = 0.5, positive: int = 1) -> Callable[[np.ndarray, np.ndarray], float]:
    if metric == "auc_macro":
        return lambda y, p: auc_macro(y, p, task)
    if metric == "balanced_accuracy":
        return lambda y, p: balanced_accuracy(y, p, task, threshold, positive)
    if metric == "accuracy":
        return lambda y, p: accuracy(y, p, task, threshold, positive)
    if metric == "mean":
        # Per-case values already (Dice): their mean over the cases where it is defined
        # (a case with an empty ground truth has no Dice: NaN, as MONAI's ignore_empty).
        return lambda y, p: _nanmean(p)
    raise ValueError(f"unknown metric {metric!r}; use auc_macro, balanced_accuracy, accuracy or mean")


# --------------------------------------------------------------------------- bootstrap


def _resamples(n: int, n_boot: int, seed: int, clusters=None) -> list[np.ndarray]:
    """Row indices of ``n_boot`` bootstrap samples: rows drawn with replacement, or
    (``clusters``, one label per row) whole clusters drawn with replacement, every row of
    a drawn cluster taken — images of one patient are not independent samples."""
    rng = np.random.default_rng(seed)
    if clusters is None:
        return list(rng.integers(0, n, size=(n_boot, n)))
    labels = np.asarray(clusters).astype(str)
    if labels.shape != (n,):
        raise ValueError(f"clusters must give one label per row ({n}), got shape {labels.shape}")
    _, inv = np.unique(labels, return_inverse=True)
    order = np.argsort(inv, kind="stable")
    starts = np.concatenate([[0], np.cumsum(np.bincount(inv))])
    members = [order[starts[g]:starts[g + 1]] for g in range(len(starts) - 1)]
    draws = rng.integers(0, len(members), size=(n_boot, len(members)))
    return [np.concatenate([members[g] for g in d]) for d in draws]


def _percentile_ci(values: np.ndarray, confidence: float) -> list[float]:
    a = (1 - confidence) / 2
    return [float(np.quantile(values, a)), float(np.quantile(values, 1 - a))]


def bootstrap_ci(y, values, fn: Callable, n_boot: int = 2000, confidence: float = 0.95, seed: int = 0,
                 clusters=None) -> dict:
    """Percentile bootstrap CI of ``fn(y, values)`` over samples (rows), or over
    ``clusters`` (one label per row: patients) when given.

    Resamples where the metric is undefined (e.g. no positive drawn) are dropped and
    counted in ``n_undefined``.
    """
    y = np.asarray(y)
    v = np.asarray(values)
    idx = _resamples(len(v), n_boot, seed, clusters)
    stats = np.array([fn(y[i], v[i]) for i in idx], dtype=np.float64)
    ok = ~np.isnan(stats)
    if not ok.any():
        return {"estimate": float(fn(y, v)), "ci": [math.nan, math.nan], "n_boot": n_boot, "n_undefined": int(n_boot)}
    return {
        "estimate": float(fn(y, v)),
        "ci": _percentile_ci(stats[ok], confidence),
        "n_boot": n_boot,
        "n_undefined": int((~ok).sum()),
    }


def metric_ci(y, values, task: str, metric: str, how: Comparison) -> dict:
    """``metric`` of one run (probabilities, or per-case values with ``metric="mean"``) with
    its percentile bootstrap CI (rows, or ``how.clusters``), ``n`` and ``resampling``."""
    fn = _metric_fn(metric, task, how.threshold, how.positive)
    n = int(len(np.asarray(values)))
    out = (bootstrap_ci(y, values, fn, how.n_boot, how.confidence, how.seed, how.clusters) if n else
           {"estimate": math.nan, "ci": [math.nan, math.nan], "n_boot": how.n_boot, "n_undefined": how.n_boot})
    return {**out, "n": n, "resampling": "patients (clusters)" if how.clusters is not None else "samples"}


def paired_bootstrap(y, values_a, values_b, fn: Callable, n_boot: int = 2000, confidence: float = 0.95, seed: int = 0,
                     clusters=None) -> dict:
    """Paired bootstrap of ``fn(b) − fn(a)``: both runs resampled with the same indices
    (rows, or whole ``clusters``).

    ``p_value`` is the two-sided bootstrap p-value of "no difference" (twice the smaller
    tail of the difference distribution around 0, floored at 1/n_boot).
    """
    y = np.asarray(y)
    a = np.asarray(values_a)
    b = np.asarray(values_b)
    idx = _resamples(len(a), n_boot, seed, clusters)
    d = np.array([fn(y[i], b[i]) - fn(y[i], a[i]) for i in idx], dtype=np.float64)
    d = d[~np.isnan(d)]
    diff = float(fn(y, b) - fn(y, a))
    if d.size == 0:
        return {"difference": diff, "ci": [math.nan, math.nan], "p_value": math.nan, "method": "paired bootstrap"}
    if np.all(d == 0):
        p = 1.0
    else:
        p = float(min(1.0, 2 * min((d <= 0).mean(), (d >= 0).mean())))
        p = max(p, 1.0 / d.size)
    return {
        "difference": diff,
        "se": float(d.std(ddof=1)) if d.size > 1 else math.nan,
        "ci": _percentile_ci(d, confidence),
        "p_value": p,
        "n_boot": n_boot,
        "method": "paired bootstrap",
    }


# --------------------------------------------------------------------------- verdict


def non_inferiority(ci_low: float, margin: float | None) -> dict:
    """Non-inferior when the lower bound of (candidate − baseline) is above −margin."""
    if margin is None:
        return {"margin": None, "non_inferior": None, "verdict": "no margin configured"}
    if math.isnan(ci_low):
        return {"margin": margin, "non_inferior": None, "verdict": "undefined (metric not estimable)"}
    ok = ci_low > -margin
    word = "non-inferior" if ok else "non-inferiority not shown"
    return {"margin": margin, "non_inferior": bool(ok), "verdict": f"{word} (lower bound {ci_low:+.4f} vs −{margin:g})"}


@dataclass(frozen=True)
class Comparison:
    """How :func:`compare_metric` compares: the non-inferiority ``margin`` (None = no
    verdict), the bootstrap (resamples, confidence, seed; ``clusters``, e.g. patient ids
    one per row, resampled instead of rows), and the decision (``positive`` class,
    ``threshold``)."""

    margin: float | None = None  # the largest drop still non-inferior
    n_boot: int = 2000  # bootstrap resamples
    confidence: float = 0.95  # of every interval
    seed: int = 0
    positive: int = 1  # the positive class of a binary task (its AUC is DeLong's)
    threshold: float = 0.5  # decision threshold of threshold metrics (multilabel BACC)
    clusters: Any = None  # e.g. patient ids, one per row: resampled instead of rows


def compare_metric(y, base, cand, task: str, metric: str, how: Comparison | None = None) -> dict:
    """CIs of ``metric`` for the baseline and the candidate, the paired test of their
    difference (DeLong for a binary AUC, paired bootstrap otherwise) and the verdict.

    ``base``/``cand`` are the runs' probabilities aligned by sample (rows), or per-case
    values with ``metric="mean"`` (Dice).  With ``how.clusters`` the bootstrap resamples
    clusters, not rows, and DeLong is not used (it assumes independent samples).
    """
    how = how or Comparison()
    margin, n_boot, confidence, seed = how.margin, how.n_boot, how.confidence, how.seed
    positive, threshold, clusters = how.positive, how.threshold, how.clusters
    y = np.asarray(y)
    base = np.asarray(base, dtype=np.float64)
    cand = np.asarray(cand, dtype=np.float64)
    fn = _metric_fn(metric, task, threshold, positive)
    out = {
        "metric": metric,
        "n": int(len(base)),
        "confidence": confidence,
        "resampling": "patients (clusters)" if clusters is not None else "samples",
        "baseline": bootstrap_ci(y, base, fn, n_boot, confidence, seed, clusters),
        "candidate": bootstrap_ci(y, cand, fn, n_boot, confidence, seed, clusters),
    }
    if clusters is not None:
        out["n_clusters"] = int(len(np.unique(np.asarray(clusters).astype(str))))
    binary = task == "multiclass" and base.ndim == 2 and base.shape[1] == 2
    if metric == "auc_macro" and binary and clusters is None and 0 < int((y == positive).sum()) < len(y):
        # Binary softmax: the macro AUC equals the AUC of the positive-class score.
        test = delong_test(y == positive, base[:, positive], cand[:, positive], confidence)
        test = {k: test[k] for k in ("difference", "se", "z", "p_value", "ci", "method")}
    else:
        test = paired_bootstrap(y, base, cand, fn, n_boot, confidence, seed, clusters)
    out["difference"] = test
    out.update(non_inferiority(test["ci"][0], margin))
    return out


def aligned(df, ids, column: str) -> np.ndarray:
    """The ``column`` of ``df`` (one array per row) for the samples ``ids``, stacked."""
    import pandas as pd

    idx = pd.Index(df["sample_id"].astype(str)).get_indexer(ids)
    if (idx < 0).any():
        raise RuntimeError("the recommended trial and the baseline did not score the same samples")
    return np.stack([np.asarray(v, dtype=np.float64) for v in df[column].to_numpy()[idx]])
