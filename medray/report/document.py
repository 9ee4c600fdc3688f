"""``metrics.json``: the output contract's document, built once on the driver.

Metrics are computed from the merged per-sample rows of each run — never averaged over
workers.  The keys every run has (name, role, latency, throughput, pool, artifact,
precision really executed, speed-up) are built here for every task; the task adds its
metrics, its comparison with the baseline and its dataset keys.
"""

from __future__ import annotations

import hashlib
import logging
from typing import TYPE_CHECKING, Any

from medray.data.policy import check_accounting
from medray.metrics.performance import latency_summary, speedup
from medray.report.expected import expected_section, expected_warnings
from medray.report.repair import validation_vs_test

if TYPE_CHECKING:
    import pandas as pd

    from medray.data.table import SampleTable
    from medray.results import RunResult
    from medray.tasks.base import RunConfig, Task

log = logging.getLogger("medray.report")

LOWER_PRECISIONS = ("tf32", "fp16", "bf16", "int8")


def _latency(df: pd.DataFrame) -> dict:
    if df.empty:
        return {"per_sample_p50": None, "per_sample_p95": None, "per_sample_mean": None, "n_batches": 0}
    b = df.groupby("batch_uid", sort=False)[["batch_ms", "batch_size"]].first()
    return latency_summary(b["batch_ms"].to_numpy(), b["batch_size"].to_numpy())


def run_entry(result: RunResult, table: SampleTable, samples: pd.DataFrame, task: Task) -> dict[str, Any]:
    """One ``runs[]`` element without the comparison keys."""
    spec, df = result.spec, result.predictions
    entry: dict[str, Any] = {
        "name": spec.name,
        "role": spec.role,
        "backend": spec.backend.name,
        "precision": spec.precision,
        "device": spec.device,
        "batch_size": spec.batch_size,
        "streams": spec.streams,
        "n_samples": int(len(df)),
        "n_skipped": 0 if result.skipped is None else int(len(result.skipped)),
        "latency_ms": _latency(df),
        # End to end (the slower stage while both run) and the inference stage's capacity;
        # start-up (actor start, model load) apart: medray.metrics.performance.pipeline_rates.
        "throughput_sps": result.throughput_sps,
        "inference_sps": result.inference_sps,
        "startup_s": result.startup_s,
        "wall_s": result.wall_s,
        "read_cache": result.read_cache,
        "artifact": _artifact(spec.artifact, result.effective_precision),
        "effective_precision": result.effective_precision,
        "pool": {
            "actors": result.pool.actors,
            "num_cpus": result.pool.num_cpus,
            "num_gpus": result.pool.num_gpus,
            "threads": result.pool.threads,
            "read_cpus": result.pool.read_cpus,
            "read_tasks": result.pool.read_tasks,
            "costs": result.pool.costs,
            "nodes": sorted(df["node_id"].unique().tolist()) if len(df) else [],
        },
    }
    extra = task.run_metrics(result, table, samples)
    entry["latency_ms"].update(extra.pop("latency_ms", {}))
    entry.update(extra)
    return entry


def _artifact(a: dict | None, eff: dict | None = None) -> dict | None:
    built = (eff or {}).get("artifact")
    if built and a is not None:
        # Built in the actors (trt: engines are GPU-specific): the driver's artifact is the
        # graph it was built from; the engine is what the run measured.
        a = {**a, **built, "source_graph": {"path": a["path"], "bytes": a["bytes"]}}
    if a is None:
        return None
    out = {"path": a["path"], "bytes": a["bytes"], "build_s": a["build_s"], "cache_hit": a["cache_hit"]}
    # Lower-precision artifacts carry the fp32 one they were built from (size comparison),
    # INT8 ones the calibration set and what the quantizer did (layers kept in float...).
    # An INT8 repair: what it kept, every step, the precision it runs (medray.backends.onnx.repair).
    for k in ("reference", "calibration", "quantization", "source_graph", "repair", "executes"):
        if a.get(k) is not None:
            out[k] = a[k]
    if a.get("members"):  # a model of several networks (nnU-Net's folds): one artifact each
        out["members"] = [{"path": m["path"], "bytes": m["bytes"], "build_s": m["build_s"], "cache_hit": m["cache_hit"]}
                          for m in a["members"]]
    return out


