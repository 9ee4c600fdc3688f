"""A model's outputs as scores: probabilities from logits, stacked per-sample rows, which
rows are finite, and the rule for the others.

A NaN/inf output (fp16 overflow, a broken conversion) is the worst possible answer, never a
missing one: :func:`worst_case` puts all the probability on a wrong outcome, so every
metric of the run counts the sample against it (accuracy, AUC — the sample ranks last —,
F1, calibration, subgroups) and baseline and candidate stay compared on the same samples.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from medray.specs import ModelSpec


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


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def op_norm(p: np.ndarray, thresholds) -> np.ndarray:
    """torchxrayvision's ``op_norm``: each label's operating threshold ``t`` maps to 0.5
    (``p < t``: ``p / 2t``; else ``1 - (1 - p) / 2(1 - t)``); 0.5 where ``t`` is None/NaN."""
    t = np.broadcast_to(np.asarray([np.nan if v is None else v for v in thresholds], dtype=np.float64), p.shape)
    out = np.full(p.shape, 0.5)
    ok = ~np.isnan(t)
    lo, hi = ok & (p < t), ok & ~(p < t)
    out[lo] = p[lo] / (2 * t[lo])
    out[hi] = 1.0 - (1.0 - p[hi]) / (2 * (1 - t[hi]))
    out[np.isnan(p)] = np.nan  # a NaN output stays a wrong answer (worst_case), never 0.5
    return out


def model_probabilities(logits: np.ndarray, model: ModelSpec) -> np.ndarray:
    """The dataset classes' probabilities from a model's raw outputs: its activation over
    *all* its outputs (xrv's op_norm, the format's softmax / sigmoid, else the task's),
    then the outputs matched to the classes by name, in the dataset's order.

    A multiclass dataset scored from a softmax over more outputs than it has classes gets
    the probabilities renormalised over its classes (given that the image is one of them);
    one output scores a binary dataset's positive class, as :func:`probabilities`."""
    if model.output_index is None and model.activation is None and model.op_threshs is None:
        return probabilities(logits, model.task, model.output, model.positive_index)
    z = logits.astype(np.float64)
    act = model.activation or ("sigmoid" if model.task == "multilabel" or z.shape[1] == 1 else "softmax")
    if model.op_threshs is not None:
        p = op_norm(sigmoid(z), model.op_threshs)
    elif model.output == "probs":
        p = z
    elif act == "sigmoid":
        p = sigmoid(z)
    else:
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
    if model.output_index is not None:
        p = p[:, model.output_index]
    if model.task == "multiclass" and p.shape[1] == 1:
        return probabilities(p, model.task, "probs", model.positive_index)
    if model.task == "multiclass" and act == "softmax" and p.shape[1] < z.shape[1]:
        p = p / p.sum(axis=1, keepdims=True)
    return p


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
