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
from medray.tasks.subgroups import subgroup_changes, subgroup_columns

if TYPE_CHECKING:
    from medray.data.table import SampleTable
    from medray.results import RunResult
    from medray.tasks.base import RunConfig

log = logging.getLogger("medray.report")


def check_threshold(cfg: RunConfig, table: SampleTable) -> None:
    """A threshold applies to binary and multilabel tasks (before Ray starts)."""
    t = cfg.threshold
    if (t.method != "fixed" or t.value != 0.5) and table.task == "multiclass" and len(table.classes) != 2:
        raise ConfigError(
            f"threshold.method={t.method}: dataset {table.name} has {len(table.classes)} classes, decided by argmax; "
            "a decision threshold applies to binary and multilabel datasets (remove threshold.*)"
        )


def validation_samples(cfg: RunConfig, table: SampleTable, evaluated: pd.DataFrame) -> pd.DataFrame | None:
    """The samples the baseline scores to choose the threshold (None for method=fixed)."""
    from medray.data.load import calibration_samples

    if cfg.threshold.method == "fixed":
        return None
    n = cfg.threshold.num_samples or 10**12
    split = cfg.threshold.split or cfg.calibration.split
    return calibration_samples(table, split, n, cfg.data.seed, evaluated, cfg.data.split)


def scored_rows(result: RunResult, table: SampleTable, samples: pd.DataFrame):
    """A run's rows as they are scored: (predictions, targets, probabilities), a NaN/inf
    output replaced by the most wrong probabilities (:func:`medray.metrics.scores.worst_case`)."""
    from medray.metrics.scores import stacked_probs, worst_case
    from medray.tasks.classification.scores import targets

    df = result.predictions
    y = targets(table, samples, df["sample_id"])
    return df.reset_index(drop=True), y, worst_case(stacked_probs(df), y, table.task, table.positive_index())


def choose_thresholds(cfg: RunConfig, table: SampleTable, validation: RunResult | None) -> dict | None:
    """The ``threshold`` section (method, where it was chosen, ``values`` per scored column),
    or None for a task decided by argmax (more than two classes)."""
    if table.task == "multilabel" or len(table.classes) == 2:
        return _thresholds(cfg, table, validation)
    return None


def add_clinical(cfg: RunConfig, doc: dict, results: list[RunResult], table: SampleTable, samples: pd.DataFrame,
                 thresholds: dict | None = None) -> None:
    """Add the calibration, threshold, flips and subgroup sections to ``doc`` in place, at
    the report's one operating point (``thresholds``: :func:`choose_thresholds`)."""
    from medray.metrics.classification import operating_point
    from medray.metrics.clinical import calibration, score_columns

    pos = table.positive_index()
    rows = [scored_rows(r, table, samples) for r in results]
    base_i = next((i for i, r in enumerate(results) if r.spec.role == "baseline"), None)
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


def _thresholds(cfg: RunConfig, table: SampleTable, validation: RunResult | None) -> dict:
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


# --------------------------------------------------------------------------- report.md