def build_metrics(cfg: RunConfig, table: SampleTable, samples: pd.DataFrame, results: list[RunResult],
                  task: Task | None = None, validation: RunResult | None = None) -> dict:
    """The ``metrics.json`` document of ``results`` (baseline first, then candidates);
    ``validation``: the baseline's run on the validation split (threshold choice);
    ``task``: the run's task object (default: the task of the dataset's kind, plain)."""
    if task is None:
        from medray.tasks import task_of

        task = task_of(table.task)
    task.begin_document(cfg, table, samples, results, validation)
    runs = [run_entry(r, table, samples, task) for r in results]
    for r, entry in zip(results, runs):
        # Each selected sample is either evaluated or listed as skipped: never lost.
        check_accounting(entry["n_samples"], entry["n_skipped"], len(samples), entry["name"])
        if r.resumed:
            entry["resumed"] = r.resumed
        if r.n_deduplicated:
            entry["n_deduplicated"] = r.n_deduplicated
    base = next((i for i, r in enumerate(results) if r.spec.role == "baseline"), None)
    if base is not None:
        b = runs[base]
        for r, entry in zip(results, runs):
            if r.spec.role != "candidate":
                continue
            entry.update(task.compare(results[base], r, table, samples, b, entry))
            entry["speedup"] = speedup(b["latency_ms"]["per_sample_mean"], entry["latency_ms"]["per_sample_mean"])
            for key, factor in (("throughput_sps", "throughput_factor"), ("inference_sps", "capacity_factor")):
                entry["speedup"][factor] = entry[key] / b[key] if entry.get(key) and b.get(key) else None
    for entry in runs:  # an INT8 repair chosen on validation, judged on the evaluated split
        check = validation_vs_test(entry)
        if check is not None:
            entry["repair_check"] = check
    skipped = next((r.skipped for r in results if r.skipped is not None), None)
    expected = expected_section(results, runs, table, samples, task)
    doc = {
        "task": task.name,
        "dataset": {
            "name": table.name,
            "task": table.task,
            "n_samples": int(len(samples)),
            "split": cfg.data.split,
            "root": table.root,
            # Which samples exactly (two runs on the same hash saw the same samples).
            "samples_sha256": hashlib.sha256("\n".join(sorted(map(str, samples["sample_id"]))).encode()).hexdigest(),
            **task.dataset_section(cfg, table, samples, results[0].spec.model if results else None),
        },
        "model": model_section(results[0].spec.model) if results else None,
        "runs": runs,
        # The published metrics first (model.expected): reproduced by the baseline or not.
        "expected": expected,
        "warnings": expected_warnings(expected) + warnings_of(runs),
        # Samples that could not be read (data.on_error=skip), the same for every run.
        "skipped": [] if skipped is None else [
            {"sample_id": str(i), "reason": str(w)} for i, w in zip(skipped["sample_id"], skipped["reason"])
        ],
    }
    task.document_extras(cfg, doc, results, table, samples, validation)
    return doc


def model_section(m) -> dict:
    """What was evaluated and the pixels it was fed (the preprocessing is the model's contract)."""
    return {
        "source": m.source,
        "arch": m.arch,
        "checkpoint": m.checkpoint,
        "checkpoint_sha256": m.checkpoint_sha256,
        "path": m.path,
        "path_sha256": m.path_sha256,
        "target": m.target,
        "output": m.output,
        "outputs": m.out_features or m.num_classes,
        "input_shape": list(m.input_shape),
        "preprocessing": dict(m.preprocess) or None,
        # Outputs matched to the dataset's classes by name (medray.models.labels).
        "labels": dict(m.labels) or None,
        "activation": m.activation,
        "operating_points": ("torchxrayvision op_norm after the backend: 0.5 is each label's operating threshold"
                             if m.op_threshs is not None else None),
    }


def warnings_of(runs: list[dict]) -> list[str]:
    """Things a reviewer must not miss (e.g. a lower precision that is not faster)."""
    out = []
    for r in runs:
        eff = r.get("effective_precision") or {}
        if eff.get("executed") and eff["executed"] != r["precision"]:
            out.append(f"{r['name']}: asked for {r['precision']} but the backend executes {eff['executed']}")
        if eff.get("warning"):
            out.append(f"{r['name']}: {eff['warning']}")
        bad = r.get("nonfinite")
        if bad:
            out.append(
                f"{r['name']}: {bad['n']} sample(s) got NaN/infinite outputs, scored as wrong answers with certainty "
                f"(e.g. {', '.join(bad['sample_ids'][:5])}); see metrics.json runs[].nonfinite"
            )
        sp = r.get("speedup") or {}
        if r["precision"] in LOWER_PRECISIONS and sp.get("factor") is not None and sp["factor"] <= 1.0:
            out.append(f"{r['name']}: {r['precision']} is not faster than the baseline (factor {sp['factor']:.2f})")
        # Its own backend's fp32 run, when the same report has one (baseline or sweep).
        fp32 = next((f for f in runs if f["backend"] == r["backend"] and f["precision"] == "fp32"
                     and f.get("device") == r.get("device")), None)
        if r["precision"] in LOWER_PRECISIONS and fp32 is not None and fp32 is not r:
            mine, theirs = r["latency_ms"]["per_sample_mean"], fp32["latency_ms"]["per_sample_mean"]
            if mine and theirs and mine >= theirs:
                out.append(
                    f"{r['name']}: {r['precision']} is not faster than {fp32['name']} "
                    f"({mine:.3f} vs {theirs:.3f} ms per sample)"
                )
        ref = (r.get("artifact") or {}).get("reference")
        if r["precision"] in ("fp16", "int8") and ref and r["artifact"]["bytes"] >= ref["bytes"]:
            out.append(
                f"{r['name']}: the {r['precision']} artifact ({r['artifact']['bytes'] / 1e6:.1f} MB) is not smaller "
                f"than the fp32 one it was built from ({ref['bytes'] / 1e6:.1f} MB); check the conversion took effect"
            )
    return out
