"""The clinical sections of metrics.json / report.md from runs as execute() returns them:
NaN outputs named not fatal, threshold transfer from the validation split, flips,
calibration deltas, subgroups from data.metadata, the plots."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from medray.backends.onnxruntime.config import OnnxRuntimeConfig
from medray.config import ConfigError, EvalConfig, backend_config
from medray.data.config import DataConfig
from medray.data.table import SampleTable
from medray.metrics.clinical import choose_threshold
from medray.report.config import ReportConfig
from medray.report.document import build_metrics
from medray.report.markdown import render_report
from medray.results import PoolPlan, RunResult
from medray.specs import ModelSpec, RunSpec
from medray.tasks.classification.config import ThresholdConfig

LABELS = ["Effusion", "Mass"]


def run(name, role, ids, probs, task="multilabel"):
    df = pd.DataFrame({
        "sample_id": ids, "probs": list(np.asarray(probs, dtype=np.float32)),
        "batch_uid": [f"a:{i // 8}" for i in range(len(ids))], "batch_ms": 4.0, "batch_size": 8,
        "node_id": "n1", "worker_pid": 7,
    })
    backend = name.split("-")[0]
    spec = RunSpec(name, role, backend_config(backend), "fp32", "cpu", 8, 1,
                   ModelSpec("resnet10t", probs.shape[1], 3, 32, None, task=task))
    return RunResult(spec, df, 1.0, 10.0, PoolPlan(1, 1.0, 0.0, 1), {"executed": "fp32"})


def cfg_of(**kw):
    return EvalConfig(backend=OnnxRuntimeConfig(), data=DataConfig(name="synthetic"), **kw)


@pytest.fixture
def multilabel():
    """200 test + 200 validation images of 40 patients; the candidate shifts the scores of
    women's Mass probabilities down (a subgroup loss) and adds noise."""
    rng = np.random.default_rng(0)
    n = 400
    ids = [f"img{i:04d}.png" for i in range(n)]
    y = (rng.random((n, 2)) < [0.3, 0.2]).astype(int)
    p = np.clip(0.3 + 0.35 * y + rng.normal(0, 0.15, (n, 2)), 0, 1)
    sex = np.where(np.arange(n) % 2, "M", "F")
    samples = pd.DataFrame({"sample_id": ids, "path": [f"/nowhere/{i}" for i in ids],
                            "split": ["test"] * 200 + ["train_val"] * 200, "target": [tuple(t) for t in y],
                            "patient_id": [f"P{i % 40}" for i in range(n)], "Patient Gender": sex})
    table = SampleTable("chestxray14", "multilabel", LABELS, "/nowhere", samples, subgroup_columns=["Patient Gender"])
    cand = p.copy()
    women = sex == "F"
    cand[women, 1] = np.clip(cand[women, 1] + rng.normal(0, 0.25, women.sum()), 0, 1)
    test = samples["split"] == "test"
    base = run("torch-fp32", "baseline", np.array(ids)[test], p[test])
    cnd = run("onnxruntime-fp32", "candidate", np.array(ids)[test], cand[test])
    val = run("torch-fp32", "validation", np.array(ids)[~test], p[~test])
    return table, samples[test].reset_index(drop=True), base, cnd, val, y, p, cand


@pytest.fixture
def binary_runs():
    """400 test images of a binary task; the candidate equals the baseline up to noise."""
    rng = np.random.default_rng(1)
    n = 400
    ids = [f"b{i:04d}.png" for i in range(n)]
    y = (rng.random(n) < 0.4).astype(int)
    p1 = np.clip(0.3 + 0.4 * y + rng.normal(0, 0.2, n), 0, 1)
    samples = pd.DataFrame({"sample_id": ids, "path": [f"/nowhere/{i}" for i in ids], "split": "test", "target": y})
    table = SampleTable("synthetic", "multiclass", ["NORMAL", "PNEUMONIA"], "/nowhere", samples,
                        positive_class="PNEUMONIA")
    base = run("torch-fp32", "baseline", ids, np.stack([1 - p1, p1], 1), task="multiclass")
    p2 = np.clip(p1 + rng.normal(0, 0.01, n), 0, 1)
    cand = run("onnxruntime-fp32", "candidate", ids, np.stack([1 - p2, p2], 1), task="multiclass")
    return table, samples, base, cand


