"""Sweep outputs: ``sweep.json``, ``sweep.md`` (the table), ``pareto.png``.

``sweep.json``: ``dataset``, ``baseline`` (its run entry), ``grid``, ``constraints``,
``objective``, ``trials[]`` (one record per trial: configuration, status/error,
throughput, latency, metrics, deltas vs the baseline, agreement, ``violations``,
``feasible``, ``pareto``), ``pareto`` (trial ids), ``recommended`` (the record plus
``reproduce`` and ``statistics``), ``status`` (complete | interrupted), ``wall_s``.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import pandas as pd

from medray.io import as_dict
from medray.report.writers import json_default
from medray.specs import RunName
from medray.tasks import task_of_document
from medray.tune import select
from medray.tune.config import SweepJobConfig
from medray.tune.trials import PREDICTIONS, expected_trials, trial_eval_config

log = logging.getLogger("medray.tune")



def _nan_to_none(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _nan_to_none(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_nan_to_none(v) for v in x]
    return x


# --------------------------------------------------------------------------- statistics


def statistics(cfg: SweepJobConfig, table, samples: pd.DataFrame, baseline, trial: dict, task) -> dict:
    """Bootstrap CIs for baseline and recommended, paired tests of the differences and
    non-inferiority at the constraint margins, of the task's sweep metrics
    (:meth:`medray.tasks.base.Task.statistics`)."""
    from medray.io import read_frame

    cand = read_frame(Path(trial["checkpoint"]) / PREDICTIONS)
    return _nan_to_none(task.statistics(cfg, table, samples, baseline.predictions, cand))


# --------------------------------------------------------------------------- markdown


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.2f}"


def _pp(x) -> str:
    return "–" if x is None else f"{100 * x:+.2f}"


def _num(x, fmt="{:.1f}") -> str:
    return "–" if x is None else fmt.format(x)


def _sort_key(t: dict):
    ok = t.get("status") == "ok"
    return (0 if ok else 1, -(t.get("throughput_sps") or 0.0), t["label"])


def render(doc: dict) -> str:
    """sweep.md: one row per trial, fastest first; Pareto members and violations marked."""
    ds, base = doc["dataset"], doc["baseline"]
    c = doc["constraints"]
    rec_id = (doc.get("recommended") or {}).get("trial_id")
    # Only the limits that apply to the task (its sweep metrics', agreement, subgroups).
    task = task_of_document(doc)
    mine = {m.constraint for m in task.sweep_metrics} | {"min_agreement", "max_nonfinite"}
    if task.subgroup_delta:
        mine.add("max_subgroup_auc_drop")
    applies = {k: v for k, v in c.items() if v is not None and k in mine}
    limits = ", ".join(f"{k}={v:g}" for k, v in applies.items()) or "none"
    metrics = [(m.key, m.label) for m in task.sweep_metrics]
    unit = task.rate_unit
    primary = metrics[0][1]
    factor_key = "capacity_factor" if doc["objective"] == "capacity" else "throughput_factor"
    lines = [
        f"# medray sweep — {ds['name']}",
        "",
        f"{len(doc['trials'])} trials over {ds['n_samples']} samples of split `{ds['split']}` ({ds['task']}); "
        f"device {doc['device']}; objective **{doc['objective']}** subject to {limits}.",
        f"Baseline **{base['name']}** (b{base['batch_size']}×{base['streams']}): {base['throughput_sps']:.1f} {unit}, "
        + ", ".join(f"{label} {_pct(base['metrics'].get(key))}%" for key, label in metrics) + ".",
    ]
    if doc["status"] != "complete":
        lines += ["", f"**Interrupted**: {doc['n_unfinished']} trial(s) did not finish; "
                      "rerun the same command with `sweep.resume=true` to complete the sweep."]
    cols = "".join(f" | {label} (%) | Δ{label} (pp)" for _, label in metrics)
    lines += [
        "",
        f"Pareto = not dominated on (objective, {primary} drop); ✗ = violates a constraint. "
        "Throughput = end to end (the slower of reading and inference while both run, start-up apart); "
        "capacity = what the inference stage takes if fed; × baseline on the objective's rate; "
        "latency = backend time per sample.",
        "",
        f"| # | Configuration | Throughput ({unit}) | Capacity ({unit}) | × baseline | Latency p50 / p95 (ms){cols} "
        "| Agreement (%) | Pareto | Constraints |",
        "|---" * (9 + 2 * len(metrics)) + "|",
    ]
    ok = sorted((t for t in doc["trials"] if t.get("status") == "ok"), key=_sort_key)
    for i, t in enumerate(ok, 1):
        m, d, lat = t.get("metrics") or {}, t.get("deltas") or {}, t.get("latency_ms") or {}
        factor = (t.get("speedup") or {}).get(factor_key)
        name = f"**{t['label']}** (recommended)" if t["trial_id"] == rec_id else t["label"]
        cons = "ok" if not t["violations"] else "✗ " + "; ".join(t["violations"])
        vals = "".join(f" | {_pct(m.get(key))} | {_pp(d.get(key))}" for key, _ in metrics)
        lines.append(
            f"| {i} | {name} | {_num(t.get('throughput_sps'))} | {_num(t.get('inference_sps'))} | {_num(factor, '{:.2f}×')} | "
            f"{_num(lat.get('per_sample_p50'), '{:.2f}')} / {_num(lat.get('per_sample_p95'), '{:.2f}')}{vals} | "
            f"{_pct(select.agreement_value(t))} | {'★' if t.get('pareto') else ''} | {cons} |"
        )
    bad = [t for t in doc["trials"] if t.get("status") != "ok"]
    if bad:
        lines += ["", "## Trials without a result", "", "| Configuration | Status | Reason |", "|---|---|---|"]
        for t in sorted(bad, key=lambda t: t["label"]):
            reason = (t.get("error") or "").replace("|", "\\|").replace("\n", " ")
            lines.append(f"| {t['label']} | {t['status']} | {reason[:400]} |")
    lines += ["", "## Recommendation", ""]
    rec = doc.get("recommended")
    if rec is None:
        lines.append(f"No configuration recommended: {doc['selection']['reason']}.")
    else:
        lines += [
            f"**{rec['label']}** — {rec['throughput_sps']:.1f} {unit} end to end, capacity {_num(rec.get('inference_sps'))} "
            f"{unit} ({_num((rec.get('speedup') or {}).get(factor_key), '{:.2f}×')} the baseline on {doc['objective']}), "
            f"Δ{primary} {_pp(rec['deltas'].get(metrics[0][0]))} pp, agreement {_pct(select.agreement_value(rec))}%.",
            "",
            "Reproduce with the evaluate job (same samples, same config):",
            "",
            "```bash",
            rec["reproduce"]["command"],
            "```",
        ]
        if not rec["reproduce"]["verified"]:
            lines.append(f"\n(Not verified: {rec['reproduce']['note']})")
        st = rec.get("statistics")
        if st and st.get("error"):
            lines += ["", f"Statistics could not be computed: {st['error']}"]
        elif st:
            lines += ["", f"### Statistics ({st['n']} paired samples)", "",
                      "| Metric | Baseline [CI] | Recommended [CI] | Difference [CI] | p | Test | Non-inferiority |",
                      "|---|---|---|---|---|---|---|"]
            for key, label in metrics:
                s = st.get(key)
                if not s:
                    continue
                conf = f"{100 * s['confidence']:g}%"
                b, c_, d = s["baseline"], s["candidate"], s["difference"]
                lines.append(
                    f"| {label} | {_pct(b['estimate'])} [{_pct(b['ci'][0])}, {_pct(b['ci'][1])}] | "
                    f"{_pct(c_['estimate'])} [{_pct(c_['ci'][0])}, {_pct(c_['ci'][1])}] | "
                    f"{_pp(d['difference'])} [{_pp(d['ci'][0])}, {_pp(d['ci'][1])}] pp | "
                    f"{_num(d.get('p_value'), '{:.3g}')} | {d['method']} | {s['verdict']} |"
                )
            first = next((st[k] for k, _ in metrics if st.get(k)), {})
            unit = ("patients (images of one patient resampled together; DeLong not used)"
                    if first.get("resampling", "").startswith("patients") else "samples")
            lines.append(f"\nIntervals are {conf}; CIs of each run by percentile bootstrap "
                         f"({doc['bootstrap_samples']} resamples of {unit}); non-inferior = lower bound of the "
                         "difference above −margin (the constraint).")
    if doc.get("plot"):
        lines += ["", f"![Pareto front]({doc['plot']})"]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- plot


def plot(doc: dict, path: Path) -> bool:
    """Throughput (or latency) against AUC drop: every trial, the front, the choice."""
    from medray.figures import figure

    metric = doc["selection"]["primary_metric"]
    objective = doc["objective"]
    ok = [t for t in doc["trials"] if t.get("status") == "ok"]
    if not ok:
        return False

    def xy(t):
        drop = select.metric_drop(t, metric)
        v = select.objective_value(t, objective)
        return (None if drop is None else 100 * drop), (None if v is None else abs(v))

    plt, fig, axes = figure(1, 1, (7.5, 5))
    ax = axes[0][0]
    for t in ok:
        x, y = xy(t)
        if x is None or y is None:
            continue
        style = dict(marker="o", color="tab:blue") if t["feasible"] else dict(marker="x", color="tab:red")
        ax.scatter([x], [y], s=40, **style, zorder=3)
        ax.annotate(t["label"], (x, y), fontsize=7, xytext=(4, 3), textcoords="offset points")
    front = sorted((xy(t) for t in ok if t.get("pareto")), key=lambda p: p[0])
    if front:
        ax.plot([p[0] for p in front], [p[1] for p in front], "-", color="tab:green", lw=1.5, zorder=2)
        ax.scatter([p[0] for p in front], [p[1] for p in front], s=140, facecolors="none", edgecolors="tab:green",
                   lw=1.5, zorder=2, label="Pareto front")
    base = doc["baseline"]
    base_v = select.objective_value(base, objective)
    if objective in ("throughput", "capacity") and base_v:
        ax.scatter([0.0], [base_v], marker="D", color="grey", zorder=3, label=f"baseline {base['name']} b{base['batch_size']}")
    rec = doc.get("recommended")
    if rec:
        x, y = xy(rec)
        ax.scatter([x], [y], marker="*", s=260, color="gold", edgecolor="black", zorder=4, label="recommended")
    task = task_of_document(doc)
    primary = next(m for m in task.sweep_metrics if m.key == metric)
    c = doc["constraints"].get(primary.constraint)
    if c is not None:
        ax.axvline(100 * c, color="grey", ls="--", lw=1, label=f"max drop {100 * c:g} pp")
    ax.scatter([], [], marker="x", color="tab:red", label="violates a constraint")
    ax.set_xlabel(f"{primary.label} drop vs baseline (percentage points)")
    ylabel = {"throughput": "end-to-end throughput (samples/s)", "capacity": "inference capacity (samples/s)"}
    ax.set_ylabel(ylabel.get(objective, f"latency {objective} (ms/sample)"))
    ax.set_title(f"medray sweep — {doc['dataset']['name']}, baseline {doc['baseline']['name']}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


# --------------------------------------------------------------------------- entry


def _read_cache_summary(baseline, records: list[dict]) -> dict | None:
    base = baseline.read_cache
    trials = [t["read_cache"] for t in records if t.get("status") == "ok" and t.get("read_cache")]
    if base is None and not trials:
        return None
    out = {"baseline": base, "trial_hits": sum(t["hits"] for t in trials), "trial_misses": sum(t["misses"] for t in trials)}
    log.info("decoded cache: baseline decoded %s samples; the %d trials read %d from the cache and decoded %d",
             None if base is None else base["misses"], len(trials), out["trial_hits"], out["trial_misses"])
    return out


def finish(shared, out: Path, records: list[dict], interrupted: bool, wall_s: float, choices: dict | None) -> dict:
    """Select, test, write the outputs; returns the sweep.json document.  ``shared``: what
    the trials shared (:class:`medray.tune.runner.Shared`: config, dataset, baseline, task)."""
    import yaml

    cfg, task, table, samples, baseline = shared.cfg, shared.task, shared.table, shared.samples, shared.baseline
    prep_errors = shared.prep_errors

    from medray.report.document import run_entry

    selection = select.select(records, cfg.constraints, cfg.sweep.objective, cfg.task)
    base_entry = run_entry(baseline, table, samples, task)
    base_entry["metrics"] = {k: v for k, v in base_entry["metrics"].items() if isinstance(v, (int, float)) or v is None}
    rec = next((t for t in records if t["trial_id"] == selection["recommended"]), None)
    if rec is not None:
        rec = dict(rec)
        point = {"run": str(RunName(rec["backend"], rec["precision"])), "batch_size": rec["batch_size"],
                 "streams": rec["streams"]}
        point.update({k: rec[k] for k in ("overlap", "sw_batch_size", "mirroring") if k in rec})
        target = trial_eval_config(cfg, point, with_baseline=True)
        rec["reproduce"] = select.reproduce_command(target, str(out / "reproduce"), choices)
        try:
            rec["statistics"] = statistics(cfg, table, samples, baseline, rec, task)
        except Exception as e:  # the table is still worth writing
            log.warning("statistics of the recommended configuration failed: %s", e)
            rec["statistics"] = {"error": f"{type(e).__name__}: {e}"}
    n_unfinished = expected_trials(cfg) - sum(1 for t in records if t.get("status") != "unfinished")
    doc = {
        "task": cfg.task,
        "dataset": {"name": table.name, "task": table.task, "n_samples": int(len(samples)),
                    "classes": list(table.classes), "split": cfg.data.split},
        "device": cfg.device,
        "baseline": base_entry,
        "grid": {"pairs": cfg.sweep.pairs(), "batch_sizes": list(cfg.sweep.batch_sizes),
                 "streams": list(cfg.sweep.streams), "search": cfg.sweep.search, "scheduler": cfg.sweep.scheduler},
        "constraints": as_dict(cfg.constraints),
        "objective": cfg.sweep.objective,
        "bootstrap_samples": cfg.sweep.bootstrap_samples,
        "selection": selection,
        "trials": records,
        "pareto": selection["pareto"],
        "recommended": rec,
        "prepare_errors": prep_errors,
        # Decode once: the baseline decodes (and caches) the samples, the trials read them back.
        "read_cache": _read_cache_summary(baseline, records),
        "status": "interrupted" if interrupted else "complete",
        "n_unfinished": n_unfinished,
        "wall_s": wall_s,
        "output_dir": str(out),
    }
    if plot(doc, out / "pareto.png"):
        doc["plot"] = "pareto.png"
    doc = _nan_to_none(json.loads(json.dumps(doc, default=json_default)))
    (out / "config.yaml").write_text(yaml.safe_dump(json.loads(json.dumps(as_dict(cfg), default=str)), sort_keys=False))
    (out / "sweep.json").write_text(json.dumps(doc, indent=2))
    (out / "sweep.md").write_text(render(doc))
    if interrupted:
        log.warning("sweep interrupted with %d unfinished trial(s); rerun with sweep.resume=true output_dir=%s",
                    n_unfinished, out)
    log.info("sweep: %d trials, %d ok, recommended %s; outputs in %s", len(records),
             sum(1 for t in records if t.get("status") == "ok"), rec["label"] if rec else None, out)
    return doc
