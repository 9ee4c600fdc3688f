"""Candidate-vs-baseline agreement, paired by sample_id.

A quantised or converted model can keep its AUC while changing individual decisions;
these numbers show how often and by how much the two runs differ on the same samples.
"""

from __future__ import annotations

import numpy as np

TASKS = ("multiclass", "multilabel")
_MAX_LISTED = 10


def agreement(base_probs, cand_probs, task: str, threshold: float = 0.5, positive: int = 1) -> dict:
    """Agreement of candidate with baseline probabilities, rows already aligned.

    ``top1``: multiclass = fraction of samples with the same decision (argmax; binary:
    the ``positive`` class's probability ``>= threshold``); multilabel = fraction of
    per-label decisions (``prob >= threshold``, one threshold or one per label) that agree.
    Also ``max_abs_prob_diff`` and ``mean_abs_prob_diff`` (over all entries) and
    ``n`` (number of rows).  A row that is NaN/inf in either run disagrees, with a
    difference of 1 in every entry (``n_nonfinite`` counts them): never left out.
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    b = np.asarray(base_probs, dtype=np.float64)
    c = np.asarray(cand_probs, dtype=np.float64)
    if b.ndim != 2 or b.shape != c.shape:
        raise ValueError(
            f"baseline and candidate probs must be 2-D with equal shapes, got "
            f"{b.shape} and {c.shape} (pair rows with pair_by_id first)"
        )
    if b.shape[0] == 0:
        raise ValueError(f"no samples to compare: shape {b.shape}")
    bad = ~(np.isfinite(b).all(axis=1) & np.isfinite(c).all(axis=1))
    b, c = np.where(bad[:, None], 0.0, b), np.where(bad[:, None], 0.0, c)
    if task == "multiclass":
        from medray.metrics.classification import binary_decisions

        same = binary_decisions(b, threshold, positive) == binary_decisions(c, threshold, positive)
        same[bad] = False
    else:
        t = np.asarray(threshold, dtype=np.float64)
        same = (b >= t) == (c >= t)
        same[bad] = False
    diff = np.abs(b - c)
    diff[bad] = 1.0
    return {
        "top1": float(same.mean()),
        "max_abs_prob_diff": float(diff.max()),
        "mean_abs_prob_diff": float(diff.mean()),
        "n": int(b.shape[0]),
        "n_nonfinite": int(bad.sum()),
    }


def _as_list(ids) -> list:
    # .tolist() turns numpy/pandas scalars into Python ones so messages read cleanly.
    return ids.tolist() if hasattr(ids, "tolist") else list(ids)


def _duplicates(ids: list) -> list:
    seen: set = set()
    dup: dict = {}  # dict keeps first-seen order for a stable message
    for i in ids:
        if i in seen:
            dup[i] = None
        seen.add(i)
    return list(dup)


def pair_by_id(base_ids, cand_ids) -> tuple[np.ndarray, np.ndarray]:
    """Index arrays ``(bi, ci)`` with ``base_ids[bi] == cand_ids[ci]``, in
    baseline order.

    Raises ValueError naming (up to 10) duplicate ids, or ids present in one run only:
    both runs must have seen exactly the same samples.
    """
    base = _as_list(base_ids)
    cand = _as_list(cand_ids)
    for name, ids in (("baseline", base), ("candidate", cand)):
        dup = _duplicates(ids)
        if dup:
            raise ValueError(
                f"duplicate sample_id in {name}: {len(dup)} id(s) repeated, "
                f"first {min(len(dup), _MAX_LISTED)}: {dup[:_MAX_LISTED]}"
            )
    cand_pos = {sid: j for j, sid in enumerate(cand)}
    base_set = set(base)
    only_base = [s for s in base if s not in cand_pos]
    only_cand = [s for s in cand if s not in base_set]
    if only_base or only_cand:
        parts = []
        if only_base:
            parts.append(
                f"{len(only_base)} id(s) only in baseline, first "
                f"{min(len(only_base), _MAX_LISTED)}: {only_base[:_MAX_LISTED]}"
            )
        if only_cand:
            parts.append(
                f"{len(only_cand)} id(s) only in candidate, first "
                f"{min(len(only_cand), _MAX_LISTED)}: {only_cand[:_MAX_LISTED]}"
            )
        raise ValueError(
            "baseline and candidate saw different samples: " + "; ".join(parts)
        )
    bi = np.arange(len(base), dtype=np.int64)
    ci = np.fromiter((cand_pos[s] for s in base), dtype=np.int64, count=len(base))
    return bi, ci
