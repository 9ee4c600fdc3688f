"""task=segmentation: 3D volumes through MONAI's sliding window around any backend.

One case per row, one case per block: a CPU task reads and preprocesses the case
(:func:`read_case_batch`), a :class:`SegPredictor` actor runs
``monai.inferers.sliding_window_inference`` with a predictor callable that hands each
batch of ROI windows to ``backend.infer`` (numpy ``(N, C, D, H, W)`` float32), writes the
argmax mask to ``predictions/<run>_masks/<case>.npz`` and returns one small row: Dice per
class vs the labels, the summed backend time (the case's latency), the whole
sliding-window time and the shapes.  Volumes never come back to the driver; Dice of the
candidate vs the baseline is computed on the driver from the two runs' mask files.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import uuid
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medray.backends import get_backend
from medray.backends.artifacts import ArtifactCache
from medray.config import ConfigError, EvalConfig, as_dict
from medray.data.msd import (
    Preprocessing,
    VolumeError,
    check_headers,
    modalities,
    read_dataset_json,
    resolve_preprocessing,
)
from medray.data.table import SampleTable
from medray.pipeline import ray_remote_args_accepted
from medray.pipeline.resources import PoolPlan, plan_pool
from medray.specs import RunSpec

log = logging.getLogger("medray.segmentation")


@dataclass
class SegRunResult:
    """Per-case rows of one run plus what the driver measured."""

    spec: RunSpec
    predictions: pd.DataFrame
    wall_s: float
    throughput_sps: float
    pool: PoolPlan
    effective_precision: dict
    mask_dir: Path
    skipped: pd.DataFrame = field(default_factory=lambda: pd.DataFrame({"sample_id": [], "reason": []}))


# --------------------------------------------------------------------------- actor side


def read_case_batch(batch: dict[str, np.ndarray], prep: dict, num_classes: int, on_error: str = "fail") -> dict:
    """CPU task: one block = one case → preprocessed image (+ label) in model space."""
    out: dict[str, list] = {k: [] for k in ("sample_id", "image", "label", "has_label", "orig_shape",
                                             "orig_spacing", "spacing", "skipped_reason")}
    for sid, path, lab in zip(batch["sample_id"], batch["path"], batch["label_path"]):
        try:
            case = _load_case(str(path), str(lab) or None, prep, num_classes)
            reason = ""
        except VolumeError as e:
            if on_error != "skip":
                raise
            case, reason = None, str(e)
        out["sample_id"].append(sid)
        out["skipped_reason"].append(reason)
        if case is None:  # a placeholder row that says why (never a silent drop)
            out["image"].append(np.zeros((1, 1, 1, 1), np.float32))
            out["label"].append(np.zeros((1, 1, 1), np.uint8))
            out["has_label"].append(False)
            for k in ("orig_shape", "orig_spacing", "spacing"):
                out[k].append(np.zeros(3))
            continue
        out["image"].append(case["image"])
        has = case["label"] is not None
        out["label"].append(case["label"] if has else np.zeros((1, 1, 1), np.uint8))
        out["has_label"].append(has)
        out["orig_shape"].append(np.asarray(case["orig_shape"], dtype=np.float64))
        out["orig_spacing"].append(np.asarray(case["orig_spacing"], dtype=np.float64))
        out["spacing"].append(np.asarray(case["spacing"], dtype=np.float64))
    # One case per block: a (1, ...) view of the volume, not a stacked copy.
    return {k: (v[0][None] if len(v) == 1 else np.stack(v)) if k in ("image", "label", "orig_shape", "orig_spacing", "spacing")
            else np.asarray(v) for k, v in out.items()}


def _load_case(path, label_path, prep, num_classes):
    from medray.data.msd import load_case

    return load_case(path, label_path, prep, num_classes)


def _read_task_args() -> dict:
    # A ray_remote_args_fn keeps Ray Data from fusing the read into the actor (same
    # reason as the classification decode tasks): reading overlaps inference.
    return {"num_cpus": 1}


def _first(col):
    """Row 0 of a column whatever Ray made of it (fixed-shape tensor or object array)."""
    v = col[0]
    return np.asarray(v)


class SegPredictor:
    """Holds one backend session; one call = one case through the sliding window."""

    def __init__(self, spec: RunSpec, sliding: dict, mask_dir: str, num_classes: int):
        import torch

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
        self.spec = spec
        self.sw = dict(sliding)
        self.mask_dir = Path(mask_dir)
        self.num_classes = num_classes
        # MONAI's window slicing and blending run in torch in this process.
        torch.set_num_threads(max(1, spec.threads))
        self.backend = get_backend(spec.backend.name)(spec).load()
        self.uid = uuid.uuid4().hex[:8]
        self.pid = os.getpid()
        import ray

        # Outside Ray (unit tests) asking for the runtime context would start a Ray.
        self.node = ray.get_runtime_context().get_node_id() if ray.is_initialized() else "local"
        self.n_cases = 0

    def segment(self, image: np.ndarray) -> tuple[np.ndarray, dict]:
        """``image`` ``(C, D, H, W)`` → uint8 mask ``(D, H, W)`` and its timings.

        The window batches are sliced out of the one volume tensor by MONAI (a copy of
        each window batch, never of the volume); ``calls`` lists the backend times.
        """
        import torch
        from monai.inferers import sliding_window_inference

        calls: list[float] = []
        windows = [0]

        def run_windows(w: torch.Tensor) -> torch.Tensor:
            x = np.ascontiguousarray(w.numpy())  # torch.cat made it contiguous: no copy
            out = self.backend.infer(x)
            calls.append(self.backend.last_ms)
            windows[0] += len(x)
            return torch.from_numpy(out)

        with warnings.catch_warnings():
            # Ray hands read-only arrays; MONAI only reads the input (slices + pad copy).
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            t = torch.from_numpy(image)[None]
        t0 = time.perf_counter()
        with torch.inference_mode():
            logits = sliding_window_inference(
                t,
                roi_size=list(self.spec.model.spatial),
                sw_batch_size=self.spec.batch_size,
                predictor=run_windows,
                overlap=self.sw["overlap"],
                mode=self.sw["mode"],
                sigma_scale=self.sw["sigma_scale"],
            )
            mask = logits[0].argmax(0).to(torch.uint8).numpy()
        sw_ms = (time.perf_counter() - t0) * 1e3
        return mask, {"latency_ms": float(sum(calls)), "sw_ms": sw_ms, "n_calls": len(calls), "n_windows": windows[0]}

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from medray.metrics.segmentation import dice_per_class

        rows = []
        for i in range(len(batch["sample_id"])):
            sid = str(batch["sample_id"][i])
            reason = str(batch["skipped_reason"][i])
            t_start = time.time()
            row: dict[str, Any] = {"sample_id": sid, "skipped_reason": reason, "dice": np.full(self.num_classes - 1, np.nan),
                                   "latency_ms": 0.0, "sw_ms": 0.0, "n_calls": 0, "n_windows": 0,
                                   "model_shape": np.zeros(3), "mask_file": ""}
            if not reason:
                image = np.asarray(batch["image"][i], dtype=np.float32)
                mask, timing = self.segment(image)
                row.update(timing)
                row["model_shape"] = np.asarray(mask.shape, dtype=np.float64)
                row["mask_file"] = self._save(sid, mask)
                if bool(batch["has_label"][i]):
                    row["dice"] = dice_per_class(mask, np.asarray(batch["label"][i]), self.num_classes)
            for k in ("has_label", "orig_shape", "orig_spacing", "spacing"):
                row[k] = batch[k][i]
            row["t_start"], row["t_end"] = t_start, time.time()
            rows.append(row)
        n = len(rows)
        info = np.full(n, "", dtype=object)
        if self.n_cases == 0 and n:
            # The precision the session really executes, once per actor (see Predictor).
            info[0] = json.dumps(self.backend.effective_precision, default=str)
        self.n_cases += n
        out = {k: np.stack([r[k] for r in rows]) if k in ("dice", "model_shape", "orig_shape", "orig_spacing", "spacing")
               else np.asarray([r[k] for r in rows]) for k in rows[0]}
        out.update(node_id=np.full(n, self.node), worker_pid=np.full(n, self.pid, dtype=np.int64),
                   actor_uid=np.full(n, self.uid), effective_precision=info)
        return out

    def _save(self, sid: str, mask: np.ndarray) -> str:
        """Compressed mask file, written atomically (a retried case rewrites it whole)."""
        name = f"{sid.replace(os.sep, '__')}.npz"
        tmp = self.mask_dir / f".{name}.{self.uid}.tmp"
        with open(tmp, "wb") as f:
            np.savez_compressed(f, mask=mask)
        os.replace(tmp, self.mask_dir / name)
        return name


def load_mask(mask_dir: Path, name: str) -> np.ndarray:
    with np.load(Path(mask_dir) / name) as z:
        return z["mask"]


# --------------------------------------------------------------------------- driver


def prepare(cfg: EvalConfig) -> tuple[SampleTable, pd.DataFrame, list[RunSpec], Preprocessing]:
    """MSD table, evaluated cases (headers checked), run specs with artifacts (no Ray)."""
    from medray.data.sources import load_table, select_samples
    from medray.models.resolve import resolve_model
    from medray.pipeline.evaluate import build_specs

    table = load_table(cfg.data, cfg.data_root)
    samples = select_samples(table, cfg.data.split, cfg.data.limit, cfg.data.seed)
    prep = resolve_preprocessing(cfg.data.volume, modalities(read_dataset_json(table.root)))
    try:
        samples = check_headers(samples, cfg.data.on_error)
    except VolumeError as e:
        raise ConfigError(f"data.split={cfg.data.split}: {e}") from None
    n_lab = int((samples["label_path"] != "").sum())
    log.info("dataset %s: %d %s cases evaluated (%d with labels), %d labels %s; preprocessing %s",
             table.name, len(samples), cfg.data.split, n_lab, len(table.classes), table.classes, prep.to_dict())
    model = resolve_model(cfg, table)
    sw = cfg.sliding_window
    specs = [replace(s, batch_size=sw.sw_batch_size) for s in build_specs(cfg, model)]
    cache = ArtifactCache(cfg.cache_dir)
    context: dict[str, Any] = {"table": table, "evaluated": samples}
    for spec in specs:
        spec.artifact = get_backend(spec.backend.name).prepare(spec, cache, context)
    return table, samples, specs, prep


def read_cases(samples: pd.DataFrame, prep: Preprocessing, num_classes: int, on_error: str):
    """Ray Dataset of preprocessed cases: one read task and one block per case."""
    import ray.data

    blocks = [samples.iloc[[i]][["sample_id", "path", "label_path"]] for i in range(len(samples))]
    with ray_remote_args_accepted():
        return ray.data.from_pandas(blocks).map_batches(
            read_case_batch,
            fn_kwargs={"prep": prep.to_dict(), "num_classes": num_classes, "on_error": on_error},
            batch_format="numpy",
            batch_size=None,
            ray_remote_args_fn=_read_task_args,
        )


def predict_cases(ds, spec: RunSpec, plan: PoolPlan, sliding: dict, mask_dir: Path, num_classes: int):
    import ray.data

    return ds.map_batches(
        SegPredictor,
        fn_constructor_kwargs={"spec": spec, "sliding": sliding, "mask_dir": str(mask_dir), "num_classes": num_classes},
        compute=ray.data.ActorPoolStrategy(size=plan.actors),
        batch_size=1,
        batch_format="numpy",
        num_cpus=plan.num_cpus,
        num_gpus=plan.num_gpus or None,
    )


def collect_cases(ds) -> tuple[pd.DataFrame, float, float]:
    """Per-case rows on the driver, wall time, and steady cases/s (actors' clocks)."""
    from medray.pipeline.evaluate import steady_throughput

    parts = []
    t0 = time.perf_counter()
    try:
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=1):
            batch = dict(batch)
            for k in ("dice", "model_shape", "orig_shape", "orig_spacing", "spacing"):
                batch[k] = list(batch[k])
            parts.append(pd.DataFrame(batch))
    except Exception as e:  # Ray wraps the task's error; surface a bad file by its message
        cause = _volume_error(e)
        if cause is not None:
            raise VolumeError(f"{cause}") from None
        raise
    wall = time.perf_counter() - t0
    df = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    done = df[df["skipped_reason"] == ""] if len(df) else df
    return df, wall, (steady_throughput(done, wall) if len(done) else 0.0)


