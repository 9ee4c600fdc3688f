"""A model's outputs as scores: probabilities from logits, stacked per-sample rows, which
rows are finite, and the rule for the others.

A NaN/inf output (fp16 overflow, a broken conversion) is the worst possible answer, never a
missing one: :func:`worst_case` puts all the probability on a wrong outcome, so every
metric of the run counts the sample against it (accuracy, AUC — the sample ranks last —,
F1, calibration, subgroups) and baseline and candidate stay compared on the same samples.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def probabilities(logits: np.ndarray, task: str, output: str = "logits", positive_index: int = 1) -> np.ndarray:
    """The model's outputs as probabilities, float64: softmax (multiclass) or sigmoid
    (multilabel) of logits, or the model's own ``probs``.  A binary model with one output
    scores ``positive_index``'s class: ``[1 - p, p]`` in class order."""
    z = logits.astype(np.float64)
    if task == "multiclass" and z.shape[1] == 1:
        p = z[:, 0] if output == "probs" else 1.0 / (1.0 + np.exp(-z[:, 0]))
        out = np.empty((len(z), 2))
        out[:, positive_index], out[:, 1 - positive_index] = p, 1.0 - p
        return out
    if output == "probs":
        return z
    if task == "multilabel":
        return 1.0 / (1.0 + np.exp(-z))
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def stacked_probs(df: pd.DataFrame) -> np.ndarray:
    return np.stack(df["probs"].to_numpy()).astype(np.float64)


def finite_rows(probs: np.ndarray) -> np.ndarray:
    """Rows whose probabilities are all finite (fp16 overflow gives NaN/inf rows)."""
    return np.isfinite(probs).all(axis=1)


def worst_case(probs: np.ndarray, y: np.ndarray, task: str, positive: int = 1) -> np.ndarray:
    """``probs`` with every non-finite row replaced by the most wrong probabilities:
    multilabel ``1 - y`` (each label decided wrongly, with certainty); binary all the mass
    on the class that is not the truth; more classes all the mass on the class after the
    truth (``(y + 1) % K``): wrong at any threshold and ranked last by every AUC."""
    p = np.asarray(probs, dtype=np.float64).copy()
    bad = ~finite_rows(p)
    if not bad.any():
        return p
    y = np.asarray(y)
    if task == "multilabel":
        p[bad] = 1.0 - y[bad].astype(np.float64)
        return p
    k = p.shape[1]
    wrong = (1 - y[bad]) if k == 2 else (y[bad].astype(np.int64) + 1) % k
    p[bad] = np.eye(k)[wrong]
    return p


def nonfinite_entry(df: pd.DataFrame, ok: np.ndarray) -> dict | None:
    """The samples whose outputs were NaN/inf, by id: scored as wrong (:func:`worst_case`)."""
    if ok.all():
        return None
    ids = df["sample_id"].astype(str).to_numpy()[~ok]
    return {"n": int(ids.size), "sample_ids": ids[:50].tolist(), "scored_as": "wrong, with certainty"}
