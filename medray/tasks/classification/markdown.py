"""report.md's classification sections: the seed-style table, agreement, per-class AUC,
the operating point, and the clinical sections (threshold transfer, flips, calibration,
subgroups)."""

from __future__ import annotations

from medray.format import cell, pct


def render(doc: dict) -> list[str]:
    """report.md's lines of a classification document."""
    ds = doc["dataset"]
    lines = [
        f"# medray evaluation — {ds['name']}",
        "",
        f"{ds['n_samples']} samples of split `{ds['split']}`, task {ds['task']}, "
        f"{len(ds['classes'])} {'labels' if ds['task'] == 'multilabel' else 'classes'}"
        + (f"; {len(doc['skipped'])} of them skipped as unreadable (listed below)." if doc.get("skipped") else "."),
        *([f"**Not scored** (the model has no output for them): {', '.join(ds['not_scored'])}."]
          if ds.get("not_scored") else []),
        "Latency = backend compute time per sample (batch time / batch size, warm-up excluded); "
        "throughput = end to end, the rate of the slower of reading and inference while both run "
        "(start-up apart; the inference stage's capacity is in the runs table). Percentages below.",
        *tta_note(doc),
        *decision_note(doc),
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
            f"{pct(m['accuracy'])} | {pct(m['balanced_accuracy'])} | {pct(m['auc_macro'])} | "
            f"{r['throughput_sps']:.1f} | {pct(ag['top1']) if ag else '–'} |"
        )
    lines += ["", "## Agreement with the baseline", ""]
    for r in doc["runs"]:
        if r.get("agreement"):
            a = r["agreement"]
            bad = f" ({a['n_nonfinite']} with NaN/inf outputs: disagreeing, |Δprob| 1)" if a.get("n_nonfinite") else ""
            lines.append(
                f"- {r['name']}: decisions {pct(a['top1'])}% the same, max |Δprob| {a['max_abs_prob_diff']:.2e}, "
                f"mean |Δprob| {a['mean_abs_prob_diff']:.2e} over {a['n']} paired samples{bad}"
            )
    lines += ["", "## Per-class AUC", "", "| Class | " + " | ".join(r["name"] for r in doc["runs"]) + " |"]
    lines.append("|---" * (len(doc["runs"]) + 1) + "|")
    for c in ds["classes"]:
        cells = [pct(r["metrics"]["auc_per_class"].get(c)) for r in doc["runs"]]
        lines.append(f"| {c} | " + " | ".join(cells) + " |")
    for r in doc["runs"]:
        if r["metrics"].get("auc_skipped"):
            lines.append(f"\n{r['name']}: AUC skipped (one outcome only) for {', '.join(r['metrics']['auc_skipped'])}")
    for r in doc["runs"]:
        if r["metrics"].get("f1_skipped"):
            lines.append(f"\n{r['name']}: F1 macro over the classes present in the labels or the decisions "
                         f"(scikit-learn's f1_score, average=macro); no F1 for {len(r['metrics']['f1_skipped'])} "
                         f"in neither: {', '.join(r['metrics']['f1_skipped'][:20])}")
    if any("sensitivity" in r["metrics"] for r in doc["runs"]):
        lines += ["", "## Operating point", "",
                  f"Positive class **{ds.get('positive_class')}**; decision: its probability ≥ the threshold "
                  "(the report's one operating point, see *Threshold transfer*).", "",
                  "| Run | Threshold | Sensitivity | Specificity | PPV | NPV | F1 (positive) |", "|---|---|---|---|---|---|---|"]
        for r in doc["runs"]:
            m = r["metrics"]
            lines.append(
                f"| {r['name']} | {m.get('threshold', 0.5):g} | {pct(m['sensitivity'])} | {pct(m['specificity'])} | "
                f"{pct(m.get('ppv'))} | {pct(m.get('npv'))} | {pct(m.get('f1_positive'))} |"
            )
    lines += render_clinical(doc)
    return lines


def decision_note(doc: dict) -> list[str]:
    """Which decisions accuracy, BACC, F1, agreement and the confusion matrix count."""
    ds, values = doc["dataset"], (doc.get("threshold") or {}).get("values") or {}
    if not values:
        how = "decisions are the argmax class"
    elif ds["task"] == "multilabel":
        shown = ", ".join(f"{k} {v:.4g}" for k, v in list(values.items())[:6]) + (" …" if len(values) > 6 else "")
        how = f"decisions are each label's probability ≥ its threshold ({shown})"
    else:
        how = f"decisions are p({next(iter(values))}) ≥ {next(iter(values.values())):.4g}"
    bad = [f"{r['name']} {r['nonfinite']['n']}" for r in doc["runs"] if r.get("nonfinite")]
    out = [f"Accuracy, BACC, F1, the operating point, agreement and the confusion matrix are at one operating point: "
           f"{how} (threshold.method={(doc.get('threshold') or {}).get('method', 'argmax')}); mAUC is threshold-free"
           + (" (binary: the positive class's AUC)." if len(ds["classes"]) == 2 and ds["task"] != "multilabel" else ".")]
    if bad:
        out.append(f"NaN/inf outputs are scored as wrong answers with certainty (worst case), never left out: "
                   f"{', '.join(bad)} sample(s).")
    return out