def test_threshold_chosen_on_validation_applied_to_both(multilabel):
    table, samples, base, cand, val, y, p, c = multilabel
    cfg = cfg_of(threshold=ThresholdConfig(method="sensitivity", target=0.9))
    doc = build_metrics(cfg, table, samples, [base, cand], validation=val)
    thr = doc["threshold"]
    assert thr["chosen_on"] == {"run": "torch-fp32", "split": "train_val", "n": 200}
    for j, name in enumerate(LABELS):
        # On the validation rows (200..399), never on the test rows.
        want = choose_threshold(y[200:, j], p[200:, j].astype(np.float32).astype(np.float64), "sensitivity", 0.9)
        assert thr["values"][name] == pytest.approx(want)
        t = thr["values"][name]
        for entry, probs in ((doc["runs"][0], p[:200]), (doc["runs"][1], c[:200])):
            d = probs[:, j].astype(np.float32) >= t
            yy = y[:200, j] == 1
            op = entry["threshold"][name]
            assert op["sensitivity"] == pytest.approx((d & yy).sum() / yy.sum())
            assert op["specificity"] == pytest.approx((~d & ~yy).sum() / (~yy).sum())
            assert op["ppv"] == pytest.approx((d & yy).sum() / d.sum())
        changed = (p[:200, j].astype(np.float32) >= t) != (c[:200, j].astype(np.float32) >= t)
        assert doc["runs"][1]["flips"]["per_label"][name]["n"] == int(changed.sum())
    assert "flips" not in doc["runs"][0]
    md = render_report(doc)
    assert "## Threshold transfer" in md and "sensitivity ≥ 0.9" in md and "split `train_val`" in md
    json.dumps(doc, allow_nan=False)


def test_calibration_and_subgroups_with_the_worst_group(multilabel):
    table, samples, base, cand, _, y, p, c = multilabel
    doc = build_metrics(cfg_of(), table, samples, [base, cand])
    b, k = doc["runs"]
    assert doc["threshold"]["method"] == "fixed" and doc["threshold"]["values"] == {"Effusion": 0.5, "Mass": 0.5}
    assert k["calibration"]["delta"]["brier"] == pytest.approx(k["calibration"]["brier"] - b["calibration"]["brier"])
    groups = {g["group"]: g for g in k["subgroups"]["Patient Gender"]}
    sex = samples["Patient Gender"].to_numpy()
    for g, row in groups.items():
        m = sex == g
        want = roc_auc_score(y[:200][m], c[:200][m].astype(np.float32), average="macro")
        assert row["auc_macro"] == pytest.approx(want) and row["n"] == m.sum()
        assert row["delta_auc"] == pytest.approx(row["auc_macro"] - row["auc_baseline"])
    assert k["worst_subgroup"]["group"] == "F" and k["worst_subgroup"]["delta_auc"] < -0.02
    md = render_report(doc)
    assert "## Subgroups" in md and "| Patient Gender | F | 100 |" in md and "## Calibration" in md


def test_nan_output_is_a_wrong_answer_named_and_not_fatal(multilabel):
    """A NaN/inf row is scored as the worst answer (every label wrong with certainty), in
    the metrics and the agreement alike: the runs stay compared on the same 200 samples."""
    table, samples, base, cand, *_ = multilabel
    cand.predictions.at[3, "probs"] = np.array([np.nan, 0.5], np.float32)
    cand.predictions.at[7, "probs"] = np.array([np.inf, 0.5], np.float32)
    doc = build_metrics(cfg_of(), table, samples, [base, cand])
    k = doc["runs"][1]
    assert k["nonfinite"]["n"] == 2 and k["nonfinite"]["sample_ids"] == [samples["sample_id"][3], samples["sample_id"][7]]
    assert k["n_scored"] == 200 and k["n_samples"] == 200
    assert k["agreement"]["n"] == 200 and k["agreement"]["n_nonfinite"] == 2 and k["agreement"]["max_abs_prob_diff"] == 1.0
    assert any("2 sample(s) got NaN/infinite outputs, scored as wrong" in w and samples["sample_id"][3] in w
               for w in doc["warnings"])
    ys = np.array([list(t) for t in samples["target"]])
    probs = np.stack(cand.predictions["probs"].to_numpy()).astype(np.float64)
    probs[[3, 7]] = 1 - ys[[3, 7]]
    assert k["metrics"]["auc_macro"] == pytest.approx(roc_auc_score(ys, probs, average="macro"))
    assert k["metrics"]["accuracy"] == pytest.approx(np.mean(((probs >= 0.5) == ys).all(axis=1)))