def _volume_error(e: BaseException) -> VolumeError | None:
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, VolumeError):
            return e
        e = getattr(e, "cause", None) or e.__cause__
    return None


def execute(cfg: EvalConfig, samples: pd.DataFrame, specs: list[RunSpec], prep: Preprocessing, out: Path,
            num_classes: int) -> list[SegRunResult]:
    """Run every spec over the same cases, one after the other."""
    from medray.pipeline.evaluate import check_complete, cluster_shape, summarise_effective

    cpus, gpus, cores = cluster_shape()
    bad = samples["problem"] != "" if "problem" in samples.columns else pd.Series(False, index=samples.index)
    pre_skipped = pd.DataFrame({"sample_id": samples.loc[bad, "sample_id"], "reason": samples.loc[bad, "problem"]})
    todo = samples[~bad].reset_index(drop=True)
    sliding = as_dict(cfg.sliding_window)
    results = []
    for spec in specs:
        plan = plan_pool(device=spec.device, streams=spec.streams, cluster_cpus=cpus, cluster_gpus=gpus, node_cores=cores,
                         reserve_cpus=cfg.ray.reserve_cpus_for_reading, threads=spec.backend.threads)
        spec = replace(spec, threads=plan.threads)
        mask_dir = out / "predictions" / f"{spec.name}_masks"
        if mask_dir.exists():  # never mix masks of an earlier run into this one
            shutil.rmtree(mask_dir)
        mask_dir.mkdir(parents=True)
        log.info("%s (%s): %s, %d windows of %s per call", spec.name, spec.role, plan.describe(), spec.batch_size,
                 "×".join(map(str, spec.model.spatial)))
        df, wall, tput = pd.DataFrame(), 0.0, 0.0
        if len(todo):
            ds = predict_cases(read_cases(todo, prep, num_classes, cfg.data.on_error), spec, plan, sliding, mask_dir, num_classes)
            df, wall, tput = collect_cases(ds)
        if len(df):
            df = df.drop_duplicates("sample_id", keep="first")  # a retried case (same mask file) once
        check_complete(spec.name, todo["sample_id"], df if len(df) else pd.DataFrame({"sample_id": []}))
        eff = [json.loads(s) for s in df.pop("effective_precision") if s] if len(df) else []
        run_skipped = df[df["skipped_reason"] != ""] if len(df) else df
        skipped = pd.concat([pre_skipped, pd.DataFrame({"sample_id": run_skipped.get("sample_id", []),
                                                        "reason": run_skipped.get("skipped_reason", [])})],
                            ignore_index=True).sort_values("sample_id").reset_index(drop=True)
        df = (df[df["skipped_reason"] == ""] if len(df) else df).sort_values("sample_id").reset_index(drop=True)
        results.append(SegRunResult(spec, df, wall, tput, plan, summarise_effective(eff), mask_dir, skipped))
        log.info("%s: %d cases in %.1fs (%.2f cases/s steady), %d skipped", spec.name, len(df), wall, tput, len(skipped))
    return results


