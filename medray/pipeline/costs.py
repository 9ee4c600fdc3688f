"""What one sample costs each stage on this node, measured at start-up (the CPU split).

Before a CPU run's pipeline starts, a Ray task on the node (``execute._measure``) reads a
few of the run's own samples, spread over the set, with the run's reader (decoded-cache
hits read back, misses decoded) and runs the actor's
``predict`` on them with the backend at one thread.  Those two costs size the split of the
node's cores between the read tasks and the backend (:func:`medray.pipeline.resources.plan_pool`).

The backend's cost is kept in ``cache_dir/costs`` (keyed by the model or artifact, backend
options, precision, batch, TTA, the CPU, the library versions and medray's own source), so
the next run of the same configuration on this kind of machine does not load the model to
time it again.  Decoded-cache misses are timed decoding only: writing their shard
(a buffer copy and Snappy) is small beside decoding and left out.
Runs of fewer than :data:`MIN_SAMPLES` samples, GPU runs and tasks that opt out
(:attr:`medray.tasks.base.Task.cost_probe`) keep the fixed split.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time
import uuid
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pandas as pd

from medray.results import StageCosts
from medray.specs import RunSpec
from medray.tasks.base import Task

log = logging.getLogger("medray.costs")

# Samples read (after one warm-up sample) to time the read stage.
PROBE_SAMPLES = 8
# Below this a run is a few read blocks and finishes in about the time a probe takes.
MIN_SAMPLES = 512
# Time the backend is given per probe call (seconds of one core): big models are timed on a
# smaller batch than the run's rather than for minutes on the driver.
PROBE_CALL_S = 0.5


def wanted(task: Task, spec: RunSpec, n: int) -> bool:
    """Whether a run of ``n`` samples under ``spec`` is split by measured costs (a CPU run of
    at least :data:`MIN_SAMPLES` of a task with a probe); the others keep the fixed split."""
    return spec.device == "cpu" and task.cost_probe and n >= MIN_SAMPLES


def stage_costs(task: Task, spec: RunSpec, todo: pd.DataFrame, cache_dir: str, decoded_dir: str | None = None
                ) -> StageCosts | None:
    """The read and inference cost of one sample of ``todo`` under ``spec``; None when the
    run keeps the fixed split (see :func:`wanted`).  Raises when nothing could be measured.

    ``decoded_dir``: the decoded cache's folder when the run reads through it (``todo``
    then carries its columns): hits are timed reading the cache, misses decoding.
    """
    if not wanted(task, spec, len(todo)):
        return None
    read_s, batch = read_cost(task, spec, todo, decoded_dir)
    if batch is None:
        raise ValueError(f"none of the {PROBE_SAMPLES + 1} samples read to measure it was readable")
    return StageCosts(read_s=read_s, infer_s=backend_cost(task, spec, batch, cache_dir))


def read_cost(task: Task, spec: RunSpec, todo: pd.DataFrame, decoded_dir: str | None = None
              ) -> tuple[float, dict | None]:
    """Core-seconds to read one sample (a mix of cache hits and misses in ``todo``'s
    proportion) and the readable rows read (None if none was)."""
    from medray.data import cache as decoded

    fn, kwargs = task.reader(spec)
    hit = (todo[decoded.SHARD] != "").to_numpy() if decoded_dir is not None else np.zeros(len(todo), dtype=bool)
    costs, rows = [], None
    shard = todo[decoded.SHARD].to_numpy() if decoded_dir is not None else None
    for mask, reader in ((~hit, fn), (hit, decoded.cached(fn, decoded_dir) if hit.any() else None)):
        if not mask.any():
            continue
        if reader is fn:  # spread over the set: sizes (and classes, in folder order) vary along it
            candidates = todo[mask]
            part = candidates.iloc[np.unique(np.linspace(0, len(candidates) - 1, PROBE_SAMPLES + 1).round().astype(int))]
        else:  # a read task reads whole shards: so does the probe (a few rows of one would cost the shard)
            first = shard[np.flatnonzero(mask)[0]]
            part = todo[mask & (shard == first)]
        block_df = task.read_blocks(part, spec, len(part))[0]
        if reader is not fn:
            block_df = block_df.join(part.set_index("sample_id")[list(decoded.COLUMNS)], on="sample_id")
        block = {c: block_df[c].to_numpy() for c in block_df.columns}
        first = {k: v[:1] for k, v in block.items()}
        reader(first, **kwargs)  # imports, decoder set-up: not the per-sample cost
        rest = {k: v[1:] for k, v in block.items()} if len(part) > 1 else first
        # Wall time on the idle driver: the read path's own threads (Arrow's decompression of
        # cache shards) and its I/O count, as they do in the read tasks.  The better of two
        # passes: a few samples, so one scheduler hiccup would be a large share of one pass.
        passes = []
        for _ in range(2):
            t0 = time.perf_counter()
            out = reader(rest, **kwargs)
            passes.append((time.perf_counter() - t0) / len(rest["sample_id"]))
        costs.append((mask.mean(), min(passes)))
        ok = np.array([not r for r in out["skipped_reason"]], dtype=bool)
        if rows is None and ok.any():
            rows = {k: np.asarray(v)[ok] for k, v in out.items() if k != "skipped_reason"}
    return float(sum(share * c for share, c in costs)), rows


def backend_cost(task: Task, spec: RunSpec, rows: dict, cache_dir: str) -> float:
    """Core-seconds of the actor's ``predict`` per sample at one thread (normalisation, TTA
    views and the backend), timed on ``rows`` tiled to a batch; cached in ``cache_dir/costs``."""
    from medray.io import cache_key

    parts = {
        "task": task.name, "backend": asdict(spec.backend), "precision": spec.precision, "tta": spec.tta,
        "batch": spec.batch_size, "model": asdict(spec.model),
        "artifact": (spec.artifact or {}).get("key"), "cpu": _cpu(), "versions": _versions(), "code": _code(),
    }
    path = Path(cache_dir) / "costs" / f"{cache_key(parts)[:16]}.json"
    try:
        cached = float(json.loads(path.read_text())["infer_s"])
        if np.isfinite(cached) and cached > 0:
            return cached
        log.warning("%s: %s holds no usable cost (%r); measuring again", spec.name, path, cached)
    except (OSError, ValueError, KeyError, TypeError):
        pass
    infer_s = _time_backend(task, spec, rows)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        tmp.write_text(json.dumps({"infer_s": infer_s, **parts}, indent=1, default=str))
        os.replace(tmp, path)
    except OSError as e:  # a read-only cache only costs the next run another probe
        log.warning("could not record the measured cost in %s (%s)", path, e)
    return infer_s


def _time_backend(task: Task, spec: RunSpec, rows: dict) -> float:
    import torch

    from medray.backends import get_backend

    one = replace(spec, threads=1, warmup_batches=0)
    n_rows = len(rows["sample_id"])

    def timed(m: int) -> float:
        idx = np.arange(m) % n_rows
        batch = {k: v[idx] for k, v in rows.items()}
        t0 = time.process_time()
        task.predict(backend, one, batch)
        return (time.process_time() - t0) / m

    threads = torch.get_num_threads()  # the torch backend and task.open set the process's threads
    try:
        with get_backend(spec.backend.name)(one) as backend:
            task.open(one)
            timed(1)  # warm-up: the first call pays for allocation and kernel selection (2x here)
            first = timed(1)  # one sample alone: an upper bound of its share of a batch
            size = task.split_batch(spec) or n_rows
            size = size if first * size <= 2 * PROBE_CALL_S else max(1, int(PROBE_CALL_S / first))
            timed(size)  # the batch shape's own warm-up
            if size * first > PROBE_CALL_S:
                return timed(size)
            return min(timed(size) for _ in range(2))
    finally:
        torch.set_num_threads(threads)


def _cpu() -> str:
    from medray.machine import machine

    m = machine(versions=False)
    return f"{m['cpu']}|{','.join(m['cpu_flags'])}"


@functools.cache
def _code() -> str:
    """A digest of medray's own source: a change to predict, normalisation or a backend's
    session options is a new measurement without anyone remembering to bump a version."""
    import hashlib

    import medray

    h = hashlib.sha256()
    for f in sorted(Path(medray.__file__).parent.rglob("*.py")):
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def _versions() -> dict:
    """Installed versions of the decoders and every backend's libraries (by distribution,
    read from package metadata: nothing is imported)."""
    from importlib.metadata import PackageNotFoundError, packages_distributions, version

    from medray.backends import library_modules

    dists = packages_distributions()
    out = {}
    for module in ["numpy", "PIL", *library_modules()]:
        for name in dists.get(module, [module]):
            try:
                out[name] = version(name)
            except PackageNotFoundError:
                out[name] = None
    return out
