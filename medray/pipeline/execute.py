"""Run specs on the connected Ray cluster: read → predict → collect, for every task.

Owned here, once for every task: pool planning, artifact shipping, resume parts, the
data.on_error policy on the driver, bounded actor restarts, exactly-once accounting of
samples (retried duplicates merged only when identical), the precision each actor
executes, and the steady-state throughput.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time
from dataclasses import replace

import numpy as np
import pandas as pd

from medray.config import EvalConfig
from medray.data.policy import check_same_skipped, runnable, split_skipped
from medray.errors import BadSampleError
from medray.pipeline.cluster import cluster_shape, wait_for_gpus
from medray.pipeline.faults import dedupe_retried, explain_failure, raise_first_bad, release
from medray.pipeline.resources import plan_pool
from medray.pipeline.resume import ResumeState
from medray.pipeline.stages import Stage, map_stage
from medray.results import PoolPlan, RunResult
from medray.specs import RunSpec
from medray.tasks.base import Task

log = logging.getLogger("medray.execute")


def read_dataset(task: Task, samples: pd.DataFrame, spec: RunSpec, actors: int = 1, block_size: int | None = None,
                 cache_dir: str | None = None, plan: PoolPlan | None = None):
    """Ray Dataset of read samples: one read task per block (the task's blocks and reader),
    each asking ``plan.read_cpus``, at most ``plan.read_tasks`` at once (default: 1 CPU each).

    With ``cache_dir`` the read stage goes through the decoded cache (:mod:`medray.data.cache`):
    ``samples`` must carry its columns (:meth:`~medray.data.cache.DecodedCache.lookup`).
    """
    import ray.data

    from medray.data import cache as decoded

    fn, kwargs = task.reader(spec)
    blocks = task.read_blocks(samples, spec, task.block_size(len(samples), spec, actors, block_size))
    if cache_dir is not None:
        where = samples.set_index("sample_id")[list(decoded.COLUMNS)]
        blocks = [b.join(where, on="sample_id") for b in blocks]
        fn = decoded.cached(fn, cache_dir)
    cpus, tasks = (plan.read_cpus, plan.read_tasks) if plan is not None else (1.0, None)
    return map_stage(ray.data.from_pandas(blocks), Stage(_stamped(fn), fn_kwargs=kwargs, num_cpus=cpus, tasks=tasks))


def read_cache(cfg: EvalConfig, task: Task, spec: RunSpec):
    """The decoded cache of this run's reader and settings, or None (data.cache)."""
    from medray.data.cache import DecodedCache, cache_parts

    if cfg.data.cache == "off" or (cfg.data.cache == "auto" and not task.cache_by_default):
        return None
    fn, kwargs = task.reader(spec)
    cache = DecodedCache(cfg.cache_dir, cache_parts(fn, kwargs))
    cache.prepare()
    return cache


def _stamped(fn):
    """``fn`` that also records when each row's read started and finished (``t_read0``,
    ``t_read``, wall clock): the end-to-end throughput needs the read stage's running time."""

    @functools.wraps(fn)  # the operator keeps the reader's name in logs and the dashboard
    def read(batch, **kwargs):
        t0 = time.time()
        out = fn(batch, **kwargs)
        n = len(out["sample_id"])
        out["t_read0"], out["t_read"] = np.full(n, t0), np.full(n, time.time())
        out["read_pid"] = np.full(n, os.getpid(), dtype=np.int64)
        return out

    return read


def predict(ds, spec: RunSpec, plan: PoolPlan, task: Task, max_retries: int = 3, block: int | None = None):
    """Append the Predictor actor pool (``plan``) to a dataset of read samples; each actor
    call takes one read ``block`` (default: one backend batch)."""
    from medray.pipeline.predictor import Predictor

    return map_stage(ds, Stage(
        Predictor,
        batch_size=task.actor_batch(spec, block or spec.batch_size),
        actors=plan.actors,
        constructor_kwargs={"spec": spec, "task": task},
        num_cpus=plan.num_cpus,
        num_gpus=plan.num_gpus,
        max_retries=max_retries,
    ))


def collect(ds, on_batch=None) -> tuple[pd.DataFrame, dict]:
    """Stream the results to the driver.

    Returns the per-sample rows (a multi-dimensional column becomes one array per row)
    and the driver's clock: ``t_submit`` (the first sample handed to Ray Data: the
    dataset is lazy, iterating it starts the work) and ``t_done`` (the last result in).
    ``on_batch(batch)`` sees every batch as it arrives (fail policy, resume parts, progress).
    """
    parts = []
    t_submit = time.time()
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=2):
        batch = dict(batch)
        if on_batch is not None:
            on_batch(batch)
        parts.append(pd.DataFrame({k: list(v) if np.ndim(v) > 1 else v for k, v in batch.items()}))
    clock = {"t_submit": t_submit, "t_done": time.time()}
    return (pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()), clock


