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


def busy_time(starts, ends) -> float:
    """Length of the union of the intervals ``[start, end]`` (time at least one was running)."""
    iv = sorted(zip(np.asarray(starts, dtype=np.float64), np.asarray(ends, dtype=np.float64)))
    total, cur_s, cur_e = 0.0, None, None
    for a, b in iv:
        if cur_e is None or a > cur_e:
            if cur_e is not None:
                total += cur_e - cur_s
            cur_s, cur_e = a, b
        else:
            cur_e = max(cur_e, b)
    if cur_e is not None:
        total += cur_e - cur_s
    return float(total)


def _warm_reads(t_read0, t_read, read_pid) -> tuple[np.ndarray, np.ndarray, int]:
    """Read intervals without each read worker's first block (a new worker process imports
    the readers' libraries then: a one-time cost, not the stage's rate); all of them when
    nothing would be left.  Returns starts, ends and the rows they read."""
    blocks: dict[tuple, int] = {}
    for a, b, pid in zip(t_read0, t_read, read_pid):
        blocks[(pid, a, b)] = blocks.get((pid, a, b), 0) + 1
    first = {}
    for pid, a, b in sorted(blocks, key=lambda k: k[1]):
        first.setdefault(pid, (pid, a, b))
    warm = [k for k in blocks if k not in set(first.values())] or list(blocks)
    return (np.array([k[1] for k in warm]), np.array([k[2] for k in warm]), sum(blocks[k] for k in warm))


def pipeline_rates(t_read0, t_read, t_start, t_end, batch_uid, t_submit: float, t_done: float, read_pid=None) -> dict:
    """The two throughputs of one run, from per-sample clocks (seconds, wall clock).

    ``t_read0``/``t_read``: when the sample's read task started / finished (``read_pid``:
    the process that read it); ``t_start`` / ``t_end``: its actor call; ``batch_uid``:
    ``"<actor>:<n>"``; ``t_submit``: when the first sample was handed to Ray Data;
    ``t_done``: when the driver got the last result.

    * ``throughput_sps`` — end to end, what a test set of any size sees once the pipeline
      runs: the slowest of the read stage (samples / time some read task was running), the
      inference stage (samples / time some actor was predicting) and the driver's clock
      from the first predict call to the last result (which also catches a pipeline that
      stalls).  A small set is read while the actors start and predicted in one go, a large
      one streams: measured on each stage's own running time, both give the same rate.
    * ``inference_sps`` — inference-stage capacity: samples / time the actors spend in
      their predict calls, summed over actors (what the backend takes if fed).
    * ``startup_s`` — from handing the first sample to the first predict call (actor
      start, model load, warm-up); ``wall_s`` — to the last result.
    """
    t_read0 = np.asarray(t_read0, dtype=np.float64)
    t_read = np.asarray(t_read, dtype=np.float64)
    t_start = np.asarray(t_start, dtype=np.float64)
    t_end = np.asarray(t_end, dtype=np.float64)
    uids = np.asarray(batch_uid).astype(str)
    n = t_start.size
    out = {"throughput_sps": None, "inference_sps": None, "startup_s": None, "wall_s": max(0.0, t_done - t_submit)}
    if n == 0:
        return out
    ready = float(t_start.min())
    out["startup_s"] = max(0.0, ready - t_submit)
    r0, r1, n_read = _warm_reads(t_read0, t_read, np.zeros(n) if read_pid is None else np.asarray(read_pid))
    rates = [k / t for k, t in ((n_read, busy_time(r0, r1)), (n, busy_time(t_start, t_end)), (n, t_done - ready)) if t > 0]
    out["throughput_sps"] = float(min(rates)) if rates else None
    # Capacity: each actor's samples over its busy time (one interval per batch), summed.
    busy: dict[str, float] = {}
    count: dict[str, int] = {}
    seen: set[str] = set()
    for uid, a, b in zip(uids, t_start, t_end):
        actor = uid.rsplit(":", 1)[0]
        count[actor] = count.get(actor, 0) + 1
        if uid not in seen:
            seen.add(uid)
            busy[actor] = busy.get(actor, 0.0) + max(0.0, float(b - a))
    cap = sum(count[a] / busy[a] for a in count if busy.get(a, 0.0) > 0)
    out["inference_sps"] = float(cap) if cap > 0 else None
    return out
