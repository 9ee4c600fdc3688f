"""Selection logic by hand: constraints, Pareto front, recommendation, reproduce command."""

from __future__ import annotations

import shlex

import pytest
from helpers import REPO

from medray.backends.torch.config import TorchConfig
from medray.config import EvalConfig
from medray.tune.config import ConstraintsConfig
from medray.tune.select import _fmt, metric_drop, pareto_front, reproduce_command, select, violations


def trial(tid, tput, d_auc, agree=1.0, status="ok", p50=1.0, d_bacc=0.0, **kw):
    return {
        "trial_id": tid,
        "label": tid,
        "status": status,
        "throughput_sps": tput,
        "latency_ms": {"per_sample_p50": p50, "per_sample_p95": 2 * p50},
        "deltas": {"auc_macro": d_auc, "balanced_accuracy": d_bacc},
        "agreement": {"top1": agree},
        "batch_size": kw.get("batch_size", 16),
        "streams": kw.get("streams", 1),
    }


def test_pareto_front_by_hand():
    # (throughput, drop): b dominates a (faster, same drop); c is fastest but worst;
    # d has the smallest drop; e is dominated by b; f duplicates b (kept too).
    pts = [(100, 0.002), (150, 0.002), (300, 0.010), (90, -0.001), (120, 0.004), (150, 0.002)]
    assert pareto_front(pts) == [1, 2, 3, 5]
    assert pareto_front([]) == []
    assert pareto_front([(1.0, 0.0)]) == [0]


def test_violations_each_constraint():
    c = ConstraintsConfig(max_auc_drop=0.005, max_bacc_drop=0.01, min_agreement=0.99)
    assert violations(trial("a", 1, -0.005), c, "classification") == []  # exactly at the limit is allowed
    assert violations(trial("a", 1, -0.0051), c, "classification") == ["AUC drop 0.0051 > max_auc_drop=0.005"]
    assert violations(trial("a", 1, +0.02), c, "classification") == []  # an improvement is no drop
    assert violations(trial("a", 1, 0.0, agree=0.98), c, "classification") == ["agreement 0.9800 < min_agreement=0.99"]
    assert violations(trial("a", 1, 0.0, d_bacc=-0.02), c, "classification") == ["BACC drop 0.0200 > max_bacc_drop=0.01"]
    t = trial("a", 1, None)
    assert violations(t, c, "classification") == ["AUC drop not measurable (max_auc_drop=0.005)"]
    none = ConstraintsConfig(max_auc_drop=None, max_bacc_drop=None, min_agreement=None)
    assert violations(trial("a", 1, -0.5, agree=0.1), none, "classification") == []
    seg = {"trial_id": "s", "deltas": {"dice_mean": -0.02}, "agreement": {"dice_vs_baseline_mean": 0.97}}
    assert violations(seg, ConstraintsConfig(max_dice_drop=0.01, min_agreement=0.95), "segmentation") == [
        "Dice drop 0.0200 > max_dice_drop=0.01"
    ]
    assert metric_drop(seg, "dice_mean") == pytest.approx(0.02)
    # MLPerf 3D-UNet's 99.9 % rule: the candidate's mean Dice relative to the baseline's
    rel = {"trial_id": "r", "deltas": {"dice_mean": -0.0009, "dice_relative": -0.0011}, "agreement": {"dice_mean": 0.99}}
    c999 = ConstraintsConfig(max_dice_drop=None, max_relative_dice_drop=0.001, min_agreement=None)
    assert violations(rel, c999, "segmentation") == ["Dice / baseline's drop 0.0011 > max_relative_dice_drop=0.001"]
    rel["deltas"]["dice_relative"] = -0.001
    assert violations(rel, c999, "segmentation") == []


def test_select_recommends_the_fastest_feasible_and_marks_the_front():
    trials = [
        trial("fast-bad-auc", 400, -0.02),  # fastest, violates AUC → on the front, not chosen
        trial("fast-bad-agree", 350, -0.003, agree=0.95),  # violates agreement, on the front
        trial("ok-fast", 300, -0.001),
        trial("ok-slow", 200, -0.001),  # dominated by ok-fast
        trial("exact", 100, 0.0),  # best AUC → on the front
        trial("broken", 999, 0.0, status="failed"),  # ignored (no result)
    ]
    sel = select(trials, ConstraintsConfig(max_auc_drop=0.005, min_agreement=0.99), "throughput", "classification")
    assert sel["recommended"] == "ok-fast"
    assert sorted(sel["pareto"]) == sorted(["fast-bad-auc", "fast-bad-agree", "ok-fast", "exact"])
    by_id = {t["trial_id"]: t for t in trials}
    assert by_id["fast-bad-auc"]["pareto"] and not by_id["fast-bad-auc"]["feasible"]
    assert by_id["ok-slow"]["feasible"] and not by_id["ok-slow"]["pareto"]
    assert by_id["broken"]["violations"] == [] and not by_id["broken"]["feasible"]


def test_select_latency_objective_and_ties():
    trials = [
        trial("b64", 300, 0.0, p50=0.5, batch_size=64),
        trial("b16", 250, 0.0, p50=0.5, batch_size=16),  # same latency and drop: smaller batch wins
        trial("slow", 500, 0.0, p50=0.9),
    ]
    sel = select(trials, ConstraintsConfig(), "latency", "classification")
    assert sel["recommended"] == "b16"
    sel = select(trials, ConstraintsConfig(), "throughput", "classification")
    assert sel["recommended"] == "slow"


