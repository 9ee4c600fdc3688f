"""One evaluation: baseline and candidate over the same samples, exact metrics, report.

``run(cfg)`` is what ``jobs/evaluate.py`` calls with a validated :class:`EvalConfig`.
Everything that can fail on the config or the inputs (dataset, checkpoint, artifacts)
happens before Ray starts.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd

from medray import io as medray_io
from medray.backends import get_backend
from medray.backends.artifacts import ArtifactCache
from medray.backends.config import BackendConfig
from medray.config import ConfigError, EvalConfig, as_dict
from medray.data.sources import calibration_samples, load_table, select_samples
from medray.data.table import SampleTable
from medray.monitoring import step
from medray.pipeline import ray_remote_args_accepted
from medray.pipeline.faults import (
    BadSampleError,
    apply_policy,
    check_same_skipped,
    dedupe_retried,
    explain_failure,
    raise_first_bad,
    release,
    runnable,
    split_skipped,
)
from medray.pipeline.resources import PoolPlan, plan_pool
from medray.pipeline.resume import ResumeState
from medray.specs import ModelSpec, RunSpec

log = logging.getLogger("medray.evaluate")


@dataclass
class RunResult:
    """Per-sample outputs of one run plus what the driver measured."""

    spec: RunSpec
    predictions: pd.DataFrame
    wall_s: float
    throughput_sps: float
    pool: PoolPlan
    effective_precision: dict
    # Samples that could not be read (data.on_error=skip): sample_id, reason.
    skipped: pd.DataFrame | None = None
    # {"from_previous": n, "processed": n} when resume=true found finished samples.
    resumed: dict | None = None
    # Second copies of samples a retried batch delivered again (identical, dropped).
    n_deduplicated: int = 0


# --------------------------------------------------------------------------- driver prep


def build_specs(cfg: EvalConfig, model: ModelSpec) -> list[RunSpec]:
    """The baseline (if any) then the candidate; one spec if they are the same run."""
    specs = []
    pairs: list[tuple[str, BackendConfig, str]] = []
    base = cfg.baseline_backend()
    if base is not None:
        pairs.append(("baseline", base[0], base[1]))
    cand_name = cfg.run_name
    if base is None or f"{base[0].name}-{base[1]}" != cand_name:
        pairs.append(("candidate", cfg.backend, cfg.precision))
    for role, backend, precision in pairs:
        specs.append(
            RunSpec(
                name=f"{backend.name}-{precision}",
                role=role,
                backend=backend,
                precision=precision,
                device=cfg.device,
                batch_size=cfg.batch_size,
                streams=cfg.streams,
                model=model,
                warmup_batches=cfg.warmup_batches,
                tta=cfg.tta,
            )
        )
    return specs


def prepare(cfg: EvalConfig) -> tuple[SampleTable, pd.DataFrame, list[RunSpec]]:
    """Dataset, evaluated samples, and run specs with their artifacts built (no Ray)."""
    from medray.models.resolve import resolve_model

    table = load_table(cfg.data, cfg.data_root)
    samples = select_samples(table, cfg.data.split, cfg.data.limit, cfg.data.seed)
    if cfg.data.check_patient_overlap:  # a patient in both splits would leak into calibration
        from medray.data.sources import check_patient_overlap, resolve_calibration_split

        cal_split = resolve_calibration_split(table, cfg.calibration.split, cfg.data.split)
        check_patient_overlap(table, cfg.data.split, cal_split)
    # Missing files / unknown labels: fail now (data.on_error=fail) or mark them skipped.
    samples = apply_policy(samples, cfg.data.on_error)
    log.info("dataset %s: %d %s samples evaluated (%s)", table.name, len(samples), cfg.data.split, table.task)
    # Long steps outside Ray Data (demo training, exports, calibration, engine builds)
    # log their start, a heartbeat every 30 s and their end.
    with step("model: resolve checkpoint (trains the demo model if not cached)", log):
        model = resolve_model(cfg, table)
    specs = build_specs(cfg, model)
    cache = ArtifactCache(cfg.cache_dir)
    # quantization: options of INT8 builds that are not a backend's own (NNCF max_drop).
    context: dict[str, Any] = {"table": table, "evaluated": samples, "quantization": cfg.quantization}
    if any(s.precision == "int8" for s in specs):
        context["calibration"] = calibration_samples(
            table, cfg.calibration.split, cfg.calibration.num_samples, cfg.calibration.seed, samples
        )
    for spec in specs:
        with step(f"{spec.name}: prepare artifact", log):
            spec.artifact = get_backend(spec.backend.name).prepare(spec, cache, context)
    return table, samples, specs


# --------------------------------------------------------------------------- Ray


def start_ray(cfg: EvalConfig) -> bool:
    """Connect to ``ray.address`` or start an embedded local Ray; True if we started it."""
    import ray

    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"log_to_driver": True}
    if cfg.ray.address is None:
        kwargs.update(num_cpus=cfg.ray.num_cpus, num_gpus=cfg.ray.num_gpus)
        if cfg.ray.include_dashboard is not None:
            kwargs["include_dashboard"] = cfg.ray.include_dashboard
    else:
        kwargs["address"] = cfg.ray.address
    ray.init(**kwargs)
    return True


def local_gpu_count() -> int:
    """GPUs an embedded Ray would see (CUDA_VISIBLE_DEVICES respected)."""
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:
        return 0


def preflight(cfg: EvalConfig) -> None:
    """Fail before any work when the embedded Ray could not give the device asked for."""
    if cfg.ray.address is None and cfg.ray.num_gpus:
        have = local_gpu_count()
        if cfg.ray.num_gpus > have:
            raise ConfigError(
                f"ray.num_gpus={cfg.ray.num_gpus}: this machine shows {have} GPU(s) to CUDA, and an embedded Ray "
                f"must not advertise GPUs it does not have; use ray.num_gpus<={have} or null"
            )
    if cfg.ray.address is None and cfg.ray.num_cpus is not None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        if cfg.ray.num_cpus > cores:
            raise ConfigError(
                f"ray.num_cpus={cfg.ray.num_cpus}: this machine has {cores} CPU cores; advertising more would "
                f"oversubscribe them (threads are sized from Ray's count); use ray.num_cpus<={cores} or null"
            )
    if cfg.device == "cuda" and cfg.ray.address is None:
        gpus = cfg.ray.num_gpus if cfg.ray.num_gpus is not None else local_gpu_count()
        if gpus < 1:
            raise ConfigError(
                "device=cuda: the embedded local Ray would have no GPU (this machine shows none to "
                f"CUDA; ray.num_gpus is not set); {_gpu_fix(cfg)}"
            )


def _gpu_fix(cfg: EvalConfig) -> str:
    if cfg.backend.SUPPORTED.keys() == {"cuda"}:  # trt: there is no CPU to fall back to
        return f"backend={cfg.backend.name} runs only on NVIDIA GPUs: run on a GPU machine, or ray.address=<cluster with GPUs>"
    return "run with device=cpu, or ray.address=<cluster with GPUs>"


def require_cluster_gpu(cfg: EvalConfig) -> None:
    """device=cuda on a connected cluster: fail before any artifact is built if Ray's
    cluster resources list no GPU (a remote cluster's GPUs are known only once connected)."""
    import ray

    res = ray.cluster_resources()
    if cfg.device == "cuda" and res.get("GPU", 0) < 1:
        raise ConfigError(
            f"device=cuda: the Ray cluster has no GPU (resources: {res.get('CPU', 0):g} CPU, "
            f"{res.get('GPU', 0):g} GPU); {_gpu_fix(cfg)}"
        )


def wait_for_gpus(n: int, timeout_s: float, poll_s: float = 5.0) -> None:
    """Ask the autoscaler for ``n`` GPUs (``ray.min_gpus``) and wait until the cluster has
    them: the actor pool is sized on the GPUs present when a run starts, so GPU worker
    nodes that scale from zero must be up first."""
    import ray
    from ray.autoscaler.sdk import request_resources

    have = float(ray.cluster_resources().get("GPU", 0))
    if have >= n:
        return
    request_resources(bundles=[{"GPU": 1}] * n)
    t0 = time.perf_counter()
    with step(f"ray.min_gpus={n}: waiting for the autoscaler (cluster has {have:g} GPU)", log):
        while (have := float(ray.cluster_resources().get("GPU", 0))) < n:
            if time.perf_counter() - t0 > timeout_s:
                raise RuntimeError(
                    f"ray.min_gpus={n}: the cluster has {have:g} GPU(s) after {timeout_s:g}s; check `ray status` "
                    "(instance limits, spot capacity, max_workers in cluster.yaml) or raise ray.scale_timeout_s"
                )
            time.sleep(poll_s)


def cluster_shape() -> tuple[float, float, int]:
    """(CPUs, GPUs, cores of the smallest alive node) of the connected cluster."""
    import ray

    res = ray.cluster_resources()
    cores = [int(n["Resources"].get("CPU", 0)) for n in ray.nodes() if n.get("Alive")]
    return float(res.get("CPU", 0)), float(res.get("GPU", 0)), max(1, min(cores or [os.cpu_count() or 1]))


def read_dataset(samples: pd.DataFrame, size: int, block_size: int, on_error: str = "fail"):
    """Ray Dataset of decoded uint8 images: one decode task per block of samples."""
    import ray.data

    from medray.pipeline.predictor import decode_batch

    blocks = [samples.iloc[i : i + block_size][["sample_id", "path"]] for i in range(0, len(samples), block_size)]
    with ray_remote_args_accepted():
        return ray.data.from_pandas(blocks).map_batches(
            decode_batch,
            fn_kwargs={"size": size, "on_error": on_error},
            batch_format="numpy",
            batch_size=None,
            # A ray_remote_args_fn keeps Ray Data from fusing the decode into the actor: fused,
            # each actor would decode then infer serially instead of overlapping the two.
            ray_remote_args_fn=_decode_task_args,
        )


def _decode_task_args() -> dict:
    return {"num_cpus": 1}


def predict(ds, spec: RunSpec, plan: PoolPlan, max_retries: int = 3):
    """Append the Predictor actor pool to a dataset of ``sample_id`` + ``image`` rows.

    A dead actor is restarted and its batch retried at most ``max_retries`` times (Ray
    Data's default is forever: a backend that crashes every time would hang the run).
    """
    import ray.data

    from medray.pipeline.predictor import Predictor

    with ray_remote_args_accepted():
        return ds.map_batches(
            Predictor,
            fn_constructor_kwargs={"spec": spec},
            compute=ray.data.ActorPoolStrategy(size=plan.actors),
            batch_size=spec.batch_size,
            batch_format="numpy",
            num_cpus=plan.num_cpus,
            num_gpus=plan.num_gpus or None,
            max_restarts=max_retries,
            max_task_retries=max_retries,
            **_actor_placement(),
        )


def _actor_placement() -> dict:
    """Inside a placement group (a sweep trial reserves one for its actors), the pool
    goes into it: Ray Data's default SPREAD would start the actors outside, on CPUs the
    group does not hold.  Decode tasks stay outside (Ray Data's own tasks refuse to
    inherit a group), on the CPUs the sweep leaves free for them."""
    import ray

    pg = ray.util.get_current_placement_group() if ray.is_initialized() else None
    if pg is None:
        return {}
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    return {"scheduling_strategy": PlacementGroupSchedulingStrategy(pg, placement_group_capture_child_tasks=True)}


def collect(ds, on_batch=None) -> tuple[pd.DataFrame, float, float]:
    """Stream the results to the driver.

    Returns the per-sample rows, the wall time and the steady-state throughput
    (:func:`steady_throughput`).  ``on_batch(batch)`` sees every batch as it arrives
    (the resume parts writer).
    """
    parts = []
    t0 = time.perf_counter()
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=2):
        batch = dict(batch)
        if on_batch is not None:
            on_batch(batch)
        batch["probs"] = list(batch["probs"])
        parts.append(pd.DataFrame(batch))
    wall = time.perf_counter() - t0
    df = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    return df, wall, steady_throughput(df, wall)


