"""A model's outputs as scores: probabilities from logits, stacked per-sample rows, and
which rows are finite (a NaN/inf output is a wrong answer, never a missing one)."""

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


def true_outcome_probability(y: np.ndarray, probs: np.ndarray, task: str) -> np.ndarray:
    """Per sample, the probability the model gives the true outcome (multiclass: the true
    class's; multilabel: the mean over labels of p or 1 − p): a per-sample score where a
    metric like AUC has none."""
    y = np.asarray(y)
    if task == "multilabel":
        return np.mean(np.where(y == 1, probs, 1.0 - probs), axis=1)
    return probs[np.arange(len(y)), y.astype(int)]


def stacked_probs(df: pd.DataFrame) -> np.ndarray:
    return np.stack(df["probs"].to_numpy()).astype(np.float64)


def finite_rows(probs: np.ndarray) -> np.ndarray:
    """Rows whose probabilities are all finite (fp16 overflow gives NaN/inf rows)."""
    return np.isfinite(probs).all(axis=1)


def nonfinite_entry(df: pd.DataFrame, ok: np.ndarray) -> dict | None:
    """The samples whose outputs were NaN/inf, by id: evaluated, not scored."""
    if ok.all():
        return None
    ids = df["sample_id"].astype(str).to_numpy()[~ok]
    return {"n": int(ids.size), "sample_ids": ids[:50].tolist()}