def test_select_nothing_feasible_says_why():
    sel = select([trial("a", 10, -0.1)], ConstraintsConfig(max_auc_drop=0.005), "throughput", "classification")
    assert sel["recommended"] is None
    assert sel["reason"] == "none of the 1 completed trials meets the constraints"
    assert select([], ConstraintsConfig(), "throughput", "classification")["reason"] == "no trial completed"


def test_fmt_override_values():
    assert _fmt(None) == "null" and _fmt(True) == "true" and _fmt(0.005) == "0.005"
    assert _fmt([1, 2]) == "[1,2]" and _fmt("/a/b.pt") == "/a/b.pt"
    assert _fmt("null") == "'null'" and _fmt("a b") == "'a b'" and _fmt("it's") == "'it\\'s'"


def test_reproduce_command_composes_to_the_same_config(tmp_path, tiny_checkpoint):
    from medray.data.config import DataConfig
    from medray.io import as_dict
    from medray.models.config import ModelConfig
    from medray.tune.select import _evaluate_dict

    target = EvalConfig(
        backend=TorchConfig(threads=1),
        precision="bf16",
        device="cpu",
        data=DataConfig(name="synthetic", root=str(tmp_path / "data with space"), limit=48, n_test=60),
        model=ModelConfig(name="tiny", arch="resnet10t", checkpoint=str(tiny_checkpoint), input_size=32),
        batch_size=16,
        streams=2,
        cache_dir=str(tmp_path / "cache"),
        warmup_batches=1,
    )
    r = reproduce_command(target, str(tmp_path / "repro"))
    assert r["verified"], r["note"]
    argv = shlex.split(r["command"])
    assert argv[:2] == ["python", "jobs/evaluate.py"]
    assert {"backend=torch", "precision=bf16", "batch_size=16", "streams=2", "data=synthetic", "data.limit=48"} <= set(argv)
    # Composing the command's overrides (as the CLI does) gives the trial's config exactly.
    from medray.tune.select import _flatten

    want = _flatten(as_dict(target))
    want["output_dir"] = str(tmp_path / "repro")
    assert _evaluate_dict(argv[2:]) == want
    assert (REPO / "jobs" / "evaluate.py").is_file()


def test_reproduce_command_gives_the_keys_a_source_or_dataset_requires(tmp_path):
    """model=hf has no default model.path (???) and data=chestxray14 no default data.root:
    the command carries the trial's values of both and composes to its config."""
    from medray.data.config import DataConfig
    from medray.data.preprocess import PreprocessConfig
    from medray.models.config import ModelConfig

    (tmp_path / "hub").mkdir()
    (tmp_path / "nih").mkdir()
    target = EvalConfig(backend=TorchConfig(), device="cpu", data=DataConfig(name="chestxray14", root=str(tmp_path / "nih")),
                        model=ModelConfig(name="hf", source="hf", path=str(tmp_path / "hub")),
                        preprocess=PreprocessConfig(name="model"), cache_dir=str(tmp_path / "cache"))
    r = reproduce_command(target, str(tmp_path / "repro"))
    assert r["verified"], r["note"]
    argv = shlex.split(r["command"])
    assert {"model=hf", f"model.path={tmp_path / 'hub'}", f"data.root={tmp_path / 'nih'}"} <= set(argv)
    assert not any(a.startswith("preprocess") for a in argv)  # model=hf's own default


def test_subgroup_constraint_rejects_a_trial_that_passes_the_overall_one():
    """Overall AUC drop 0.002 (allowed at 0.005) but 0.04 in women: rejected, and the
    next feasible trial is recommended; the worst group comes from the run entry as
    build_metrics writes it (the sweep's trial summary)."""
    from medray.tune.runner import _summary

    c = ConstraintsConfig(max_auc_drop=0.005, min_agreement=None, max_subgroup_auc_drop=0.02)
    entry = {"metric_deltas": {"auc_macro": -0.002}, "metrics": {}, "agreement": {"top1": 1.0},
             "worst_subgroup": {"attribute": "Patient Gender", "group": "F", "n": 120, "delta_auc": -0.04},
             "latency_ms": {"per_sample_p50": 1.0}}
    bad = {**trial("int8-b64", 500, -0.002), "worst_subgroup": _summary(entry)["worst_subgroup"]}
    ok = {**trial("fp16-b64", 300, -0.003), "worst_subgroup": {"attribute": "Patient Gender", "group": "M", "n": 130,
                                                             "delta_auc": -0.01}}
    assert violations(bad, ConstraintsConfig(max_auc_drop=0.005, min_agreement=None), "classification") == []
    assert violations(bad, c, "classification") == [
        "AUC drop 0.0400 in subgroup Patient Gender=F (n=120) > max_subgroup_auc_drop=0.02"]
    assert select([bad, ok], c, "throughput", "classification")["recommended"] == "fp16-b64"
    assert violations(trial("x", 1, 0.0), c, "classification") == [
        "subgroup AUC drop not measurable (max_subgroup_auc_drop=0.02; set report.subgroups or data.metadata)"]