def test_a_candidate_nan_on_its_hardest_samples_cannot_look_perfect(binary_runs):
    """The audit's constructed case: NaN exactly where the baseline is wrong.  Left out,
    that candidate scored accuracy and agreement 1.0 and was recommended; now it is scored
    worse than the baseline, and the sweep rejects it for its NaN outputs."""
    from medray.tune.config import ConstraintsConfig
    from medray.tune.runner import _summary
    from medray.tune.select import violations

    table, samples, base, cand = binary_runs
    y = table.targets(samples)
    bp = np.stack(base.predictions["probs"].to_numpy())
    wrong = np.flatnonzero((bp[:, 1] >= 0.5).astype(int) != y)
    assert len(wrong) > 5
    cand.predictions["probs"] = base.predictions["probs"]  # equal to the baseline elsewhere
    for i in wrong:
        cand.predictions.at[i, "probs"] = np.array([np.nan, np.nan], np.float32)
    doc = build_metrics(cfg_of(), table, samples, [base, cand])
    b, k = doc["runs"]
    # Wrong where the baseline was wrong: the same accuracy (it was 1.0 when those rows were
    # left out), and a worse AUC (those samples now rank last, not just misclassified).
    assert k["metrics"]["accuracy"] == b["metrics"]["accuracy"] < 1.0
    assert k["metrics"]["auc_macro"] < b["metrics"]["auc_macro"]
    assert k["agreement"]["top1"] == pytest.approx(1 - len(wrong) / len(y))
    rec = {"status": "ok", **_summary(k)}
    assert rec["nonfinite"] == len(wrong)
    assert f"{len(wrong)} sample(s) with NaN/inf outputs > max_nonfinite=0" in violations(rec, ConstraintsConfig(), "classification")


def test_metadata_csv_joins_subgroups_and_patients(tmp_path):
    from medray.data.load import load_table
    from medray.data.synthetic import ensure_synthetic

    root = ensure_synthetic("binary", tmp_path / "ds", n_train=2, n_calibration=2, n_test=6, image_size=32)
    small = dict(n_train=2, n_calibration=2, n_test=6, image_size=32)
    t = load_table(DataConfig(name="synthetic", root=str(root), **small), str(root))
    ids = sorted(t.samples["sample_id"])
    meta = tmp_path / "meta.csv"
    listed = ids[:-1]  # the last sample is not in the metadata file
    pd.DataFrame({"sample_id": listed, "site": [("A", "B")[i % 2] for i in range(len(listed))],
                  "patient_id": [f"P{i // 2}" for i in range(len(listed))]}).to_csv(meta, index=False)
    t = load_table(DataConfig(name="synthetic", root=str(root), metadata=str(meta), **small), str(root))
    assert t.subgroup_columns == ["site"] and t.positive_class == "PNEUMONIA"
    row = t.samples.set_index("sample_id")
    assert row.loc[ids[-1], "site"] == "(missing)" and row.loc[ids[-1], "patient_id"] == f"sample:{ids[-1]}"
    assert row.loc[ids[0], "patient_id"] == "P0"
    bad = tmp_path / "bad.csv"
    bad.write_text("id,site\na,A\n")
    with pytest.raises(ConfigError, match=r"data.metadata=.*bad.csv: no sample_id column"):
        load_table(DataConfig(name="synthetic", root=str(root), metadata=str(bad), **small), str(root))
    with pytest.raises(ConfigError, match=r"data.positive_class='ABNORMAL' is not one of the classes"):
        load_table(DataConfig(name="synthetic", root=str(root), positive_class="ABNORMAL", **small), str(root))
    with pytest.raises(ConfigError, match=r"data.metadata=.*: no such file"):
        DataConfig(name="synthetic", metadata=str(tmp_path / "none.csv"))


