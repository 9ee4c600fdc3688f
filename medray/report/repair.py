"""The INT8 repair in the outputs: the validation-vs-test check (``runs[].repair_check`` of
metrics.json) and report.md's "INT8 repair" section, from ``runs[].artifact.repair``
(:func:`medray.backends.onnx.repair.report_section`)."""

from __future__ import annotations

from medray.format import cell, num

MAX_STEPS = 25


def _chosen(rep: dict) -> dict | None:
    return next((s for s in rep.get("fallback") or [] if s.get("passes")), None)


def validation_vs_test(entry: dict) -> dict | None:
    """The repair was chosen on the validation split; does each limit also hold on the
    evaluated split (the candidate against the run's baseline)?  None without a repair."""
    rep = (entry.get("artifact") or {}).get("repair")
    if not rep:
        return None
    chosen = _chosen(rep) or {}
    val, ref = chosen.get("metrics") or {}, rep.get("reference") or {}
    deltas, metrics = entry.get("metric_deltas") or {}, entry.get("metrics") or {}
    rows = []
    for g in rep.get("gate_list") or []:
        if g.get("subgroups"):
            rows.append({"gate": g["text"], "validation": "see the search", "test": "see runs[].subgroups", "holds": None})
            continue
        k = g["metric"]
        delta, cand = deltas.get(k), metrics.get(k)
        v_drop = ref[k] - val[k] if ref.get(k) is not None and val.get(k) is not None else None
        t_drop = -delta if delta is not None else None
        if g.get("max_drop") is not None:
            holds = None if t_drop is None else t_drop <= g["max_drop"] + 1e-12
        else:
            base = None if delta is None or cand is None else cand - delta
            holds = None if base is None else cand >= g["min_ratio"] * base - 1e-12
        rows.append({"gate": g["text"], "metric": k, "validation_drop": v_drop, "test_drop": t_drop, "holds": holds})
    known = [r["holds"] for r in rows if r["holds"] is not None]
    return {"chosen_on": "validation", "judged_on": "evaluated split vs the baseline run", "gates": rows,
            "holds": (all(known) if known else None)}


def _kept(rep: dict) -> str:
    kept = rep.get("kept")
    if kept is None:
        return "no INT8 layer set passed"
    if not kept:
        return "none: full INT8 passes the gate"
    names = ", ".join(f"`{k['onnx']}`" + (f" (torch module `{k['module']}`)" if k.get("module") else "") for k in kept[:12])
    more = f" and {len(kept) - 12} more" if len(kept) > 12 else ""
    return f"{len(kept)} of {rep['layers']} layers ({100 * rep['kept_fraction']:.1f} %): {names}{more}"


def _check(rep: dict) -> str:
    c = rep.get("check") or {}
    if not c:
        return "–"
    bits = [f"{c.get('how', '')}: {'ok' if c.get('ok') else 'FAILED'}"]
    if "kept_runtime_precision" in c:
        bits.append("runtime precision " + ", ".join(f"`{k}` {v}" for k, v in c["kept_runtime_precision"].items()))
    if "int8_layers" in c:
        bits.append(f"{c['int8_layers']} layers int8")
    if c.get("collateral_float"):
        bits.append(f"also float (collateral): {', '.join(c['collateral_float'][:5])}")
    if "others_quantized" in c:
        bits.append(f"{c['others_quantized']} of {c['others']} other layers read Q/DQ inputs, "
                    f"{c['nonzero_zero_points']} non-zero zero points")
    return "; ".join(bits)


def _metrics(m: dict | None) -> str:
    if not m:
        return "–"
    return ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in m.items())


def _speed(sp: dict | None) -> str:
    if not sp:
        return "not measured (quantization.repair_bench=false)"
    if sp.get("skipped"):
        return sp["skipped"]
    lat = {k: v["median_ms"] for k, v in sp["latency_ms"].items()}
    return (f"{sp['what']}, batch {sp['batch']}: fp32 {lat['fp32']:.3f} ms, full INT8 {lat['int8_full']:.3f} ms, "
            f"repaired {lat['repaired']:.3f} ms (median) — the repaired model is {sp['repaired_vs_int8_full']}× the "
            f"speed of full INT8 and {sp['repaired_vs_fp32']}× fp32's")


def section(doc: dict) -> list[str]:
    """report.md's "INT8 repair" section (nothing when no run was repaired)."""
    lines: list[str] = []
    for r in doc.get("runs", []):
        rep = (r.get("artifact") or {}).get("repair")
        if not rep:
            continue
        v = rep["validation"]
        res = rep["search"]
        lines += [f"### {r['name']}", "",
                  f"- gate: {'; '.join(rep['gates'])}, on {v['n']} validation samples of split "
                  f"{', '.join(v.get('splits') or ['?'])} (never the evaluated ones; {v['overlap_with_calibration']} of "
                  f"them also calibrate){'; ' + v['simulated'] if v.get('simulated') else ''}",
                  f"- fp32 reference: {_metrics(rep['reference'])}; full INT8: {_metrics(rep['full_int8']['metrics'])}",
                  f"- kept in higher precision: {_kept(rep)}",
                  f"- runs: **{rep['executes']}**; proof: {_check(rep)}",
                  f"- search: {res['evaluations']} evaluations ({res['reused']} reused), {res['wall_s']:.1f} s"
                  + (f"; stopped: {res['stopped']}" if res.get("stopped") else ""),
                  "- fallback chain: " + "; ".join(
                      f"{s['precision']} " + (f"skipped ({s['skipped']})" if s.get("skipped") else
                                              f"{'passes' if s['passes'] else 'fails'} ({_metrics(s.get('metrics'))})")
                      for s in rep["fallback"]),
                  f"- speed: {_speed(rep.get('speed'))}"]
        ac = rep.get("accuracy_control")
        if ac and not ac.get("skipped"):
            lines.append(f"- {ac['tool']} (same samples, max drop {ac['max_drop']}): {_metrics(ac['metrics'])}, "
                         f"{len(ac['kept_in_float'])} layer(s) in float, {ac['wall_s']:.1f} s")
        chk = r.get("repair_check")
        if chk:
            lines.append("- validation vs test: " + "; ".join(
                f"{g['gate']}: drop {num(g.get('validation_drop'), '{:.4f}')} on validation, "
                f"{num(g.get('test_drop'), '{:.4f}')} on the "
                f"evaluated split → {'holds' if g['holds'] else 'FAILS' if g['holds'] is False else '?'}"
                for g in chk["gates"]))
        lines += ["", "| Step | Kept in float | Metrics | Passes | t (s) |", "|---|---|---|---|---|"]
        for s in res["steps"][:MAX_STEPS]:
            kept = ", ".join(s["kept"][:4]) + (f" +{len(s['kept']) - 4}" if len(s["kept"]) > 4 else "")
            lines.append(f"| {s['step']} | {cell(kept or '–')} | {cell(_metrics(s['metrics']))} | "
                         f"{'yes' if s['passes'] else 'no'} | {s['t_s']:.2f} |")
        if len(res["steps"]) > MAX_STEPS:
            lines.append(f"\n… {len(res['steps']) - MAX_STEPS} more steps in metrics.json (`runs[].artifact.repair`).")
        lines.append("")
    return ["", "## INT8 repair", "", *lines] if lines else []
