"""Classification's clinical sections of metrics.json: calibration, threshold transfer,
decision flips and subgroups (the arithmetic is :mod:`medray.metrics.clinical`).

Keys (the output contract, README):

* ``threshold`` (top level): how the operating threshold was chosen (``method``,
  ``target``, ``chosen_on`` = split and samples of the baseline's validation predictions)
  and its ``values`` per scored column (binary: the positive class; multilabel: each label);
* ``runs[].threshold``: each run's sensitivity / specificity / PPV / NPV / F1 at it;
* ``runs[].calibration``: ECE (equal-width and equal-mass bins), Brier score, reliability
  points; candidates add ``delta`` (ECE and Brier, candidate − baseline);
* ``runs[].flips`` (candidates): samples whose decision at the threshold changed;
* ``runs[].subgroups``: per metadata column, per group n and macro AUC; candidates add the
  change vs the baseline, and ``worst_subgroup`` (the group with the largest AUC drop).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from medray.errors import ConfigError

if TYPE_CHECKING:
    from medray.config import EvalConfig
    from medray.data.table import SampleTable
    from medray.results import RunResult

log = logging.getLogger("medray.report")


def subgroup_columns(cfg: EvalConfig, table: SampleTable) -> list[str]:
    """The columns of ``report.subgroups`` (null = the dataset's), checked to exist."""
    wanted = table.subgroup_columns if cfg.report.subgroups is None else list(cfg.report.subgroups)
    missing = [c for c in wanted if c not in table.samples.columns]
    if missing:
        have = table.subgroup_columns or "none (add data.metadata=<csv with sample_id + columns>)"
        raise ConfigError(f"report.subgroups: {missing} are not columns of dataset {table.name}; its subgroup columns: {have}")
    return wanted


def check_threshold(cfg: EvalConfig, table: SampleTable) -> None:
    """A threshold applies to binary and multilabel tasks (before Ray starts)."""
    t = cfg.threshold
    if (t.method != "fixed" or t.value != 0.5) and table.task == "multiclass" and len(table.classes) != 2:
        raise ConfigError(
            f"threshold.method={t.method}: dataset {table.name} has {len(table.classes)} classes, decided by argmax; "
            "a decision threshold applies to binary and multilabel datasets (remove threshold.*)"
        )


def validation_samples(cfg: EvalConfig, table: SampleTable, evaluated: pd.DataFrame) -> pd.DataFrame | None:
    """The samples the baseline scores to choose the threshold (None for method=fixed)."""
    from medray.data.sources import calibration_samples

    if cfg.threshold.method == "fixed":
        return None
    n = cfg.threshold.num_samples or 10**12
    split = cfg.threshold.split or cfg.calibration.split
    return calibration_samples(table, split, n, cfg.data.seed, evaluated, cfg.data.split)


def scored_rows(result: RunResult, table: SampleTable, samples: pd.DataFrame):
    """A run's rows with finite outputs: (predictions, targets, probabilities)."""
    from medray.metrics.scores import finite_rows, stacked_probs
    from medray.tasks.scores import targets

    df = result.predictions
    p = stacked_probs(df)
    ok = finite_rows(p)
    return df[ok].reset_index(drop=True), targets(table, samples, df["sample_id"])[ok], p[ok]


def add_clinical(cfg: EvalConfig, doc: dict, results: list[RunResult], table: SampleTable, samples: pd.DataFrame,
                 validation: RunResult | None = None) -> None:
    """Add the calibration, threshold, flips and subgroup sections to ``doc`` in place."""
    from medray.metrics.classification import operating_point
    from medray.metrics.clinical import calibration, score_columns

    pos = table.positive_index()
    rows = [scored_rows(r, table, samples) for r in results]
    base_i = next((i for i, r in enumerate(results) if r.spec.role == "baseline"), None)
    thresholded = table.task == "multilabel" or len(table.classes) == 2
    thresholds = _thresholds(cfg, table, validation) if thresholded else None
    if thresholds is not None:
        doc["threshold"] = thresholds
    groups = subgroup_columns(cfg, table)
    for entry, (df, y, p) in zip(doc["runs"], rows):
        if not len(df):
            continue
        entry["calibration"] = calibration(y, p, table.task, pos, cfg.report.calibration_bins)
        if thresholds is not None:
            entry["threshold"] = {
                name: operating_point(yc, sc, thresholds["values"][name])
                for name, yc, sc in score_columns(y, p, table.task, list(table.classes), pos)
            }
        if groups:
            entry["subgroups"] = _subgroups(df, y, p, table, samples, groups, cfg.report.min_subgroup_size)
    if base_i is None:
        return
    b_df, b_y, b_p = rows[base_i]
    b_entry = doc["runs"][base_i]
    for i, (entry, (df, y, p)) in enumerate(zip(doc["runs"], rows)):
        if i == base_i or not len(df) or not len(b_df):
            continue
        if "calibration" in b_entry:
            entry["calibration"]["delta"] = {k: entry["calibration"][k] - b_entry["calibration"][k]
                                             for k in ("ece", "ece_equal_mass", "brier")}
        bi, ci = _pair(b_df, df)
        if thresholds is not None:
            from medray.metrics.clinical import flips

            cols = score_columns(b_y[bi], b_p[bi], table.task, list(table.classes), pos)
            ccols = score_columns(y[ci], p[ci], table.task, list(table.classes), pos)
            names = [c[0] for c in cols]
            entry["flips"] = flips(b_df["sample_id"].to_numpy()[bi], np.stack([c[2] for c in cols], 1),
                                   np.stack([c[2] for c in ccols], 1), [thresholds["values"][n] for n in names], names)
        if groups and b_entry.get("subgroups"):
            _subgroup_deltas(entry, b_entry)


def _pair(b_df: pd.DataFrame, c_df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Rows scored by both runs, in the baseline's order."""
    common = pd.Index(b_df["sample_id"]).intersection(pd.Index(c_df["sample_id"]), sort=False)
    return pd.Index(b_df["sample_id"]).get_indexer(common), pd.Index(c_df["sample_id"]).get_indexer(common)


def _thresholds(cfg: EvalConfig, table: SampleTable, validation: RunResult | None) -> dict:
    from medray.metrics.clinical import choose_threshold, score_columns

    t = cfg.threshold
    out: dict = {"method": t.method, "target": t.target, "chosen_on": None}
    if t.method == "fixed" or validation is None:
        if t.method != "fixed":
            raise RuntimeError("threshold.method needs the baseline's validation predictions")
        names = list(table.classes) if table.task == "multilabel" else [table.positive_class or table.classes[1]]
        out["values"] = {n: float(t.value) for n in names}
        return out
    ids = set(validation.predictions["sample_id"])
    vsamples = table.samples[table.samples["sample_id"].isin(ids)].reset_index(drop=True)
    df, y, p = scored_rows(validation, table, vsamples)
    out["chosen_on"] = {"run": validation.spec.name, "split": ", ".join(sorted(set(vsamples["split"]))), "n": int(len(df))}
    out["values"] = {}
    for name, yc, sc in score_columns(y, p, table.task, list(table.classes), table.positive_index()):
        try:
            out["values"][name] = choose_threshold(yc, sc, t.method, t.target, t.value)
        except ValueError as e:  # a label with one outcome on the validation split
            log.warning("threshold for %s: %s; using threshold.value=%g", name, e, t.value)
            out["values"][name] = float(t.value)
            out.setdefault("fallback", []).append(name)
    return out


def _subgroups(df, y, p, table, samples, columns, min_n) -> dict:
    from medray.metrics.clinical import subgroup_table

    meta = samples.set_index("sample_id").loc[df["sample_id"]]
    return {c: subgroup_table(meta[c].to_numpy(), y, p, table.task, min_n) for c in columns}


def _subgroup_deltas(entry: dict, base: dict) -> None:
    subgroup_changes(entry, base["subgroups"], "auc_macro", "auc_baseline", "delta_auc")


def subgroup_changes(entry: dict, base_groups: dict, value: str, base_key: str, delta_key: str) -> None:
    """Each group of ``entry["subgroups"]`` gets the baseline's ``value`` (as ``base_key``) and
    the change (``delta_key``); ``entry["worst_subgroup"]`` is the group with the largest drop.
    Classification compares macro AUC, segmentation mean Dice."""
    worst = None
    for col, groups in entry["subgroups"].items():
        bmap = {g["group"]: g[value] for g in base_groups.get(col, [])}
        for g in groups:
            b = bmap.get(g["group"])
            g[base_key] = b
            g[delta_key] = g[value] - b if g[value] is not None and b is not None else None
            if g[delta_key] is not None and (worst is None or g[delta_key] < worst[delta_key]):
                worst = {"attribute": col, "group": g["group"], "n": g["n"], delta_key: g[delta_key]}
    entry["worst_subgroup"] = worst


# --------------------------------------------------------------------------- report.md


def _p(x) -> str:
    return "–" if x is None else f"{100 * x:.2f}"


def render_clinical(doc: dict) -> list[str]:
    """report.md sections: threshold transfer and flips, calibration, subgroups, plots."""
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
    if any(r.get("calibration") for r in runs):
        c0 = next(r["calibration"] for r in runs if r.get("calibration"))
        lines += ["", "## Calibration", "",
                  f"ECE over {c0['n_bins']} bins of {c0['scope']}: equal width on [0, 1] and equal mass (quantiles); "
                  "Brier = mean squared error of the probabilities.", "",
                  "| Run | ECE (equal width) | ECE (equal mass) | Brier | ΔECE | ΔBrier |", "|---|---|---|---|---|---|"]
        for r in runs:
            c = r.get("calibration")
            if not c:
                continue
            d = c.get("delta") or {}
            dd = (f"{d['ece']:+.4f} | {d['brier']:+.4f}") if d else "– | –"
            lines.append(f"| {r['name']} | {c['ece']:.4f} | {c['ece_equal_mass']:.4f} | {c['brier']:.4f} | {dd} |")
    if any(r.get("subgroups") for r in runs):
        lines += ["", "## Subgroups", "", "Macro AUC per group (labels with both outcomes in the group); Δ = candidate − baseline.", ""]
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
                    cells.append(_p(mine and mine["auc_macro"]))
                    if mine and mine.get("delta_auc") is not None:
                        delta = f"{100 * mine['delta_auc']:+.2f}"
                lines.append(f"| {col} | {g['group']} | {g['n']} | " + " | ".join(cells) + f" | {delta} |")
        for r in runs:
            w = r.get("worst_subgroup")
            if w:
                lines.append(f"\n{r['name']}: largest AUC change in {w['attribute']}={w['group']} (n={w['n']}): "
                             f"{100 * w['delta_auc']:+.2f} pp.")
    if doc.get("plots"):
        lines += ["", "## Plots", ""] + [f"![{k}]({v})" for k, v in doc["plots"].items()]
    return lines
