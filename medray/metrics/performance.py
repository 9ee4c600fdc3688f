"""Latency, speed-up and throughput summaries.

Per-sample latency is batch compute time divided by batch size, so runs with different
batch sizes are comparable; percentiles are taken over batches (one value per batch).
"""

from __future__ import annotations

import math

import numpy as np


def latency_summary(batch_ms, batch_sizes) -> dict:
    """Summarise timed batches.

    Returns ``per_sample_p50``/``per_sample_p95`` (numpy linear percentiles of
    ms/size over batches), ``per_sample_mean`` (total ms / total samples, so large
    batches weigh more) and ``n_batches``.
    """
    ms = np.asarray(batch_ms, dtype=np.float64).ravel()
    sizes = np.asarray(batch_sizes, dtype=np.float64).ravel()
    if ms.shape != sizes.shape:
        raise ValueError(
            f"batch_ms and batch_sizes must have the same length, got {ms.shape[0]} "
            f"and {sizes.shape[0]}"
        )
    if ms.size == 0:
        raise ValueError("no timed batches (were all batches warm-up?)")
    if not np.isfinite(ms).all() or (ms < 0).any():
        raise ValueError(f"batch_ms must be finite and >= 0, got {ms[:10].tolist()}...")
    if not np.isfinite(sizes).all() or (sizes <= 0).any():
        raise ValueError(f"batch_sizes must be > 0, got {sizes[:10].tolist()}...")
    per = ms / sizes
    return {
        "per_sample_p50": float(np.percentile(per, 50)),
        "per_sample_p95": float(np.percentile(per, 95)),
        "per_sample_mean": float(ms.sum() / sizes.sum()),
        "n_batches": int(ms.size),
    }


def _positive(x) -> bool:
    return x is not None and math.isfinite(x) and x > 0


def speedup(baseline_ms, candidate_ms) -> dict:
    """Speed-up of candidate over baseline from per-sample latencies.

    ``latency_reduction_pct = 100 * (b - c) / b`` and ``factor = b / c``; both are
    None when either latency is missing, zero, negative or not finite (a zero latency
    is a measurement failure, not an infinite speed-up).
    """
    if not (_positive(baseline_ms) and _positive(candidate_ms)):
        return {"latency_reduction_pct": None, "factor": None}
    b, c = float(baseline_ms), float(candidate_ms)
    return {"latency_reduction_pct": 100.0 * (b - c) / b, "factor": b / c}


def throughput(n_samples, wall_s) -> float | None:
    """End-to-end samples per second; None when wall time is missing or not positive."""
    if n_samples is None or not _positive(wall_s):
        return None
    return float(n_samples) / float(wall_s)
