"""The output contract: ``config.yaml``, ``metrics.json``, ``report.md``, ``predictions/``.

Metrics are computed here, once, on the driver, from the merged per-sample rows of
each run — never averaged over workers.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from medray import io as medray_io
from medray.metrics.agreement import agreement, pair_by_id
from medray.metrics.classification import classification_metrics
from medray.metrics.performance import latency_summary, speedup
from medray.pipeline.faults import check_accounting

if TYPE_CHECKING:
    from medray.config import EvalConfig
    from medray.data.table import SampleTable
    from medray.pipeline.evaluate import RunResult

log = logging.getLogger("medray.report")


def _batches(df: pd.DataFrame) -> pd.DataFrame:
    return df.groupby("batch_uid", sort=False)[["batch_ms", "batch_size"]].first()


def _targets(table: SampleTable, samples: pd.DataFrame, ids) -> np.ndarray:
    idx = pd.Index(samples["sample_id"]).get_indexer(ids)
    if (idx < 0).any():
        raise RuntimeError("predictions contain sample ids that were not evaluated")
    return table.targets(samples.iloc[idx])


def run_entry(result: RunResult, table: SampleTable, samples: pd.DataFrame) -> dict[str, Any]:
    """One ``runs[]`` element without the comparison keys."""
    spec, df = result.spec, result.predictions
    probs = np.stack(df["probs"].to_numpy()).astype(np.float64)
    y = _targets(table, samples, df["sample_id"])
    b = _batches(df)
    return {
        "name": spec.name,
        "role": spec.role,
        "backend": spec.backend.name,
        "precision": spec.precision,
        "device": spec.device,
        "batch_size": spec.batch_size,
        "streams": spec.streams,
        "tta": spec.tta,
        "n_samples": int(len(df)),
        "n_skipped": 0 if result.skipped is None else int(len(result.skipped)),
        "latency_ms": latency_summary(b["batch_ms"].to_numpy(), b["batch_size"].to_numpy()),
        "throughput_sps": result.throughput_sps,
        "wall_s": result.wall_s,
        "metrics": classification_metrics(y, probs, table.task, table.classes),
        "artifact": _artifact(spec.artifact, result.effective_precision),
        "effective_precision": result.effective_precision,
        "pool": {
            "actors": result.pool.actors,
            "num_cpus": result.pool.num_cpus,
            "num_gpus": result.pool.num_gpus,
            "threads": result.pool.threads,
            "nodes": sorted(df["node_id"].unique().tolist()),
        },
    }


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
    for k in ("reference", "calibration", "quantization", "source_graph"):
        if a.get(k) is not None:
            out[k] = a[k]
    return out


def build_metrics(cfg: EvalConfig, table: SampleTable, samples: pd.DataFrame, results: list[RunResult]) -> dict:
    """The ``metrics.json`` document."""
    runs = [run_entry(r, table, samples) for r in results]
    for r, entry in zip(results, runs):
        # Each selected sample is either evaluated or listed as skipped: never lost.
        check_accounting(entry["n_samples"], entry["n_skipped"], len(samples), entry["name"])
        if r.resumed:
            entry["resumed"] = r.resumed
        if r.n_deduplicated:
            entry["n_deduplicated"] = r.n_deduplicated
    skipped = next((r.skipped for r in results if r.skipped is not None), None)
    base = next((i for i, r in enumerate(results) if r.spec.role == "baseline"), None)
    if base is not None:
        bdf = results[base].predictions
        bprobs = np.stack(bdf["probs"].to_numpy())
        for r, entry in zip(results, runs):
            if r.spec.role != "candidate":
                continue
            bi, ci = pair_by_id(bdf["sample_id"].to_numpy(), r.predictions["sample_id"].to_numpy())
            cprobs = np.stack(r.predictions["probs"].to_numpy())
            entry["agreement"] = agreement(bprobs[bi], cprobs[ci], table.task)
            entry["speedup"] = speedup(
                runs[base]["latency_ms"]["per_sample_mean"], entry["latency_ms"]["per_sample_mean"]
            )
            entry["speedup"]["throughput_factor"] = (
                entry["throughput_sps"] / runs[base]["throughput_sps"] if runs[base]["throughput_sps"] else None
            )
            entry["metric_deltas"] = {
                k: (entry["metrics"][k] - runs[base]["metrics"][k])
                if entry["metrics"].get(k) is not None and runs[base]["metrics"].get(k) is not None
                else None
                for k in ("accuracy", "balanced_accuracy", "auc_macro", "f1_macro")
            }
    return {
        "dataset": {
            "name": table.name,
            "task": table.task,
            "n_samples": int(len(samples)),
            "classes": list(table.classes),
            "split": cfg.data.split,
            "root": table.root,
        },
        "runs": runs,
        "warnings": _warnings(runs),
        "skipped": [] if skipped is None else [
            {"sample_id": str(i), "reason": str(w)} for i, w in zip(skipped["sample_id"], skipped["reason"])
        ],
    }


def _warnings(runs: list[dict]) -> list[str]:
    """Things a reviewer must not miss (e.g. a lower precision that is not faster)."""
    out = []
    for r in runs:
        eff = r.get("effective_precision") or {}
        if eff.get("executed") and eff["executed"] != r["precision"]:
            out.append(f"{r['name']}: asked for {r['precision']} but the backend executes {eff['executed']}")
        if eff.get("warning"):
            out.append(f"{r['name']}: {eff['warning']}")
        sp = r.get("speedup") or {}
        if r["precision"] in ("tf32", "fp16", "bf16", "int8") and sp.get("factor") is not None and sp["factor"] <= 1.0:
            out.append(f"{r['name']}: {r['precision']} is not faster than the baseline (factor {sp['factor']:.2f})")
        # Its own backend's fp32 run, when the same report has one (baseline or sweep).
        fp32 = next((f for f in runs if f["backend"] == r["backend"] and f["precision"] == "fp32"
                     and f.get("device") == r.get("device")), None)
        if r["precision"] in ("tf32", "fp16", "bf16", "int8") and fp32 is not None and fp32 is not r:
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


# --------------------------------------------------------------------------- files


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.2f}"


def _num(x: float | None, fmt: str = "{:.2f}") -> str:
    return "–" if x is None else fmt.format(x)


def _tta_note(doc: dict) -> list[str]:
    tta = sorted({r.get("tta", "none") for r in doc["runs"]} - {"none"})
    if not tta:
        return []
    return [
        f"Test-time augmentation: {', '.join(tta)} — probabilities averaged over the views of each image; "
        "latency is the sum of the backend calls over all views (the cost of one TTA prediction)."
    ]


def render_report(doc: dict) -> str:
    """report.md: the seed-000-style table plus per-class AUC and effective precision."""
    ds = doc["dataset"]
    lines = [
        f"# medray evaluation — {ds['name']}",
        "",
        f"{ds['n_samples']} samples of split `{ds['split']}`, task {ds['task']}, "
        f"{len(ds['classes'])} {'labels' if ds['task'] == 'multilabel' else 'classes'}"
        + (f"; {len(doc['skipped'])} of them skipped as unreadable (listed below)." if doc.get("skipped") else "."),
        "Latency = backend compute time per sample (batch time / batch size, warm-up excluded); "
        "throughput = end-to-end samples/s through the pipeline. Percentages below.",
        *_tta_note(doc),
        "",
        "| Dataset | Model | Latency (ms) | Speed-up | Accuracy | BACC | mAUC | Throughput (img/s) | Agreement |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in doc["runs"]:
        m, sp, ag = r["metrics"], r.get("speedup"), r.get("agreement")
        speed = "–" if not sp or sp["factor"] is None else f"{sp['latency_reduction_pct']:.1f}% ({sp['factor']:.2f}×)"
        model = f"{'Baseline' if r['role'] == 'baseline' else 'Candidate'} {r['name']} (b{r['batch_size']}×{r['streams']})"
        lines.append(
            f"| {ds['name']} | {model} | {r['latency_ms']['per_sample_mean']:.2f} | {speed} | "
            f"{_pct(m['accuracy'])} | {_pct(m['balanced_accuracy'])} | {_pct(m['auc_macro'])} | "
            f"{r['throughput_sps']:.1f} | {_pct(ag['top1']) if ag else '–'} |"
        )
    lines += ["", "## Agreement with the baseline", ""]
    for r in doc["runs"]:
        if r.get("agreement"):
            a = r["agreement"]
            lines.append(
                f"- {r['name']}: top-1 {_pct(a['top1'])}%, max |Δprob| {a['max_abs_prob_diff']:.2e}, "
                f"mean |Δprob| {a['mean_abs_prob_diff']:.2e} over {a['n']} paired samples"
            )
    lines += ["", "## Per-class AUC", "", "| Class | " + " | ".join(r["name"] for r in doc["runs"]) + " |"]
    lines.append("|---" * (len(doc["runs"]) + 1) + "|")
    for c in ds["classes"]:
        cells = [_pct(r["metrics"]["auc_per_class"].get(c)) for r in doc["runs"]]
        lines.append(f"| {c} | " + " | ".join(cells) + " |")
    for r in doc["runs"]:
        if r["metrics"].get("auc_skipped"):
            lines.append(f"\n{r['name']}: AUC skipped (one outcome only) for {', '.join(r['metrics']['auc_skipped'])}")
    if any("sensitivity" in r["metrics"] for r in doc["runs"]):
        lines += ["", "## Operating point", ""]
        for r in doc["runs"]:
            m = r["metrics"]
            lines.append(
                f"- {r['name']}: sensitivity {_pct(m['sensitivity'])}%, specificity {_pct(m['specificity'])}% "
                f"at threshold {m.get('threshold', 0.5)}"
            )
    lines += ["", "## Runs", "", "| Run | Latency p50 / p95 (ms) | Wall (s) | Pool | Executed precision | Artifact |"]
    lines.append("|---|---|---|---|---|---|")
    for r in doc["runs"]:
        a = r.get("artifact")
        art = "–" if not a else f"{a['bytes'] / 1e6:.1f} MB, build {a['build_s']:.1f}s{' (cache hit)' if a['cache_hit'] else ''}"
        p = r["pool"]
        eff = (r.get("effective_precision") or {}).get("executed", "?")
        lines.append(
            f"| {r['name']} | {r['latency_ms']['per_sample_p50']:.2f} / {r['latency_ms']['per_sample_p95']:.2f} | "
            f"{r['wall_s']:.1f} | {p['actors']}×({p['num_cpus']:g} CPU, {p['threads']} thr) | {eff} | {art} |"
        )
    for r in doc["runs"]:
        if r.get("resumed"):
            lines.append(
                f"\n{r['name']}: resumed — {r['resumed']['from_previous']} samples from the interrupted run, "
                f"{r['resumed']['processed']} evaluated now (latency covers both; throughput and wall the latter)."
            )
    lines += _precision_section(doc)
    if doc.get("skipped"):
        lines += _skipped_section(doc)
    if doc.get("warnings"):
        lines += ["", "## Warnings", ""] + [f"- **{w}**" for w in doc["warnings"]]
    return "\n".join(lines) + "\n"


def _skipped_section(doc: dict, limit: int = 200) -> list[str]:
    sk = doc["skipped"]
    lines = [
        "",
        "## Skipped samples",
        "",
        f"{len(sk)} of {doc['dataset']['n_samples']} selected samples could not be read (data.on_error=skip) and are "
        "excluded from every run, so baseline and candidate stay paired.",
        "",
        "| Sample | Reason |",
        "|---|---|",
    ]
    lines += [f"| {s['sample_id']} | {s['reason'].replace('|', '/')} |" for s in sk[:limit]]
    if len(sk) > limit:
        lines.append(f"\n… and {len(sk) - limit} more: the full list is in metrics.json (`skipped`).")
    return lines


def _precision_section(doc: dict) -> list[str]:
    """What each lower-precision run executes: compute ops per precision, artifact size vs
    its fp32 source, calibration set and the layers an INT8 model keeps in float."""
    lines = []
    for r in doc["runs"]:
        eff = r.get("effective_precision") or {}
        a = r.get("artifact") or {}
        if r["precision"] == "fp32" and not a.get("reference"):
            continue
        parts = []
        if eff.get("compute_ops"):
            parts.append("compute ops " + ", ".join(f"{k} {v}" for k, v in sorted(eff["compute_ops"].items())))
        if a.get("reference"):
            parts.append(f"artifact {a['bytes'] / 1e6:.1f} MB vs fp32 {a['reference']['bytes'] / 1e6:.1f} MB")
        if a.get("calibration"):
            c = a["calibration"]
            where = f"split {', '.join(c['splits'])}" if c.get("splits") else "the calibration split"
            parts.append(f"calibrated on {c['n']} samples of {where} (disjoint from the evaluated samples)")
        q = a.get("quantization") or {}
        if q.get("max_drop") is not None:
            parts.append(
                f"accuracy control: {q['metric']} {q['fp32_metric']:.4f} → {q['int8_metric']:.4f} on the calibration "
                f"split (max drop {q['max_drop']})"
            )
        kept = eff.get("kept_in_float", q.get("kept_in_float"))
        if kept:
            parts.append(f"{len(kept)} layer(s) kept in float: {', '.join(kept[:8])}{' ...' if len(kept) > 8 else ''}")
        if parts:
            lines.append(f"- {r['name']}: " + "; ".join(parts))
    return ["", "## Precision", ""] + lines if lines else []


def write_predictions(path: str | Path, df: pd.DataFrame, targets: np.ndarray) -> None:
    """predictions/<run>.parquet: one row per sample (ids, target, probs, timing, worker).

    ``path`` may be a URI (s3://, gs://, file://) as well as a local path.
    """
    import pyarrow as pa

    probs = np.stack(df["probs"].to_numpy()).astype(np.float32)
    k = probs.shape[1]
    cols = {
        "sample_id": pa.array(df["sample_id"].astype(str)),
        "target": pa.array(targets.tolist()),
        "probs": pa.FixedSizeListArray.from_arrays(pa.array(probs.ravel()), k),
        "batch_uid": pa.array(df["batch_uid"].astype(str)),
        "batch_ms": pa.array(df["batch_ms"].astype(float)),
        "batch_size": pa.array(df["batch_size"].astype(int)),
        "node_id": pa.array(df["node_id"].astype(str)),
        "worker_pid": pa.array(df["worker_pid"].astype(int)),
    }
    medray_io.write_parquet(pa.table(cols), str(path))


def write_outputs(out: str | Path, config: dict, doc: dict, results: list[RunResult], table=None, samples=None) -> None:
    """Write the four outputs of the contract into ``out`` (a local path or a URI that
    pyarrow opens: s3://, gs://, file://; see :mod:`medray.io`)."""
    import yaml

    out = medray_io.normalize(str(out))
    medray_io.makedirs(out)
    medray_io.write_text(medray_io.join(out, "config.yaml"), yaml.safe_dump(config, sort_keys=False))
    medray_io.write_text(medray_io.join(out, "metrics.json"), json.dumps(doc, indent=2, default=json_default))
    medray_io.write_text(medray_io.join(out, "report.md"), render_report(doc))
    for r in results:
        t = _targets(table, samples, r.predictions["sample_id"]) if table is not None else np.zeros(len(r.predictions))
        write_predictions(medray_io.join(out, "predictions", f"{r.spec.name}.parquet"), r.predictions, t)


def json_default(o):
    """``json.dumps`` fallback for numpy scalars/arrays (and anything else as str)."""
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


# --------------------------------------------------------------------------- segmentation


def _sec(ms: float | None) -> str:
    return "–" if ms is None else f"{ms / 1e3:.3f}s"


def _dice(x: float | None) -> str:
    return "–" if x is None else f"{x:.4f}"


def render_segmentation_report(doc: dict) -> str:
    """report.md of a segmentation run: summary, per-class Dice, and seed 003's per-case table."""
    ds, sw = doc["dataset"], doc["sliding_window"]
    runs = doc["runs"]
    base = next((r for r in runs if r["role"] == "baseline"), None)
    cand = [r for r in runs if r["role"] == "candidate"]
    pp = ds.get("preprocessing") or {}
    norm = {"window": f"CT window [{pp.get('a_min')}, {pp.get('a_max')}] → [{pp.get('b_min')}, {pp.get('b_max')}]",
            "zscore": "z-score over non-zero voxels per channel", "none": "none"}.get(pp.get("intensity"), "?")
    lines = [
        f"# medray segmentation — {ds['name']}",
        "",
        f"{ds['n_samples']} cases of split `{ds['split']}` ({ds['n_labelled']} with labels), "
        f"classes {', '.join(ds['classes'])} (background excluded from Dice), modality {', '.join(ds.get('modality') or [])}.",
        f"Preprocessing: orientation {pp.get('orientation') or 'as stored'}, spacing "
        f"{pp.get('spacing') or 'as stored'}, intensity {norm}. Sliding window: ROI {'×'.join(map(str, sw['roi_size'] or []))}, "
        f"overlap {sw['overlap']}, {sw['sw_batch_size']} windows per backend call, {sw['mode']} blending.",
        "Latency per case = sum of the backend calls for the case's windows (warm-up excluded); the sliding-window "
        "time adds window slicing and blending. Dice in the model's voxel space (labels resampled with nearest neighbour).",
        "",
        "| Dataset | Model | Latency per case | Sliding window per case | Speed-up | Dice vs labels | Dice vs baseline | Throughput (cases/s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        sp, ag = r.get("speedup"), r.get("agreement")
        speed = "–" if not sp or sp.get("factor") is None else f"{sp['factor']:.2f}× ({sp['latency_reduction_pct']:.1f}%)"
        model = f"{'Baseline' if r['role'] == 'baseline' else 'Candidate'} {r['name']} (sw{r['batch_size']}×{r['streams']})"
        lines.append(
            f"| {ds['name']} | {model} | {_sec(r['latency_ms']['per_sample_mean'])} | "
            f"{_sec(r['sliding_window_ms']['per_sample_mean'])} | {speed} | {_dice(r['metrics'].get('dice_mean'))} | "
            f"{_dice(ag['dice_mean']) if ag else '–'} | {r['throughput_sps']:.2f} |"
        )
    lines += ["", "## Dice per class", "", "| Class | " + " | ".join(f"{r['name']} vs labels" for r in runs)
              + "".join(f" | {r['name']} vs baseline" for r in cand) + " |"]
    lines.append("|---" * (1 + len(runs) + len(cand)) + "|")
    for c in ds["classes"]:
        cells = [_dice(r["metrics"].get("dice_per_class", {}).get(c)) for r in runs]
        cells += [_dice((r.get("agreement") or {}).get("dice_per_class", {}).get(c)) for r in cand]
        lines.append(f"| {c} | " + " | ".join(cells) + " |")
    for r in cand:
        a = r.get("agreement")
        if a:
            lines.append(
                f"\n{r['name']} vs baseline: voxel agreement mean {_pct(a['voxel_agreement_mean'])}%, min "
                f"{_pct(a['voxel_agreement_min'])}%; lowest per-case Dice {_dice(a['dice_case_min'])} over {a['n']} cases."
            )
    if base is not None and cand:
        c0 = cand[0]
        lines += [
            "",
            f"## Per case ({base['name']} vs {c0['name']})",
            "",
            "| Subject | Shape | Baseline latency | Candidate latency | Speed-up | Dice vs baseline (mean) | "
            "Dice vs labels (baseline) | Dice vs labels (candidate) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        bn, cn = base["name"], c0["name"]
        for case in doc.get("cases", []):
            bl, cl = case.get("latency_ms:" + bn), case.get("latency_ms:" + cn)
            sp = f"{bl / cl:.2f}×" if bl and cl else "–"
            lines.append(
                f"| {case['sample_id']} | {list(case.get('shape') or [])} | {_sec(bl)} | {_sec(cl)} | {sp} | "
                f"{_dice(case.get('dice_vs_baseline:' + cn))} | {_dice(case.get('dice:' + bn))} | "
                f"{_dice(case.get('dice:' + cn))} |"
            )
    else:
        r0 = runs[0] if runs else None
        if r0 is not None:
            lines += ["", f"## Per case ({r0['name']})", "", "| Subject | Shape | Latency | Dice vs labels |", "|---|---|---|---|"]
            n0 = r0["name"]
            for case in doc.get("cases", []):
                lines.append(f"| {case['sample_id']} | {list(case.get('shape') or [])} | "
                             f"{_sec(case.get('latency_ms:' + n0))} | {_dice(case.get('dice:' + n0))} |")
    lines += ["", "## Runs", "", "| Run | Latency p50 / p95 per case | Per window | Windows per case | Wall (s) | Pool | Executed precision | Artifact |"]
    lines.append("|---|---|---|---|---|---|---|---|")
    for r in runs:
        a = r.get("artifact")
        art = "–" if not a else f"{a['bytes'] / 1e6:.1f} MB, build {a['build_s']:.1f}s{' (cache hit)' if a.get('cache_hit') else ''}"
        p = r["pool"]
        lat = r["latency_ms"]
        pw = "–" if lat.get("per_window_mean") is None else f"{lat['per_window_mean']:.1f} ms"
        lines.append(
            f"| {r['name']} | {_sec(lat['per_sample_p50'])} / {_sec(lat['per_sample_p95'])} | {pw} | "
            f"{_num(r.get('windows_per_case_mean'), '{:.1f}')} | {r['wall_s']:.1f} | "
            f"{p['actors']}×({p['num_cpus']:g} CPU, {p['threads']} thr) | "
            f"{(r.get('effective_precision') or {}).get('executed', '?')} | {art} |"
        )
    lines.append("\nMasks (uint8 label maps in the model's voxel space, .npz): `predictions/<run>_masks/`.")
    if doc.get("skipped"):
        lines += _skipped_section(doc)
    if doc.get("warnings"):
        lines += ["", "## Warnings", ""] + [f"- **{w}**" for w in doc["warnings"]]
    return "\n".join(lines) + "\n"


def write_segmentation_predictions(path: Path, df: pd.DataFrame, classes: list[str]) -> None:
    """predictions/<run>.parquet of a segmentation run: one row per case."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = len(df)
    dice = np.stack(df["dice"].to_numpy()) if n else np.zeros((0, len(classes)))
    cols: dict[str, Any] = {"sample_id": pa.array(df["sample_id"].astype(str) if n else [], pa.string())}
    for j, c in enumerate(classes):
        cols[f"dice_{c}"] = pa.array(dice[:, j].astype(np.float64), pa.float64())
    with np.errstate(all="ignore"):
        cols["dice_mean"] = pa.array([float(np.nanmean(d)) if np.isfinite(d).any() else np.nan for d in dice], pa.float64())
    if "dice_vs_baseline" in df.columns:
        vb = np.stack([np.asarray(v, dtype=np.float64) if isinstance(v, np.ndarray) else np.full(len(classes), np.nan)
                       for v in df["dice_vs_baseline"]]) if n else np.zeros((0, len(classes)))
        for j, c in enumerate(classes):
            cols[f"dice_vs_baseline_{c}"] = pa.array(vb[:, j], pa.float64())
        cols["voxel_agreement"] = pa.array(df["voxel_agreement"].astype(float) if n else [], pa.float64())
    for k in ("orig_shape", "model_shape"):
        v = np.stack(df[k].to_numpy()).astype(np.int64) if n else np.zeros((0, 3), np.int64)
        cols["shape" if k == "orig_shape" else k] = pa.FixedSizeListArray.from_arrays(pa.array(v.ravel()), 3)
    for k in ("orig_spacing", "spacing"):
        v = np.stack(df[k].to_numpy()).astype(np.float64) if n else np.zeros((0, 3))
        cols[k] = pa.FixedSizeListArray.from_arrays(pa.array(v.ravel()), 3)
    for k, t in (("has_label", pa.bool_()), ("latency_ms", pa.float64()), ("sw_ms", pa.float64()), ("n_calls", pa.int64()),
                 ("n_windows", pa.int64()), ("mask_file", pa.string()), ("node_id", pa.string()), ("worker_pid", pa.int64())):
        cols[k] = pa.array(df[k].tolist() if n else [], t)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(cols), path)


def write_segmentation_outputs(out: Path, config: dict, doc: dict, results: list) -> None:
    """config.yaml, metrics.json, report.md and predictions/<run>.parquet (+ <run>_masks/)."""
    import yaml

    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    (out / "metrics.json").write_text(json.dumps(doc, indent=2, default=json_default))
    (out / "report.md").write_text(render_segmentation_report(doc))
    for r in results:
        write_segmentation_predictions(out / "predictions" / f"{r.spec.name}.parquet", r.predictions, doc["dataset"]["classes"])
