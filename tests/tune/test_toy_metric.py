"""README "Adding a metric the sweep can constrain": one row on the task's ``sweep_metrics``
(here a task subclass from this test folder) makes a metric constrained, Pareto-ranked
and tabled by the sweep; nothing under medray/tune/ names it."""

from __future__ import annotations

import pytest

from medray.tasks import TASKS
from medray.tasks.base import SweepMetric
from medray.tasks.classification import ClassificationTask
from medray.tune.select import select, violations


class F1Task(ClassificationTask):
    """Classification whose sweep also bounds the drop of macro F1 (computed by run_metrics)."""

    sweep_metrics = (*ClassificationTask.sweep_metrics, SweepMetric("f1_macro", "F1", "max_f1_drop"))


@pytest.fixture()
def f1_task(monkeypatch):
    monkeypatch.setitem(TASKS, "f1class", f"{__name__}:F1Task")


def trial(tid, tput, d_f1):
    return {"trial_id": tid, "label": tid, "status": "ok", "throughput_sps": tput, "batch_size": 16, "streams": 1,
            "latency_ms": {"per_sample_p50": 1.0}, "agreement": {"top1": 1.0},
            "deltas": {"auc_macro": 0.0, "balanced_accuracy": 0.0, "f1_macro": d_f1}}


def test_the_new_metric_is_a_constraint_of_the_sweep(f1_task):
    limits = {"max_auc_drop": 0.005, "max_f1_drop": 0.01}
    assert violations(trial("a", 100, -0.02), limits, "f1class") == ["F1 drop 0.0200 > max_f1_drop=0.01"]
    assert violations(trial("a", 100, -0.02), limits, "classification") == []  # the plain task has no such row
    sel = select([trial("fast", 300, -0.02), trial("ok", 200, -0.005)], limits, "throughput", "f1class")
    assert sel["recommended"] == "ok"
    missing = trial("b", 1, 0.0)
    del missing["deltas"]["f1_macro"]
    assert violations(missing, limits, "f1class") == ["F1 drop not measurable (max_f1_drop=0.01)"]


def test_the_sweep_table_shows_it(f1_task):
    from medray.tune.report import render

    doc = {"task": "f1class", "dataset": {"name": "d", "task": "multiclass", "n_samples": 4, "split": "test"},
           "constraints": {"max_auc_drop": 0.005, "max_f1_drop": 0.01}, "objective": "throughput", "device": "cpu",
           "status": "complete", "trials": [], "recommended": None, "selection": {"primary_metric": "auc_macro", "reason": "no trial completed"},
           "baseline": {"name": "torch-fp32", "batch_size": 8, "streams": 1, "throughput_sps": 10.0,
                        "metrics": {"auc_macro": 0.9, "balanced_accuracy": 0.8, "f1_macro": 0.7}}}
    text = render(doc)
    assert "AUC 90.00%, BACC 80.00%, F1 70.00%" in text and "| F1 (%) | ΔF1 (pp)" in text
    assert "max_f1_drop=0.01" in text  # the limit that applies is stated
    assert "F1" not in render({**doc, "task": "classification"})