# --------------------------------------------------------------------------- metrics


def compare_masks(base: SegRunResult, cand: SegRunResult, num_classes: int) -> pd.DataFrame:
    """Per case: Dice of the candidate's mask vs the baseline's (per class) and voxel agreement."""
    from medray.metrics.segmentation import dice_per_class, voxel_agreement

    b = base.predictions.set_index("sample_id")["mask_file"]
    rows = []
    for sid, cfile in zip(cand.predictions["sample_id"], cand.predictions["mask_file"]):
        if sid not in b.index:
            continue
        bm, cm = load_mask(base.mask_dir, b[sid]), load_mask(cand.mask_dir, cfile)
        d = dice_per_class(cm, bm, num_classes, ignore_empty=False)
        rows.append({"sample_id": sid, "dice_vs_baseline": d, "voxel_agreement": voxel_agreement(cm, bm)})
    return pd.DataFrame(rows, columns=["sample_id", "dice_vs_baseline", "voxel_agreement"])


def _latency(values) -> dict:
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return {"per_sample_p50": None, "per_sample_p95": None, "per_sample_mean": None}
    return {"per_sample_p50": float(np.percentile(v, 50)), "per_sample_p95": float(np.percentile(v, 95)),
            "per_sample_mean": float(v.mean())}


def run_entry(r: SegRunResult, fg: list[str]) -> dict:
    from medray.metrics.segmentation import dice_summary

    df = r.predictions
    labelled = df[df["has_label"].astype(bool)] if len(df) else df
    per_case = np.stack(labelled["dice"].to_numpy()) if len(labelled) else np.zeros((0, len(fg)))
    metrics: dict[str, Any] = dice_summary(per_case, fg) if len(labelled) else {"dice_mean": None, "dice_per_class": {c: None for c in fg}}
    metrics["n_labelled"] = int(len(labelled))
    lat = _latency(df["latency_ms"]) if len(df) else _latency([])
    lat["per_window_mean"] = float(df["latency_ms"].sum() / df["n_windows"].sum()) if len(df) and df["n_windows"].sum() else None
    return {
        "name": r.spec.name,
        "role": r.spec.role,
        "backend": r.spec.backend.name,
        "precision": r.spec.precision,
        "device": r.spec.device,
        "batch_size": r.spec.batch_size,
        "streams": r.spec.streams,
        "n_samples": int(len(df)),
        "n_skipped": int(len(r.skipped)),
        "skipped": r.skipped.to_dict("records"),
        "latency_ms": lat,
        "sliding_window_ms": _latency(df["sw_ms"]) if len(df) else _latency([]),
        "windows_per_case_mean": float(df["n_windows"].mean()) if len(df) else None,
        "throughput_sps": r.throughput_sps,
        "wall_s": r.wall_s,
        "metrics": metrics,
        "artifact": None if r.spec.artifact is None else {k: r.spec.artifact.get(k) for k in ("path", "bytes", "build_s", "cache_hit")},
        "effective_precision": r.effective_precision,
        "pool": {"actors": r.pool.actors, "num_cpus": r.pool.num_cpus, "num_gpus": r.pool.num_gpus,
                 "threads": r.pool.threads, "nodes": sorted(df["node_id"].unique().tolist()) if len(df) else []},
        "masks": str(r.mask_dir),
    }


