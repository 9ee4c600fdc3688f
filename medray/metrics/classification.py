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
    f1_score,
    precision_recall_fscore_support,
    roc_auc_score,
)

TASKS = ("multiclass", "multilabel")

# Probabilities outside [0, 1] by more than this mean logits were passed by mistake;
# the slack tolerates float16 rounding of softmax/sigmoid outputs.
_PROB_TOL = 1e-4
# A threshold just above 1 decides "nothing is positive" (medray.metrics.clinical.choose_threshold).
_MAX_THRESHOLD = float(np.nextafter(1.0, 2.0))


def classification_metrics(
    y_true,
    probs,
    task: str,
    classes: Sequence,
    threshold: float = 0.5,
    positive: int = 1,
) -> dict:
    """Compute accuracy, balanced accuracy, AUC, F1 and a per-class table.

    ``task="multiclass"``: ``y_true`` int (N,), ``probs`` (N, K); prediction = argmax.
    Binary is multiclass with K=2: the decision is ``probs[:, positive] >= threshold``
    (a 0.5/0.5 row is positive, as in multilabel) and the operating point (sensitivity,
    specificity, PPV, NPV, F1 of the positive class) is reported for class ``positive``.
    ``task="multilabel"``: ``y_true`` 0/1 (N, L), ``probs`` (N, L) sigmoid outputs,
    decision = ``probs >= threshold``.

    Binary: ``auc_macro`` is the AUC of the positive class's probability (one score; the
    other column's AUC is in ``auc_per_class``).  F1 macro is scikit-learn's
    ``f1_score(average="macro")`` with its default labels: the classes present in ``y_true``
    or predicted (a predicted class the test set lacks is a real error, scored 0); classes
    in neither are listed in ``f1_skipped`` and have no F1 in the per-class table.
    ``threshold`` may be one value per label for a multilabel task.

    Returns a dict of plain floats/lists/dicts; undefined values are ``None``.
    Raises ValueError on malformed inputs.
    """
    y, p, names = _validate(y_true, probs, task, classes, threshold)
    if task == "multiclass":
        if p.shape[1] == 2 and positive not in (0, 1):
            raise ValueError(f"positive must be the index of a class (0 or 1), got {positive}")
        return _multiclass(y, p, names, float(threshold), int(positive))
    return _multilabel(y, p, names, threshold)


def binary_decisions(probs: np.ndarray, threshold: float = 0.5, positive: int = 1) -> np.ndarray:
    """Class index decided for each row: binary ``p[positive] >= threshold``, else argmax."""
    p = np.asarray(probs)
    if p.shape[1] != 2:
        # np.argmax breaks ties towards the lower index.
        return p.argmax(axis=1)
    return np.where(p[:, positive] >= threshold, positive, 1 - positive)


def operating_point(y_pos, score, threshold: float) -> dict:
    """Sensitivity, specificity, PPV, NPV and F1 of the decision ``score >= threshold``
    against the 0/1 truth ``y_pos``, with the confusion counts; undefined values None."""
    y_pos = np.asarray(y_pos).astype(bool)
    dec = np.asarray(score, dtype=np.float64) >= threshold
    tp, fp = int((dec & y_pos).sum()), int((dec & ~y_pos).sum())
    fn, tn = int((~dec & y_pos).sum()), int((~dec & ~y_pos).sum())

    def ratio(a: int, b: int) -> float | None:
        return a / b if b else None

    return {
        "threshold": float(threshold),
        "sensitivity": ratio(tp, tp + fn),
        "specificity": ratio(tn, tn + fp),
        "ppv": ratio(tp, tp + fp),
        "npv": ratio(tn, tn + fn),
        "f1": ratio(2 * tp, 2 * tp + fp + fn),
        "tp": tp, "fp": fp, "tn": tn, "fn": fn,
    }


def _check_values(p: np.ndarray, y: np.ndarray) -> None:
    """Probabilities finite and in [0, 1]; labels finite integers."""
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
    _check_values(p, y)

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
        # More than two classes decide by argmax; a threshold would be ignored silently.
        if k > 2 and threshold != 0.5:
            raise ValueError(
                f"threshold={threshold} is not supported for {k} classes (prediction is "
                "argmax); it applies to binary and multilabel tasks"
            )
        if not 0.0 <= threshold <= _MAX_THRESHOLD:
            raise ValueError(f"threshold must be in [0, 1], got {threshold}")
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
        t = np.asarray(threshold, dtype=np.float64)
        if t.ndim > 1 or (t.ndim == 1 and len(t) != p.shape[1]) or not np.all((t >= 0) & (t <= _MAX_THRESHOLD)):
            raise ValueError(f"threshold must be in [0, 1], one value or one per label, got {threshold}")
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


