"""task=segmentation's part of metrics.json: Dice / HD95 / surface Dice per run, the
candidate's masks vs the baseline's, the per-case table, subgroups, and the sweep's
statistics of mean Dice."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from medray.tasks.segmentation.masks import compare_masks

if TYPE_CHECKING:
    from medray.data.table import SampleTable
    from medray.results import RunResult
    from medray.tasks.base import RunConfig, SweepMetric


def run_metrics(result: RunResult, fg: list[str], tolerance_mm: float | None) -> dict[str, Any]:
    """The run's ``metrics`` over its labelled cases: Dice of the foreground labels or
    regions ``fg`` (``dice_mean``: each case's mean, then over cases), nnU-Net's per-label
    means and foreground mean of Dice / IoU / TP / FP / FN / n_pred / n_ref, HD95 / surface
    Dice at ``tolerance_mm``; the segmentation time, windows and peak memory per case."""
    from medray.metrics.segmentation import dice_summary, label_summary

    df = result.predictions
    labelled = df[df["has_label"].astype(bool)] if len(df) else df
    if len(labelled):
        metrics: dict[str, Any] = dice_summary(np.stack(labelled["dice"].to_numpy()), fg)
        if "counts" in labelled.columns:
            nn = label_summary(np.stack(labelled["counts"].to_numpy()), fg)
            metrics["per_label"], metrics["foreground_mean"] = nn["mean"], nn["foreground_mean"]
        if tolerance_mm is not None and "hd95" in labelled.columns:
            from medray.metrics.segmentation import surface_summary

            metrics.update(surface_summary(np.stack(labelled["hd95"].to_numpy()),
                                           np.stack(labelled["surface_dice"].to_numpy()), fg))
            metrics["surface_tolerance_mm"] = tolerance_mm
    else:
        metrics = {"dice_mean": None, "dice_per_class": {c: None for c in fg}}
    metrics["n_labelled"] = int(len(labelled))
    n_win = int(df["n_windows"].sum()) if len(df) else 0
    peak = df["peak_rss_mb"].astype(float) if len(df) and "peak_rss_mb" in df.columns else pd.Series(dtype=float)
    return {
        "metrics": metrics,
        "sliding_window_ms": latency(df["sw_ms"] if len(df) else []),
        "post_ms": latency(df["post_ms"] if len(df) and "post_ms" in df.columns else []),
        "windows_per_case_mean": float(df["n_windows"].mean()) if len(df) else None,
        # The actor's peak resident memory while it segmented each case (MiB).
        "memory": {"peak_rss_mb_max": float(peak.max()) if peak.notna().any() else None,
                   "peak_rss_mb_mean": float(peak.mean()) if peak.notna().any() else None},
        # merged into the run's latency_ms (backend time per window)
        "latency_ms": {"per_window_mean": float(df["latency_ms"].sum() / n_win) if n_win else None},
    }


# MLPerf 3D-UNet's acceptance: mean Dice at least these fractions of the fp32 baseline's.
ACCEPTANCE = (0.99, 0.999)


def acceptance(base: float | None, cand: float | None) -> dict[str, Any]:
    """The candidate's mean Dice vs labels as a fraction of the baseline's, and MLPerf
    3D-UNet's pass / fail at 99 % and 99.9 %."""
    if base is None or cand is None or not base > 0:
        return {"ratio": None, **{f"pass_{100 * a:g}": None for a in ACCEPTANCE}}
    ratio = cand / base
    return {"ratio": ratio, "dice_mean": cand, "baseline_dice_mean": base,
            **{f"pass_{100 * a:g}": bool(ratio >= a - 1e-12) for a in ACCEPTANCE}}


def compare(base: RunResult, cand: RunResult, fg: list[str], regions: list[tuple[int, ...]], base_entry: dict,
            cand_entry: dict) -> dict[str, Any]:
    """The candidate's masks vs the baseline's (Dice of the foreground labels or regions
    ``fg`` / ``regions``, voxel agreement), its Dice change and MLPerf's acceptance."""
    from medray.metrics.segmentation import dice_summary

    cmp = compare_masks(base, cand, regions)
    if len(cmp):
        s = dice_summary(np.stack(cmp["dice_vs_baseline"].to_numpy()), fg)
    else:
        s = {"dice_mean": None, "dice_per_class": {}, "dice_case_min": None}
    # Per-case Dice vs the baseline travels with the candidate's rows (predictions file).
    cand.predictions = cand.predictions.drop(columns=["dice_vs_baseline", "voxel_agreement"], errors="ignore").merge(
        cmp, on="sample_id", how="left")
    bm, cm = base_entry["metrics"].get("dice_mean"), cand_entry["metrics"].get("dice_mean")
    accept = acceptance(bm, cm)
    return {
        "acceptance": accept,
        "agreement": {
            "dice_mean": s["dice_mean"],
            "dice_per_class": s["dice_per_class"],
            "dice_case_min": s["dice_case_min"],
            "voxel_agreement_mean": float(cmp["voxel_agreement"].mean()) if len(cmp) else None,
            "voxel_agreement_min": float(cmp["voxel_agreement"].min()) if len(cmp) else None,
            "n": int(len(cmp)),
        },
        "metric_deltas": {"dice_mean": (cm - bm) if cm is not None and bm is not None else None,
                          "dice_relative": None if accept["ratio"] is None else accept["ratio"] - 1.0},
    }


def extras(cfg: RunConfig, doc: dict, results: list[RunResult], table: SampleTable, samples: pd.DataFrame,
           settings: dict) -> None:
    """``sliding_window`` (as configured and as the model's recipe resolved it), ``cases``
    (seed 003's per-case table) and the subgroups."""
    from medray.io import as_dict
    from medray.metrics.segmentation import case_mean, fmt
    from medray.tasks.subgroups import subgroup_columns

    doc["sliding_window"] = {**as_dict(cfg.sliding_window), **{k: v for k, v in settings.items()},
                             "configured": as_dict(cfg.sliding_window),
                             "roi_size": list(results[0].spec.model.spatial) if results else None}
    cases = {sid: {"sample_id": sid} for sid in samples["sample_id"]}
    for r in results:
        for row in r.predictions.itertuples(index=False):
            c = cases[row.sample_id]
            c["shape"] = [int(v) for v in row.orig_shape]
            c["model_shape"] = [int(v) for v in row.model_shape]
            c[f"latency_ms:{r.spec.name}"] = float(row.latency_ms)
            c[f"peak_rss_mb:{r.spec.name}"] = fmt(float(getattr(row, "peak_rss_mb", np.nan)))
            c[f"dice:{r.spec.name}"] = fmt(case_mean(row.dice)) if row.has_label else None
            if r.spec.role == "candidate" and "dice_vs_baseline" in r.predictions.columns:
                v = row.dice_vs_baseline
                c[f"dice_vs_baseline:{r.spec.name}"] = fmt(case_mean(v)) if isinstance(v, np.ndarray) else None
    doc["cases"] = [c for c in cases.values() if "shape" in c]  # skipped cases are listed under "skipped"
    columns = subgroup_columns(cfg, table)
    if columns:
        subgroups(doc, results, samples, columns, cfg.report.min_subgroup_size)


def subgroups(doc: dict, results: list[RunResult], samples: pd.DataFrame, columns: list[str], min_n: int) -> None:
    """Per metadata group: labelled cases, mean Dice vs labels; candidates add the change
    vs the baseline and ``worst_subgroup`` (same keys as classification's, Dice for AUC)."""
    from medray.metrics.segmentation import case_mean
    from medray.tasks.subgroups import subgroup_changes

    meta = samples.set_index("sample_id")
    per_run = {}
    for r in results:
        df = r.predictions[r.predictions["has_label"].astype(bool)] if len(r.predictions) else r.predictions
        scores = pd.Series({s: case_mean(d) for s, d in zip(df["sample_id"], df["dice"])}, dtype=float)
        out = {}
        for col in columns:
            g = meta.loc[scores.index, col].astype(str) if len(scores) else pd.Series(dtype=str)
            rows = []
            for name in sorted(set(g)):
                v = scores[g == name].dropna()
                if len(v) >= min_n:
                    rows.append({"group": name, "n": int(len(v)), "dice_mean": float(v.mean())})
                else:  # listed with its n (report.min_subgroup_size), never dropped
                    rows.append({"group": name, "n": int(len(v)), "dice_mean": None, "small": True})
            out[col] = rows
        per_run[r.spec.name] = out
    base = next((r.spec.name for r in results if r.spec.role == "baseline"), None)
    for entry in doc["runs"]:
        entry["subgroups"] = per_run.get(entry["name"], {})
        if entry["role"] != "candidate" or base is None:
            continue
        subgroup_changes(entry, per_run[base], "dice_mean", "dice_baseline", "delta_dice")


def statistics(metrics: tuple[SweepMetric, ...], cfg: RunConfig, base: pd.DataFrame, cand: pd.DataFrame) -> dict[str, Any]:
    """The sweep's statistics: mean Dice vs the labels over the labelled cases (per-case
    means, NaN classes skipped), paired bootstrap, non-inferiority at the constraint."""
    from medray.metrics.statistics import Comparison, aligned, compare_metric

    base, cand = (d[d["has_label"].astype(bool)] for d in (base, cand))
    ids = pd.Index(sorted(set(base["sample_id"].astype(str)) & set(cand["sample_id"].astype(str))))
    sw = cfg.sweep
    out: dict[str, Any] = {"n": int(len(ids))}
    with np.errstate(all="ignore"):
        b, k = (np.nanmean(aligned(d, ids, "dice"), axis=1) for d in (base, cand))
    y = np.zeros(len(ids))
    for m in metrics:
        how = Comparison(getattr(cfg.constraints, m.constraint), sw.bootstrap_samples, sw.confidence, sw.seed)
        out[m.key] = compare_metric(y, b, k, "segmentation", "mean", how)
    return out


def latency(values) -> dict:
    """p50 / p95 / mean of per-case times (ms); None when there are none."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return {"per_sample_p50": None, "per_sample_p95": None, "per_sample_mean": None}
    return {"per_sample_p50": float(np.percentile(v, 50)), "per_sample_p95": float(np.percentile(v, 95)),
            "per_sample_mean": float(v.mean())}