def build_segmentation_metrics(cfg: EvalConfig, table: SampleTable, samples: pd.DataFrame, results: list[SegRunResult],
                               prep: Preprocessing) -> dict:
    """The ``metrics.json`` document of a segmentation evaluation (and per-case rows)."""
    from medray.metrics.performance import speedup
    from medray.metrics.segmentation import case_mean, dice_summary, fmt
    from medray.report import _warnings

    fg = list(table.classes[1:])
    k = len(table.classes)
    runs = [run_entry(r, fg) for r in results]
    base_i = next((i for i, r in enumerate(results) if r.spec.role == "baseline"), None)
    cases = {sid: {"sample_id": sid} for sid in samples["sample_id"]}
    for r in results:
        for row in r.predictions.itertuples(index=False):
            c = cases[row.sample_id]
            c["shape"] = [int(v) for v in row.orig_shape]
            c["model_shape"] = [int(v) for v in row.model_shape]
            c[f"latency_ms:{r.spec.name}"] = float(row.latency_ms)
            c[f"dice:{r.spec.name}"] = fmt(case_mean(row.dice)) if row.has_label else None
    for r, entry in zip(results, runs):
        if r.spec.role != "candidate" or base_i is None:
            continue
        base = results[base_i]
        cmp = compare_masks(base, r, k)
        d = np.stack(cmp["dice_vs_baseline"].to_numpy()) if len(cmp) else np.zeros((0, len(fg)))
        s = dice_summary(d, fg) if len(cmp) else {"dice_mean": None, "dice_per_class": {}, "dice_case_min": None}
        entry["agreement"] = {
            "dice_mean": s["dice_mean"],
            "dice_per_class": s["dice_per_class"],
            "dice_case_min": s["dice_case_min"],
            "voxel_agreement_mean": float(cmp["voxel_agreement"].mean()) if len(cmp) else None,
            "voxel_agreement_min": float(cmp["voxel_agreement"].min()) if len(cmp) else None,
            "n": int(len(cmp)),
        }
        for row in cmp.itertuples(index=False):
            cases[row.sample_id][f"dice_vs_baseline:{r.spec.name}"] = fmt(case_mean(row.dice_vs_baseline))
        r.predictions = r.predictions.merge(cmp[["sample_id", "dice_vs_baseline", "voxel_agreement"]], on="sample_id", how="left")
        b, c = runs[base_i], entry
        entry["speedup"] = speedup(b["latency_ms"]["per_sample_mean"], c["latency_ms"]["per_sample_mean"])
        entry["speedup"]["throughput_factor"] = (c["throughput_sps"] / b["throughput_sps"]) if b["throughput_sps"] else None
        bm, cm = b["metrics"].get("dice_mean"), c["metrics"].get("dice_mean")
        entry["metric_deltas"] = {"dice_mean": (cm - bm) if cm is not None and bm is not None else None}
    return {
        "dataset": {
            "name": table.name,
            "task": "segmentation",
            "n_samples": int(len(samples)),
            "classes": fg,
            "labels": list(table.classes),
            "split": cfg.data.split,
            "root": table.root,
            "modality": modalities(read_dataset_json(table.root)),
            "n_labelled": int((samples["label_path"] != "").sum()),
            "preprocessing": prep.to_dict(),
        },
        "sliding_window": {**as_dict(cfg.sliding_window), "roi_size": list(results[0].spec.model.spatial) if results else None},
        "runs": runs,
        "cases": [c for c in cases.values() if "shape" in c],  # skipped cases are listed under "skipped"
        # Cases that could not be read (data.on_error=skip), the same for every run.
        "skipped": results[0].skipped.to_dict("records") if results else [],
        "warnings": _warnings(runs),
    }


# --------------------------------------------------------------------------- entry


def run(cfg: EvalConfig) -> dict:
    """Evaluate a segmentation config end to end; returns (and writes) the metrics document."""
    import ray

    from medray.pipeline.evaluate import preflight, start_ray
    from medray.report import write_segmentation_outputs

    out = Path(cfg.output_dir).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    preflight(cfg)
    table, samples, specs, prep = prepare(cfg)
    started = start_ray(cfg)
    try:
        results = execute(cfg, samples, specs, prep, out, len(table.classes))
    finally:
        if started:
            ray.shutdown()
    doc = build_segmentation_metrics(cfg, table, samples, results, prep)
    doc["wall_s"] = time.perf_counter() - t0
    doc["output_dir"] = str(out)
    write_segmentation_outputs(out, as_dict(cfg), doc, results)
    log.info("outputs in %s", out)
    return doc
