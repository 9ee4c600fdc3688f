"""Classification metrics for multiclass (incl. binary) and multilabel tasks.

Everything is computed from the complete, merged set of per-sample outputs, so a sharded
run and a single-process run give identical numbers. scikit-learn does the arithmetic;
this module decides which classes are eligible (e.g. AUC needs both outcomes present)
and converts results to plain Python types for ``metrics.json``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
    roc_auc_score,
)

TASKS = ("multiclass", "multilabel")

# Probabilities outside [0, 1] by more than this mean logits were passed by mistake;
# the slack tolerates float16 rounding of softmax/sigmoid outputs.
_PROB_TOL = 1e-4


def classification_metrics(
    y_true,
    probs,
    task: str,
    classes: Sequence,
    threshold: float = 0.5,
) -> dict:
    """Compute accuracy, balanced accuracy, AUC, F1 and a per-class table.

    ``task="multiclass"``: ``y_true`` int (N,), ``probs`` (N, K); prediction = argmax.
    Binary is multiclass with K=2 (positive class index 1) and also reports
    ``sensitivity``/``specificity`` at the argmax operating point (threshold 0.5).
    ``task="multilabel"``: ``y_true`` 0/1 (N, L), ``probs`` (N, L) sigmoid outputs,
    decision = ``probs >= threshold``.

    Returns a dict of plain floats/lists/dicts; undefined values are ``None``.
    Raises ValueError on malformed inputs.
    """
    y, p, names = _validate(y_true, probs, task, classes, threshold)
    if task == "multiclass":
        return _multiclass(y, p, names)
    return _multilabel(y, p, names, float(threshold))


def _validate(y_true, probs, task, classes, threshold):
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(y_true)
    if p.ndim != 2:
        raise ValueError(f"probs must be 2-D (N, K), got shape {p.shape}")
    n, k = p.shape
    if n == 0:
        raise ValueError(f"no samples: probs has shape {p.shape}")
    names = [str(c) for c in classes]
    if len(names) != k:
        raise ValueError(
            f"classes has {len(names)} names but probs has {k} columns "
            f"(shape {p.shape})"
        )
    if len(set(names)) != len(names):
        raise ValueError(f"class names must be unique, got {names}")
    bad = ~np.isfinite(p)
    if bad.any():
        rows = np.unique(np.nonzero(bad)[0])
        raise ValueError(
            f"probs (shape {p.shape}) contains {int(bad.sum())} NaN/infinite value(s) "
            f"in {rows.size} row(s), first rows: {rows[:10].tolist()}"
        )
    if p.min() < -_PROB_TOL or p.max() > 1 + _PROB_TOL:
        raise ValueError(
            f"probs (shape {p.shape}) must be probabilities in [0, 1], got range "
            f"[{p.min():.4g}, {p.max():.4g}]; pass softmax/sigmoid outputs, not logits"
        )
    if not (np.issubdtype(y.dtype, np.number) or y.dtype == bool):
        raise ValueError(f"y_true must be numeric class indices, got dtype {y.dtype}")
    if y.size and not np.all(np.isfinite(y.astype(np.float64))):
        raise ValueError(f"y_true (shape {y.shape}) contains NaN/infinite labels")
    if y.size and not np.all(y.astype(np.float64) == np.round(y.astype(np.float64))):
        raise ValueError(f"y_true (shape {y.shape}) must hold integer labels")

    if task == "multiclass":
        if k < 2:
            raise ValueError(
                f"multiclass needs at least 2 classes, probs shape {p.shape}"
            )
        if y.shape != (n,):
            raise ValueError(
                f"multiclass y_true must have shape ({n},) to match probs {p.shape}, "
                f"got {y.shape}"
            )
        y = y.astype(np.int64)
        out = (y < 0) | (y >= k)
        if out.any():
            raise ValueError(
                f"y_true has {int(out.sum())} label(s) outside [0, {k - 1}] "
                f"(probs shape {p.shape}), e.g. {np.unique(y[out])[:10].tolist()}"
            )
        # Binary reports its operating point as 0.5 (argmax); another threshold would
        # otherwise be ignored silently, so refuse it.
        if threshold != 0.5:
            raise ValueError(
                f"threshold={threshold} is not supported for multiclass (prediction is "
                "argmax, i.e. 0.5 on the positive class for binary); it applies to "
                "multilabel only"
            )
    else:
        if y.shape != p.shape:
            raise ValueError(
                f"multilabel y_true shape {y.shape} does not match "
                f"probs shape {p.shape}"
            )
        y = y.astype(np.int64)
        if not np.isin(y, (0, 1)).all():
            raise ValueError(
                f"multilabel y_true (shape {y.shape}) must be 0/1, found values "
                f"{np.setdiff1d(np.unique(y), [0, 1])[:10].tolist()}"
            )
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    return y, p, names


def _f(x) -> float | None:
    return None if x is None else float(x)


def _auc_table(onehot: np.ndarray, p: np.ndarray, names: list[str]):
    """One-vs-rest AUC per column; columns with a single outcome present are skipped."""
    per: dict[str, float | None] = {}
    skipped: list[str] = []
    for j, name in enumerate(names):
        col = onehot[:, j]
        if col.min() == col.max():
            # AUC is undefined without both positives and negatives.
            per[name] = None
            skipped.append(name)
        else:
            per[name] = float(roc_auc_score(col, p[:, j]))
    valid = [v for v in per.values() if v is not None]
    macro = float(np.mean(valid)) if valid else None
    return macro, per, skipped


def _per_class(y, pred, names, auc_per, labels=None):
    prec, rec, f1, sup = precision_recall_fscore_support(
        y, pred, labels=labels, average=None, zero_division=0
    )
    return [
        {
            "class": name,
            "support": int(sup[j]),
            "precision": float(prec[j]),
            "recall": float(rec[j]),
            "f1": float(f1[j]),
            "auc": auc_per[name],
        }
        for j, name in enumerate(names)
    ]


def _multiclass(y: np.ndarray, p: np.ndarray, names: list[str]) -> dict:
    k = p.shape[1]
    labels = list(range(k))
    # np.argmax breaks ties towards the lower index: a 0.5/0.5 binary row is negative.
    pred = p.argmax(axis=1)
    onehot = np.eye(k, dtype=np.int64)[y]
    auc_macro, auc_per, skipped = _auc_table(onehot, p, names)
    with warnings.catch_warnings():
        # sklearn warns when a predicted class is absent from y_true; that is expected
        # (recall is averaged over classes present in y_true by definition).
        warnings.simplefilter("ignore", UserWarning)
        bal = balanced_accuracy_score(y, pred)
    out = {
        "accuracy": float(accuracy_score(y, pred)),
        "balanced_accuracy": float(bal),
        "auc_macro": auc_macro,
        "auc_per_class": auc_per,
        "auc_skipped": skipped,
        "f1_macro": float(
            f1_score(y, pred, labels=labels, average="macro", zero_division=0)
        ),
        "per_class": _per_class(y, pred, names, auc_per, labels=labels),
    }
    if k == 2:
        tn, fp, fn, tp = confusion_matrix(y, pred, labels=[0, 1]).ravel()
        out["sensitivity"] = _f(tp / (tp + fn)) if tp + fn else None
        out["specificity"] = _f(tn / (tn + fp)) if tn + fp else None
        out["threshold"] = 0.5
    return out


def _multilabel(
    y: np.ndarray, p: np.ndarray, names: list[str], threshold: float
) -> dict:
    dec = (p >= threshold).astype(np.int64)
    auc_macro, auc_per, skipped = _auc_table(y, p, names)
    # Per label, sklearn's balanced accuracy with both outcomes present is exactly
    # (sensitivity + specificity) / 2; labels with one outcome have no such mean.
    bal = [
        balanced_accuracy_score(y[:, j], dec[:, j])
        for j in range(y.shape[1])
        if y[:, j].min() != y[:, j].max()
    ]
    return {
        # accuracy_score on indicator matrices is subset (exact-match) accuracy.
        "accuracy": float(accuracy_score(y, dec)),
        "balanced_accuracy": float(np.mean(bal)) if bal else None,
        "auc_macro": auc_macro,
        "auc_per_class": auc_per,
        "auc_skipped": skipped,
        "f1_macro": float(f1_score(y, dec, average="macro", zero_division=0)),
        "per_class": _per_class(y, dec, names, auc_per),
        "threshold": threshold,
    }