def _per_class(y, pred, names, auc_per, scored, labels=None):
    if labels is None:  # multilabel: per column (sklearn reads a single column as binary)
        tp = (y & pred).sum(axis=0)
        fp, fn = ((1 - y) & pred).sum(axis=0), (y & (1 - pred)).sum(axis=0)
        with np.errstate(divide="ignore", invalid="ignore"):
            prec = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), 0.0)
            rec = np.where(tp + fn > 0, tp / np.maximum(tp + fn, 1), 0.0)
            f1 = np.where(2 * tp + fp + fn > 0, 2 * tp / np.maximum(2 * tp + fp + fn, 1), 0.0)
        sup = tp + fn
    else:
        prec, rec, f1, sup = precision_recall_fscore_support(
            y, pred, labels=labels, average=None, zero_division=0
        )
    return [
        {
            "class": name,
            "support": int(sup[j]),
            "precision": float(prec[j]),
            # Recall/F1 of a class with no sample (and, multilabel, no prediction) is 0/0.
            "recall": float(rec[j]) if sup[j] else None,
            "f1": float(f1[j]) if scored[j] else None,
            "auc": auc_per[name],
        }
        for j, name in enumerate(names)
    ]


def _multiclass(y: np.ndarray, p: np.ndarray, names: list[str], threshold: float, positive: int) -> dict:
    k = p.shape[1]
    pred = binary_decisions(p, threshold, positive)
    onehot = np.eye(k, dtype=np.int64)[y]
    auc_macro, auc_per, skipped = _auc_table(onehot, p, names)
    if k == 2:  # one score: the positive class's (its column's AUC and the other's differ by rounding)
        auc_macro = auc_per[names[positive]]
    present = (np.bincount(y, minlength=k) > 0) | (np.bincount(pred, minlength=k) > 0)
    with warnings.catch_warnings():
        # sklearn warns when a predicted class is absent from y_true; that is expected
        # (recall is averaged over classes present in y_true by definition).
        warnings.simplefilter("ignore", UserWarning)
        bal = balanced_accuracy_score(y, pred)
        f1 = f1_score(y, pred, average="macro", zero_division=0)
    out = {
        "accuracy": float(accuracy_score(y, pred)),
        "balanced_accuracy": float(bal),
        "auc_macro": auc_macro,
        "auc_per_class": auc_per,
        "auc_skipped": skipped,
        "f1_macro": float(f1),
        "f1_skipped": [n for n, ok in zip(names, present) if not ok],
        "per_class": _per_class(y, pred, names, auc_per, present, labels=list(range(k))),
    }
    if k == 2:
        op = operating_point(y == positive, p[:, positive], threshold)
        out.update(
            positive_class=names[positive],
            threshold=threshold,
            sensitivity=op["sensitivity"],
            specificity=op["specificity"],
            ppv=op["ppv"],
            npv=op["npv"],
            f1_positive=op["f1"],
        )
    return out


def _multilabel(y: np.ndarray, p: np.ndarray, names: list[str], threshold) -> dict:
    t = np.broadcast_to(np.asarray(threshold, dtype=np.float64), (p.shape[1],))
    dec = (p >= t[None, :]).astype(np.int64)
    auc_macro, auc_per, skipped = _auc_table(y, p, names)
    # Per label, sklearn's balanced accuracy with both outcomes present is exactly
    # (sensitivity + specificity) / 2; labels with one outcome have no such mean.
    bal = [
        balanced_accuracy_score(y[:, j], dec[:, j])
        for j in range(y.shape[1])
        if y[:, j].min() != y[:, j].max()
    ]
    # F1 of a label with no positive and no predicted positive is 0/0: skipped (as
    # sklearn's zero_division=nan), not counted as 0.
    scored = (y.sum(axis=0) > 0) | (dec.sum(axis=0) > 0)
    per_class = _per_class(y, dec, names, auc_per, scored)
    f1 = np.mean([r["f1"] for r in per_class if r["f1"] is not None]) if scored.any() else None
    return {
        # accuracy_score on indicator matrices is subset (exact-match) accuracy.
        "accuracy": float(accuracy_score(y, dec)),
        "balanced_accuracy": float(np.mean(bal)) if bal else None,
        "auc_macro": auc_macro,
        "auc_per_class": auc_per,
        "auc_skipped": skipped,
        "f1_macro": _f(f1),
        "f1_skipped": [n for n, ok in zip(names, scored) if not ok],
        "per_class": per_class,
        "threshold": float(t[0]) if np.all(t == t[0]) else [float(v) for v in t],
    }