def rates(df: pd.DataFrame, clock: dict) -> dict:
    """End-to-end throughput, inference capacity, start-up and wall time of predicted rows
    (:func:`medray.metrics.performance.pipeline_rates`)."""
    from medray.metrics.performance import pipeline_rates

    if df.empty:
        return pipeline_rates([], [], [], [], [], clock["t_submit"], clock["t_done"])
    return pipeline_rates(df["t_read0"], df["t_read"], df["t_start"], df["t_end"], df["batch_uid"], clock["t_submit"],
                          clock["t_done"], df["read_pid"])


def execute(
    cfg: EvalConfig,
    task: Task,
    samples: pd.DataFrame,
    specs: list[RunSpec],
    state: ResumeState | None = None,
    pool: PoolPlan | None = None,
    progress=None,
) -> list[RunResult]:
    """Run every spec on the connected Ray cluster, one after the other.

    Rows of ``samples`` with a ``problem`` (the task's screen) are skipped without
    reading.  With ``state``, every received batch is written as a resume part and
    samples already in parts are not evaluated again.  ``pool`` replaces the pool sized
    on the whole cluster (a sweep trial sizes it to its placement group);
    ``progress(batch)`` sees every received batch (a sweep trial's intermediate reports).
    """
    import ray

    from medray.pipeline.shipping import ship, should_ship

    if cfg.ray.min_gpus:
        wait_for_gpus(cfg.ray.min_gpus, cfg.ray.scale_timeout_s)
    cpus, gpus, cores = cluster_shape()
    to_run, pre_skipped = runnable(samples)
    alive = sum(1 for n in ray.nodes() if n.get("Alive"))
    shipping = should_ship(cfg.ray.ship_artifacts, cfg.ray.address, alive)
    shipped: dict = {}
    results = []
    for spec in specs:
        done = state.load(spec.name) if state is not None else pd.DataFrame()
        todo = to_run[~to_run["sample_id"].isin(set(done["sample_id"]))] if len(done) else to_run
        new, clock = pd.DataFrame(), {"t_submit": 0.0, "t_done": 0.0}
        cache = read_cache(cfg, task, spec) if len(todo) else None
        cache_stats = None
        if cache is not None:
            todo, cache_stats = cache.lookup(todo)
            log.info("%s: decoded cache %d of %d hit, %d to decode (%s)", spec.name, cache_stats["hits"], len(todo),
                     cache_stats["misses"], cache.dir)
        # The split of the node's cores between decoding and inference, from what a sample costs
        # each, measured on the driver: only where the driver is that node (the embedded local
        # Ray). A sweep trial's pool is sized by the sweep; a cluster's nodes (or a client's
        # machine, or nodes an autoscaler adds later) may differ from the driver's.
        local = cfg.ray.address is None and alive == 1
        costs = _costs(task, spec, todo, cfg.cache_dir, cache) if pool is None and local else None
        plan = pool if pool is not None else plan_pool(
            device=spec.device,
            streams=spec.streams,
            cluster_cpus=cpus,
            cluster_gpus=gpus,
            node_cores=cores,
            reserve_cpus=cfg.ray.reserve_cpus_for_reading,
            threads=spec.backend.threads,
            costs=costs,
        )
        spec = replace(spec, threads=plan.threads)
        if shipping:  # actors on other nodes get the driver's files via the object store
            spec = ship(spec, shipped)
        log.info("%s (%s): %s, batch %d", spec.name, spec.role, plan.describe(), spec.batch_size)
        if len(todo):
            # Read tasks always mark bad rows; data.on_error=fail is applied here, on the
            # driver, where the error keeps its path and reason (see raise_first_bad).
            block = task.block_size(len(todo), spec, plan.actors, cfg.data.read_block_size,
                                    plan.costs["read_s"] if plan.costs else None)
            ds = predict(read_dataset(task, todo, spec, plan.actors, block, None if cache is None else str(cache.dir), plan),
                         spec, plan, task, cfg.ray.max_retries, block)
            bar = _progress_bar(spec.name, len(todo), task.unit)
            on_batch = _batch_hook(cfg.data.on_error, todo, state.writer(spec.name) if state is not None else None,
                                   progress, bar)
            failure = None
            try:
                new, clock = collect(ds, on_batch=on_batch)
                if bar is not None:
                    bar.close()
            except BadSampleError as e:
                failure = e
            except Exception as e:  # Ray's wrappers → the cause (OOM, dying worker, backend error)
                failure = explain_failure(spec.name, e, cfg.ray.max_retries)
            if failure is not None:
                # The failed execution's traceback holds its executor, whose actors keep their
                # CPUs/GPUs until collected: drop it so the next run (Tune, tests) gets them.
                ds = on_batch = None
                raise release(failure)
        if len(done):
            log.info("%s: %d %ss from the interrupted run, %d evaluated now", spec.name, len(done), task.unit, len(new))
        df = pd.concat([d for d in (done, new) if len(d)], ignore_index=True) if len(done) else new
        df, n_dup = dedupe_retried(spec.name, df, task.identity_columns)
        check_complete(spec.name, to_run["sample_id"], df)
        eff = [json.loads(s) for s in df.pop("effective_precision") if s] if len(df) else []
        df, skipped = split_skipped(df)
        # Sorted by id: the predictions file of a resumed or retried run equals a clean one's.
        df = df.sort_values("sample_id", kind="stable").reset_index(drop=True) if len(df) else df
        skipped = pd.concat([pre_skipped, skipped], ignore_index=True).sort_values("sample_id").reset_index(drop=True)
        # Rates of the samples predicted by this process, each counted once (a retried
        # batch's second copy is not work done twice); skipped rows are not work.
        fresh = df[df["sample_id"].isin(set(new["sample_id"]))] if len(new) and len(df) else df.iloc[:0]
        r = rates(fresh, clock)
        resumed = {"from_previous": int(len(done)), "processed": int(len(new))} if len(done) else None
        results.append(RunResult(spec, df, r["wall_s"], r["throughput_sps"] or 0.0, plan, summarise_effective(eff), skipped,
                                 resumed, n_dup, inference_sps=r["inference_sps"], startup_s=r["startup_s"],
                                 read_cache=cache_stats))
        log.info("%s: %d %ss in %.1fs (start-up %.1fs); %.2f/s end to end, inference capacity %.2f/s; %d skipped",
                 spec.name, len(df), task.unit, r["wall_s"], r["startup_s"] or 0.0, r["throughput_sps"] or 0.0,
                 r["inference_sps"] or 0.0, len(skipped))
    check_same_skipped({r.spec.name: r.skipped for r in results})
    return results