def steady_throughput(df: pd.DataFrame, wall: float) -> float:
    """Samples / (end of the last batch − start of the first), from the actors' clocks.

    This is the pipeline's processing rate with actor start-up and model loading left
    out, stalls between batches (starved decode, backpressure) included.
    """
    if df.empty:
        return 0.0
    span = float(df["t_end"].max() - df["t_start"].min())
    return len(df) / span if span > 0 else len(df) / wall


def run_pipeline(spec: RunSpec, samples: pd.DataFrame, plan: PoolPlan, block_size: int) -> tuple[pd.DataFrame, float, float]:
    """Stream ``samples`` through decode tasks and the Predictor pool (see :func:`collect`)."""
    from medray.data.tta import decode_size

    size = decode_size(spec.model.input_size, spec.tta)  # tencrop: decoded larger, cropped in the actor
    return collect(predict(read_dataset(samples, size, block_size), spec, plan))


def read_block_size(n: int, batch_size: int, actors: int) -> int:
    """Samples per decode task: a multiple of the batch size (no ragged batches inside a
    block), about 64 images, but small enough that every actor gets several blocks."""
    per_actor = math.ceil(n / (actors * 4 * batch_size))
    return batch_size * max(1, min(max(1, 64 // batch_size), per_actor))


def execute(
    cfg: EvalConfig,
    samples: pd.DataFrame,
    specs: list[RunSpec],
    state: ResumeState | None = None,
    pool: PoolPlan | None = None,
    progress=None,
) -> list[RunResult]:
    """Run every spec on the connected Ray cluster, one after the other.

    Rows of ``samples`` with a ``problem`` (:func:`~medray.pipeline.faults.apply_policy`)
    are skipped without decoding.  With ``state``, every received batch is written as a
    resume part and samples already in parts are not evaluated again.  ``pool`` replaces
    the pool sized on the whole cluster (a sweep trial sizes it to its placement group);
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
        plan = pool if pool is not None else plan_pool(
            device=spec.device,
            streams=spec.streams,
            cluster_cpus=cpus,
            cluster_gpus=gpus,
            node_cores=cores,
            reserve_cpus=cfg.ray.reserve_cpus_for_reading,
            threads=spec.backend.threads,
        )
        spec = replace(spec, threads=plan.threads)
        if shipping:  # actors on other nodes get the driver's files via the object store
            spec = ship(spec, shipped)
        done = state.load(spec.name) if state is not None else pd.DataFrame()
        todo = to_run[~to_run["sample_id"].isin(set(done["sample_id"]))] if len(done) else to_run
        block = cfg.data.read_block_size or read_block_size(len(todo), spec.batch_size, plan.actors)
        log.info("%s (%s): %s, batch %d", spec.name, spec.role, plan.describe(), spec.batch_size)
        new, wall, tput = pd.DataFrame(), 0.0, 0.0
        if len(todo):
            # Decode tasks always mark bad rows; data.on_error=fail is applied here, on the
            # driver, where the error keeps its path and reason (see raise_first_bad).
            ds = predict(read_dataset(todo, spec.model.input_size, block, "skip"), spec, plan, cfg.ray.max_retries)
            on_batch = _batch_hook(cfg.data.on_error, todo, state.writer(spec.name) if state is not None else None, progress)
            failure = None
            try:
                new, wall, tput = collect(ds, on_batch=on_batch)
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
            log.info("%s: %d samples from the interrupted run, %d evaluated now", spec.name, len(done), len(new))
        df = pd.concat([d for d in (done, new) if len(d)], ignore_index=True) if len(done) else new
        df, n_dup = dedupe_retried(spec.name, df)
        check_complete(spec.name, to_run["sample_id"], df)
        eff = [json.loads(s) for s in df.pop("effective_precision") if s]
        df, skipped = split_skipped(df)
        # Sorted by id: the predictions file of a resumed or retried run equals a clean one's.
        df = df.sort_values("sample_id", kind="stable").reset_index(drop=True)
        skipped = pd.concat([pre_skipped, skipped], ignore_index=True).sort_values("sample_id").reset_index(drop=True)
        # Throughput of the samples predicted by this process (skipped rows are not work).
        fresh = split_skipped(new)[0] if len(new) else df
        tput = steady_throughput(fresh, wall or 1.0) if len(fresh) else tput
        resumed = {"from_previous": int(len(done)), "processed": int(len(new))} if len(done) else None
        results.append(RunResult(spec, df, wall, tput, plan, summarise_effective(eff), skipped, resumed, n_dup))
        log.info(
            "%s: %d samples in %.1fs (%.1f samples/s steady), %d skipped", spec.name, len(df), wall, tput, len(skipped)
        )
    check_same_skipped({r.spec.name: r.skipped for r in results})
    return results


def _batch_hook(on_error: str, todo: pd.DataFrame, writer, progress=None):
    """What the driver does with each received batch: the fail policy, then the resume part."""
    paths = dict(zip(todo["sample_id"].astype(str), todo["path"].astype(str)))

    def hook(batch):
        if on_error == "fail":
            raise_first_bad(batch, paths)
        if writer is not None:
            writer(batch)
        if progress is not None:
            progress(batch)

    return hook


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


# --------------------------------------------------------------------------- entry


def run(cfg: EvalConfig) -> dict:
    """Evaluate ``cfg`` end to end; returns the metrics document (also written to disk)."""
    if cfg.task == "segmentation":  # 3D volumes through sliding windows: its own flow
        from medray.pipeline.segmentation import run as run_segmentation

        return run_segmentation(cfg)
    import ray

    from medray.report import build_metrics, write_outputs

    # output_dir: a local path, or a URI on shared storage (s3://, gs://, file://) — on a
    # cluster the job's working directory is a temporary folder on the head node.
    out = medray_io.normalize(cfg.output_dir)
    medray_io.makedirs(out)
    log.info("medray %s from %s; outputs to %s", _version(), Path(__file__).resolve().parents[1], out)
    t0 = time.perf_counter()
    preflight(cfg)
    started = False
    try:
        if cfg.device == "cuda" and (cfg.ray.address is not None or ray.is_initialized()):
            started = start_ray(cfg)
            if cfg.ray.min_gpus:  # GPU workers scaling from zero: wait before checking
                wait_for_gpus(cfg.ray.min_gpus, cfg.ray.scale_timeout_s)
            require_cluster_gpu(cfg)  # before building any artifact
        table, samples, specs = prepare(cfg)
        # Resume parts are local files: beside the outputs, or on the driver's disk when
        # the outputs go to a remote URI (resume then works from the same head node).
        state = ResumeState.open(_resume_dir(cfg, out), cfg, samples, specs)  # refuses a different config before Ray
        started = start_ray(cfg) or started
        results = execute(cfg, samples, specs, state)
    finally:
        if started:
            ray.shutdown()
    doc = build_metrics(cfg, table, samples, results)
    doc["wall_s"] = time.perf_counter() - t0
    doc["output_dir"] = str(out)
    write_outputs(out, as_dict(cfg), doc, results, table, samples)
    log.info("outputs in %s", out)
    return doc


def _resume_dir(cfg: EvalConfig, out: str) -> str:
    if medray_io.is_local(out):
        return out
    import hashlib

    return str(Path(cfg.cache_dir) / "resume" / hashlib.sha256(out.encode()).hexdigest()[:16])


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("medray")
    except Exception:
        return "?"
