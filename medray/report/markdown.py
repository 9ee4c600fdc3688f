"""``report.md``: the task's sections, then the sections every run has.

The task renders its title, main table and task sections
(:meth:`medray.tasks.base.Task.render`); the runs table (with the task's latency
columns), resumed runs, the precision really executed, skipped samples and warnings are
the same for every task.
"""

from __future__ import annotations

from medray.format import cell
from medray.report.expected import render_expected
from medray.report.repair import section as repair_section


def render_report(doc: dict, task=None) -> str:
    """report.md of a metrics document (any task; ``task``: the task object that wrote it)."""
    from medray.tasks import task_of_document

    task = task or task_of_document(doc)
    lines = task.render(doc)
    lines[1:1] = render_expected(doc.get("expected"))  # the first section, right under the title
    lines += model_lines(doc.get("model"))
    lines += runs_table(doc, task)
    for r in doc["runs"]:
        if r.get("resumed"):
            lines.append(
                f"\n{r['name']}: resumed — {r['resumed']['from_previous']} samples from the interrupted run, "
                f"{r['resumed']['processed']} evaluated now (latency covers both; throughput and wall the latter)."
            )
    lines += precision_section(doc)
    lines += repair_section(doc)
    if doc.get("skipped"):
        lines += skipped_section(doc)
    if doc.get("warnings"):
        lines += ["", "## Warnings", ""] + [f"- **{w}**" for w in doc["warnings"]]
    return "\n".join(lines) + "\n"


def model_lines(m: dict | None) -> list[str]:
    """The model evaluated and its preprocessing, spelled out (what a reviewer checks first)."""
    if not m:
        return []
    what = {"timm": f"architecture `{m['arch']}`, weights `{m.get('checkpoint')}`", "python": f"`{m.get('target')}`, "
            f"weights `{m.get('checkpoint')}`"}.get(m["source"], f"{m['source']} file `{m.get('path')}`")
    lines = ["", "## Model", "", f"- {what}; outputs: {m['outputs']} {m['output']}; input {tuple(m['input_shape'])}"]
    p = m.get("preprocessing")
    if p and "size" not in p:  # a 3-D model's volume preprocessing
        lines.append("- preprocessing: " + ", ".join(f"{k} {v}" for k, v in p.items()))
    elif p:
        resize = {"squash": "squashed to", "shorter_crop": f"shorter side to {int(p['size'][0] / p['crop_pct'])}, centre crop",
                  "letterbox": "letterboxed to", "xrv": "centre square (xrv), scikit-image resized to"}[p["resize"]]
        floor = ", crop offset floor" if p.get("crop_offset") == "floor" else ""
        lines.append(
            f"- preprocessing `{p['name']}`: {p['color']}, {resize} {p['size'][0]}×{p['size'][1]} ({p['interpolation']}, "
            f"crop_pct {p['crop_pct']:g}{floor}), mean {[round(v, 4) for v in p['mean']]}, std {[round(v, 6) for v in p['std']]}, "
            f"{p['layout'].upper()}, {'exact decode' if p['exact'] else 'reduced-scale JPEG decode allowed'}"
            + (f"; as {p['reference']}" if p.get("reference") else "")
        )
    return lines + label_lines(m)


def label_lines(m: dict) -> list[str]:
    """How the model's outputs were matched to the dataset's classes, and xrv's operating points."""
    lab, out = m.get("labels"), []
    if lab:
        renamed = ", ".join(f"{a} → {b}" for a, b in lab["renamed"].items())
        out.append(f"- outputs matched by name: {len(lab['scored'])} class(es) scored" + (f" ({renamed})" if renamed else "")
                   + (f"; **not scored** (the model has no output for them): {', '.join(lab['not_scored'])}"
                      if lab["not_scored"] else "")
                   + (f"; outputs not used: {', '.join(lab['unused'])}" if lab["unused"] else ""))
    if m.get("operating_points"):
        out.append(f"- operating points: {m['operating_points']}")
    return out


def runs_table(doc: dict, task) -> list[str]:
    """One row per run: the task's latency columns, the two throughputs (end to end — the slower
    stage while both run — and the inference stage's capacity), start-up, wall time, pool,
    executed precision, artifact."""
    rows = []
    for r in doc["runs"]:
        a = r.get("artifact")
        art = "–" if not a else f"{a['bytes'] / 1e6:.1f} MB, build {a['build_s']:.1f}s{' (cache hit)' if a.get('cache_hit') else ''}"
        p = r["pool"]
        eff = (r.get("effective_precision") or {}).get("executed", "?")
        cap, start = r.get("inference_sps"), r.get("startup_s")
        rows.append({"Run": r["name"], **task.runs_columns(r),
                     "Throughput / capacity (per s)": f"{r['throughput_sps']:.1f} / {'–' if cap is None else f'{cap:.1f}'}",
                     "Start-up (s)": "–" if start is None else f"{start:.1f}", "Wall (s)": f"{r['wall_s']:.1f}",
                     "Pool": f"{p['actors']}×({p['num_cpus']:g} CPU, {p['threads']} thr)"
                             + (f", ≤{p['read_tasks']} reads" if p.get("read_tasks") else ""), "Executed precision": eff,
                     "Artifact": art})
    if not rows:
        return []
    head = list(rows[0])
    return ["", "## Runs", "", "| " + " | ".join(head) + " |", "|---" * len(head) + "|"] + [
        "| " + " | ".join(cell(row[h]) for h in head) + " |" for row in rows
    ]


def skipped_section(doc: dict, limit: int = 200) -> list[str]:
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
    lines += [f"| {cell(s['sample_id'])} | {cell(s['reason'])} |" for s in sk[:limit]]
    if len(sk) > limit:
        lines.append(f"\n… and {len(sk) - limit} more: the full list is in metrics.json (`skipped`).")
    return lines


def precision_section(doc: dict) -> list[str]:
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