def tta_note(doc: dict) -> list[str]:
    tta = sorted({r.get("tta", "none") for r in doc["runs"]} - {"none"})
    if not tta:
        return []
    return [
        f"Test-time augmentation: {', '.join(tta)} — probabilities averaged over the views of each image; "
        "latency is the sum of the backend calls over all views (the cost of one TTA prediction)."
    ]


def _p(x) -> str:
    return "–" if x is None else f"{100 * x:.2f}"


def _threshold_section(doc: dict) -> list[str]:
    """How the threshold was chosen, each run's operating point at it, and the flips."""
    runs = doc["runs"]
    lines: list[str] = []
    thr = doc.get("threshold")
    if thr and any(r.get("threshold") for r in runs):
        how = {"fixed": "fixed", "youden": "Youden's J (max sensitivity + specificity − 1)",
               "sensitivity": f"sensitivity ≥ {thr.get('target')}", "specificity": f"specificity ≥ {thr.get('target')}"}
        on = thr.get("chosen_on")
        where = (f"chosen on {on['run']}'s predictions of {on['n']} samples of split `{on['split']}` (not the evaluated "
                 "split), applied unchanged to every run" if on else "the same for every run")
        lines += ["", "## Threshold transfer", "", f"Threshold: {how[thr['method']]}, {where}."
                  + (f" One outcome only on the validation split, threshold.value used for: {', '.join(thr['fallback'])}."
                     if thr.get("fallback") else ""), "",
                  "| Label | Threshold | Run | Sensitivity | Specificity | PPV | NPV | Flips |", "|---|---|---|---|---|---|---|---|"]
        for name, t in thr["values"].items():
            for r in runs:
                op = (r.get("threshold") or {}).get(name)
                if not op:
                    continue
                fl = ((r.get("flips") or {}).get("per_label") or {}).get(name)
                flip = f"{fl['n']} (+{fl['to_positive']} / −{fl['to_negative']})" if fl else "–"
                lines.append(f"| {name} | {t:.4g} | {r['name']} | {_p(op['sensitivity'])} | {_p(op['specificity'])} | "
                             f"{_p(op['ppv'])} | {_p(op['npv'])} | {flip} |")
        for r in runs:
            if r.get("flips"):
                f = r["flips"]
                lines.append(f"\n{r['name']}: {f['n']} of {f['n_samples']} samples changed a decision at the threshold"
                             + (f" (e.g. {', '.join(f['sample_ids'][:10])})" if f["sample_ids"] else "") + ".")
    return lines


def render_clinical(doc: dict) -> list[str]:
    """report.md sections: threshold transfer and flips, calibration, subgroups, plots."""
    runs = doc["runs"]
    lines: list[str] = []
    lines += _threshold_section(doc)
    if any(r.get("calibration") for r in runs):
        c0 = next(r["calibration"] for r in runs if r.get("calibration"))
        lines += ["", "## Calibration", "",
                  f"ECE over {c0['n_bins']} bins of {c0['scope']}: equal width on [0, 1] and equal mass (quantiles, "
                  f"as scikit-learn's calibration_curve bins them); Brier = {c0.get('brier_definition', 'mean squared error')}.", "",
                  "| Run | ECE (equal width) | ECE (equal mass) | Brier | ΔECE | ΔBrier |", "|---|---|---|---|---|---|"]
        for r in runs:
            c = r.get("calibration")
            if not c:
                continue
            d = c.get("delta") or {}
            dd = (f"{d['ece']:+.4f} | {d['brier']:+.4f}") if d else "– | –"
            lines.append(f"| {r['name']} | {c['ece']:.4f} | {c['ece_equal_mass']:.4f} | {c['brier']:.4f} | {dd} |")
    if any(r.get("subgroups") for r in runs):
        min_n = next((g["n"] for r in runs for gs in (r.get("subgroups") or {}).values() for g in gs if g.get("small")), None)
        lines += ["", "## Subgroups", "", "Macro AUC per group (labels with both outcomes in the group); Δ = candidate − baseline"
                  + ("; groups under report.min_subgroup_size are listed with their n and no AUC (\"n < min\")."
                     if min_n is not None else "."), ""]
        names = [r["name"] for r in runs if r.get("subgroups")]
        lines += ["| Attribute | Group | n | " + " | ".join(names) + " | ΔAUC (pp) |", "|---" * (len(names) + 4) + "|"]
        first = next(r for r in runs if r.get("subgroups"))
        for col, groups in first["subgroups"].items():
            for g in groups:
                cells, delta = [], "–"
                for r in runs:
                    if not r.get("subgroups"):
                        continue
                    mine = next((x for x in r["subgroups"].get(col, []) if x["group"] == g["group"]), None)
                    cells.append("n < min" if mine and mine.get("small") else _p(mine and mine["auc_macro"]))
                    if mine and mine.get("delta_auc") is not None:
                        delta = f"{100 * mine['delta_auc']:+.2f}"
                lines.append(f"| {cell(col)} | {cell(g['group'])} | {g['n']} | " + " | ".join(cells) + f" | {delta} |")
        for r in runs:
            w = r.get("worst_subgroup")
            if w:
                lines.append(f"\n{r['name']}: largest AUC change in {w['attribute']}={w['group']} (n={w['n']}): "
                             f"{100 * w['delta_auc']:+.2f} pp.")
    if doc.get("plots"):
        lines += ["", "## Plots", ""] + [f"![{k}]({v})" for k, v in doc["plots"].items()]
    return lines
