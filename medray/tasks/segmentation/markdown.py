"""report.md's segmentation sections: the seed-style table, Dice per class, surface
distances, the per-case table (seed 003), subgroups and the worst cases."""

from __future__ import annotations

from medray.format import cell, num, pct, sec
from medray.format import dice as fdice
from medray.models.recipes import recipe_class


def render(doc: dict) -> list[str]:
    """report.md's lines of a segmentation document."""
    ds, sw = doc["dataset"], doc["sliding_window"]
    runs = doc["runs"]
    base = next((r for r in runs if r["role"] == "baseline"), None)
    cand = [r for r in runs if r["role"] == "candidate"]
    about = recipe_class(ds.get("recipe"))().describe(ds.get("preprocessing") or {}, sw)
    lines = [
        f"# medray segmentation — {ds['name']}",
        "",
        f"{ds['n_samples']} cases of split `{ds['split']}` ({ds['n_labelled']} with labels), "
        f"classes {', '.join(ds['classes'])} (background excluded from Dice), modality {', '.join(ds.get('modality') or [])}.",
        f"{about} ROI {'×'.join(map(str, sw['roi_size'] or []))}, {sw['sw_batch_size']} windows per backend call.",
        "Latency per case = sum of the backend calls for the case's windows (every fold, every mirrored window; warm-up "
        "excluded); the segmentation time adds slicing, blending and the way back to the original geometry. Dice, IoU, "
        "TP/FP/FN per case and label as nnU-Net's compute_metrics_on_folder counts them: a label in neither mask does "
        "not count for that case, one predicted where the labels have none scores 0.",
        "",
        "| Dataset | Model | Latency per case | Sliding window per case | Speed-up | Dice vs labels | Dice vs baseline | Throughput (cases/s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        sp, ag = r.get("speedup"), r.get("agreement")
        speed = "–" if not sp or sp.get("factor") is None else f"{sp['factor']:.2f}× ({sp['latency_reduction_pct']:.1f}%)"
        model = f"{'Baseline' if r['role'] == 'baseline' else 'Candidate'} {r['name']} (sw{r['batch_size']}×{r['streams']})"
        lines.append(
            f"| {ds['name']} | {model} | {sec(r['latency_ms']['per_sample_mean'])} | "
            f"{sec(r['sliding_window_ms']['per_sample_mean'])} | {speed} | {fdice(r['metrics'].get('dice_mean'))} | "
            f"{fdice(ag['dice_mean']) if ag else '–'} | {r['throughput_sps']:.2f} |"
        )
    lines += ["", "## Dice per class", "", "| Class | " + " | ".join(f"{r['name']} vs labels" for r in runs)
              + "".join(f" | {r['name']} vs baseline" for r in cand) + " |"]
    lines.append("|---" * (1 + len(runs) + len(cand)) + "|")
    for c in ds["classes"]:
        cells = [fdice(r["metrics"].get("dice_per_class", {}).get(c)) for r in runs]
        cells += [fdice((r.get("agreement") or {}).get("dice_per_class", {}).get(c)) for r in cand]
        lines.append(f"| {c} | " + " | ".join(cells) + " |")
    if any("hd95_per_class" in r["metrics"] for r in runs):
        tol = next(r["metrics"]["surface_tolerance_mm"] for r in runs if "hd95_per_class" in r["metrics"])
        lines += ["", f"## Surface distances (MONAI; HD95 in mm, surface Dice at {tol:g} mm)", "",
                  "| Class | " + " | ".join(f"{r['name']} HD95 | {r['name']} surface Dice" for r in runs) + " |",
                  "|---" * (1 + 2 * len(runs)) + "|"]
        for c in ds["classes"]:
            cells = []
            for r in runs:
                m = r["metrics"]
                hd, missed = (m.get("hd95_per_class") or {}).get(c), (m.get("hd95_missed") or {}).get(c, 0)
                cells.append(("–" if hd is None else f"{hd:.2f}") + (f" ({missed} missed)" if missed else ""))
                cells.append(fdice((m.get("surface_dice_per_class") or {}).get(c)))
            lines.append(f"| {c} | " + " | ".join(cells) + " |")
        lines.append("\nA class in a case's labels that the model did not predict has no HD95 (counted as missed) "
                     "and surface Dice 0; a class absent from the labels does not count. Surface Dice is MONAI's "
                     "compute_surface_dice: the share of boundary voxels within the tolerance (voxel counts, not "
                     "Nikolov et al.'s area-weighted surface elements); its mean, like Dice's, is over cases of each "
                     "case's mean over classes.")
    for r in cand:
        a = r.get("agreement")
        if a:
            lines.append(
                f"\n{r['name']} vs baseline: voxel agreement mean {pct(a['voxel_agreement_mean'])}%, min "
                f"{pct(a['voxel_agreement_min'])}%; lowest per-case Dice {fdice(a['dice_case_min'])} over {a['n']} cases."
            )
    lines += acceptance_lines(cand)
    lines += per_case(doc, base, cand)
    lines += memory_lines(runs)
    lines.append("\nMasks: `predictions/<run>_masks/<case>` — label maps as files of the input's format with its "
                 "geometry (affine, spacing, direction), loadable in any viewer.")
    if any(r.get("subgroups") for r in runs):
        lines += ["", "## Subgroups", "", "Mean Dice vs labels per group (labelled cases); Δ = candidate − baseline; "
                  "groups under report.min_subgroup_size are listed with their n (\"n < min\").", "",
                  "| Attribute | Group | n | " + " | ".join(r["name"] for r in runs) + " | ΔDice |",
                  "|---" * (len(runs) + 4) + "|"]
        for col, rows in runs[0]["subgroups"].items():
            for x in rows:
                cells, delta = [], "–"
                for r in runs:
                    mine = next((y for y in r["subgroups"].get(col, []) if y["group"] == x["group"]), None)
                    cells.append("n < min" if mine and mine.get("small") else fdice(mine and mine["dice_mean"]))
                    if mine and mine.get("delta_dice") is not None:
                        delta = f"{mine['delta_dice']:+.4f}"
                lines.append(f"| {cell(col)} | {cell(x['group'])} | {x['n']} | " + " | ".join(cells) + f" | {delta} |")
    if doc.get("plots"):
        lines += ["", "## Worst cases", ""] + [f"![{k}]({v})" for k, v in doc["plots"].items()]
    return lines


def per_case(doc: dict, base: dict | None, cand: list[dict]) -> list[str]:
    """Seed 003's per-case table (the first candidate vs the baseline)."""
    cases = doc.get("cases", [])
    if base is not None and cand:
        c0 = cand[0]
        bn, cn = base["name"], c0["name"]
        lines = ["", f"## Per case ({bn} vs {cn})", "",
                 "| Subject | Shape | Baseline latency | Candidate latency | Speed-up | Dice vs baseline (mean) | "
                 "Dice vs labels (baseline) | Dice vs labels (candidate) |", "|---|---|---|---|---|---|---|---|"]
        for case in cases:
            bl, cl = case.get("latency_ms:" + bn), case.get("latency_ms:" + cn)
            sp = f"{bl / cl:.2f}×" if bl and cl else "–"
            lines.append(
                f"| {cell(case['sample_id'])} | {list(case.get('shape') or [])} | {sec(bl)} | {sec(cl)} | {sp} | "
                f"{fdice(case.get('dice_vs_baseline:' + cn))} | {fdice(case.get('dice:' + bn))} | "
                f"{fdice(case.get('dice:' + cn))} |"
            )
        return lines
    if not doc["runs"]:
        return []
    n0 = doc["runs"][0]["name"]
    lines = ["", f"## Per case ({n0})", "", "| Subject | Shape | Latency | Dice vs labels |", "|---|---|---|---|"]
    for case in cases:
        lines.append(f"| {cell(case['sample_id'])} | {list(case.get('shape') or [])} | "
                     f"{sec(case.get('latency_ms:' + n0))} | {fdice(case.get('dice:' + n0))} |")
    return lines


def acceptance_lines(cand: list[dict]) -> list[str]:
    """MLPerf 3D-UNet's acceptance rule per candidate: mean Dice vs labels ≥ 99 % / 99.9 % of
    the fp32 baseline's."""
    rows = [r for r in cand if (r.get("acceptance") or {}).get("ratio") is not None]
    if not rows:
        return []
    out = ["", "## Acceptance (MLPerf 3D-UNet rule)", "",
           "Mean Dice vs labels as a fraction of the baseline's: pass at ≥ 99 % and at ≥ 99.9 % (the high-accuracy "
           "target); beside it, Dice vs the baseline's masks.", "",
           "| Candidate | Mean Dice | Baseline's | Fraction | ≥ 99 % | ≥ 99.9 % | Dice vs baseline's masks |",
           "|---|---|---|---|---|---|---|"]
    for r in rows:
        a = r["acceptance"]
        out.append(f"| {r['name']} | {fdice(a['dice_mean'])} | {fdice(a['baseline_dice_mean'])} | {100 * a['ratio']:.2f} % | "
                   f"{'pass' if a['pass_99'] else 'FAIL'} | {'pass' if a['pass_99.9'] else 'FAIL'} | "
                   f"{fdice((r.get('agreement') or {}).get('dice_mean'))} |")
    return out


def memory_lines(runs: list[dict]) -> list[str]:
    """Peak memory of the actors per case."""
    rows = [r for r in runs if (r.get("memory") or {}).get("peak_rss_mb_max") is not None]
    if not rows:
        return []
    return ["", "Peak resident memory of an actor while it segmented a case (max / mean over cases): " + "; ".join(
        f"{r['name']} {r['memory']['peak_rss_mb_max']:.0f} / {r['memory']['peak_rss_mb_mean']:.0f} MiB" for r in rows) + "."]


def runs_columns(r: dict) -> dict[str, str]:
    """The latency cells of a run's row in report.md's runs table."""
    lat = r["latency_ms"]
    pw = lat.get("per_window_mean")
    return {
        "Latency p50 / p95 per case": f"{sec(lat['per_sample_p50'])} / {sec(lat['per_sample_p95'])}",
        "Per window": "–" if pw is None else f"{pw:.1f} ms",
        "Windows per case": num(r.get("windows_per_case_mean"), "{:.1f}"),
    }