def test_report_subgroups_must_exist_and_threshold_config_errors(multilabel):
    from medray.tasks.classification.clinical import check_threshold, subgroup_columns

    table = multilabel[0]
    with pytest.raises(ConfigError, match=r"report.subgroups: \['site'\] are not columns .*Patient Gender"):
        subgroup_columns(cfg_of(report=ReportConfig(subgroups=["site"])), table)
    three = SampleTable("x", "multiclass", ["a", "b", "c"], "/", table.samples)
    with pytest.raises(ConfigError, match=r"threshold.method=youden: dataset x has 3 classes"):
        check_threshold(cfg_of(threshold=ThresholdConfig(method="youden")), three)
    with pytest.raises(ConfigError, match=r"threshold.target=None: .*needs the sensitivity to reach"):
        ThresholdConfig(method="sensitivity")
    with pytest.raises(ConfigError, match=r"threshold.method=.roc.: use one of fixed, youden"):
        ThresholdConfig(method="roc")


def test_plots_are_written_and_linked(multilabel, tmp_path):
    from medray.report.writers import write_outputs

    table, samples, base, cand, val, *_ = multilabel
    cfg = cfg_of(threshold=ThresholdConfig(method="youden"))
    doc = build_metrics(cfg, table, samples, [base, cand], validation=val)
    write_outputs(str(tmp_path), {"report": {"plots": True}}, doc, [base, cand], table, samples)
    from PIL import Image

    for name in ("roc", "reliability", "subgroups_onnxruntime-fp32", "flips_onnxruntime-fp32"):
        f = tmp_path / doc["plots"][name]
        img = np.asarray(Image.open(f).convert("L"))
        assert img.shape[0] > 100 and img.std() > 5, name  # drawn, not blank
    md = (tmp_path / "report.md").read_text()
    assert "![roc](plots/roc.png)" in md and "![reliability](plots/reliability.png)" in md
    assert json.loads((tmp_path / "metrics.json").read_text())["plots"]["roc"] == "plots/roc.png"


def test_one_operating_point_for_every_decision_metric(binary_runs):
    """threshold.method=fixed value=0.3: accuracy, BACC, the operating point, agreement and
    the confusion matrix are all at 0.3, and the report says so (AUC stays threshold-free)."""
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, roc_auc_score

    table, samples, base, cand = binary_runs
    doc = build_metrics(cfg_of(threshold=ThresholdConfig(value=0.3)), table, samples, [base, cand])
    y = table.targets(samples)
    for r, res in zip(doc["runs"], (base, cand)):
        p1 = np.stack(res.predictions["probs"].to_numpy())[:, 1].astype(np.float64)
        assert r["metrics"]["threshold"] == 0.3
        assert r["metrics"]["accuracy"] == pytest.approx(accuracy_score(y, p1 >= 0.3))
        assert r["metrics"]["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, p1 >= 0.3))
        assert r["metrics"]["sensitivity"] == pytest.approx(np.mean(p1[y == 1] >= 0.3))
        assert r["metrics"]["auc_macro"] == pytest.approx(roc_auc_score(y, p1))
        assert r["threshold"]["PNEUMONIA"]["threshold"] == 0.3
    bp = np.stack(base.predictions["probs"].to_numpy())[:, 1]
    cp = np.stack(cand.predictions["probs"].to_numpy())[:, 1]
    assert doc["runs"][1]["agreement"]["top1"] == pytest.approx(np.mean((bp >= 0.3) == (cp >= 0.3)))
    md = render_report(doc)
    assert "decisions are p(PNEUMONIA) ≥ 0.3" in md and "| torch-fp32 | 0.3 |" in md