def _costs(task: Task, spec: RunSpec, todo: pd.DataFrame, cache_dir: str, cache):
    """:func:`medray.pipeline.costs.stage_costs`, or None: the fixed split, with a warning
    naming why when the probe could not measure them (e.g. a backend only the workers have)."""
    from medray.pipeline.costs import wanted

    if not wanted(task, spec, len(todo)):
        return None
    try:
        return _measure(task, spec, todo, cache_dir, None if cache is None else str(cache.dir))
    except Exception as e:
        e = getattr(e, "cause", None) or e  # a RayTaskError: what the probe raised
        log.warning("%s: could not measure what a sample costs on this node (%s: %s); the fixed CPU split is used",
                    spec.name, type(e).__name__, e)
        return None


def _measure(task: Task, spec: RunSpec, todo: pd.DataFrame, cache_dir: str, decoded_dir: str | None):
    """The probe in a Ray task on this node: it loads the model and decodes full-size
    images, which the driver (holding the run's results) should not keep in its memory
    (DenseNet121 OpenVINO INT8: +0.7 GiB of driver peak), and it is timed in the kind of
    process the actors are.  Asks for no CPU: nothing else runs yet."""
    import ray

    from medray.pipeline.costs import stage_costs

    probe = ray.remote(num_cpus=0, max_retries=0)(stage_costs).options(name="medray.measure_costs")
    return ray.get(probe.remote(task, spec, todo, cache_dir, decoded_dir))


def _batch_hook(on_error: str, todo: pd.DataFrame, writer, progress=None, bar=None):
    """What the driver does with each received batch: the fail policy, the resume part,
    the caller's ``progress`` and the console's bar."""
    paths = dict(zip(todo["sample_id"].astype(str), todo["path"].astype(str)))

    def hook(batch):
        if on_error == "fail":
            raise_first_bad(batch, paths)
        if writer is not None:
            writer(batch)
        if progress is not None:
            progress(batch)
        if bar is not None:
            bar.update(len(batch["sample_id"]))

    return hook


def _progress_bar(name: str, total: int, unit: str):
    """medray's bar (TTY) or periodic lines instead of Ray Data's, when the console is
    routed (:mod:`medray.console`); None otherwise (a sweep trial, a library caller)."""
    from medray import console

    if not console.progress_enabled():
        return None
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False
    return console.Progress(name, total, unit)


def check_complete(name: str, expected: pd.Series, df: pd.DataFrame) -> None:
    """Every evaluated sample exactly once — a silent loss would bias every metric."""
    got = df["sample_id"] if len(df) else pd.Series([], dtype=str)
    dup = got[got.duplicated()].unique()
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    if len(dup) or missing or extra:
        raise RuntimeError(
            f"{name}: pipeline output does not match the evaluated samples: "
            f"{len(missing)} missing {missing[:5]}, {len(dup)} duplicated {list(dup[:5])}, {len(extra)} unexpected"
        )


def summarise_effective(reports: list[dict]) -> dict:
    """One actor's report (they run the same artifact); flag if actors disagree."""
    if not reports:
        return {}
    first = dict(reports[0])
    if any(r.get("executed") != first.get("executed") for r in reports[1:]):
        first["warning"] = f"actors disagree on the executed precision: {[r.get('executed') for r in reports]}"
    first["actors"] = len(reports)
    return first
