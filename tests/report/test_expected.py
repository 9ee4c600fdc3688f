"""model.expected: the report's first section says whether the baseline reproduces the
published metrics (the published value inside the bootstrap CI of the baseline's metric),
warns in the console and metrics.json when it does not, and its absence changes nothing."""

from __future__ import annotations

import logging
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from helpers import TINY_ARCH, TINY_SIZE
from sklearn.metrics import roc_auc_score

from medray.backends.onnxruntime.config import OnnxRuntimeConfig
from medray.config import EvalConfig, RayConfig
from medray.data.config import DataConfig
from medray.data.table import SampleTable
from medray.errors import ConfigError
from medray.models.config import ModelConfig
from medray.report.expected import expected_section, expected_warnings, render_expected
from medray.tasks import task_class, task_of


def fake_run(expected: dict, df: pd.DataFrame):
    spec = SimpleNamespace(role="baseline", model=SimpleNamespace(expected=expected))
    return SimpleNamespace(spec=spec, predictions=df)


def test_classification_auc_ci_and_verdicts(caplog):
    rng = np.random.default_rng(0)
    n = 80
    y = rng.integers(0, 2, n)
    p1 = np.clip(0.2 * y + rng.uniform(0, 0.8, n), 0, 1)
    ids = [f"s{i:03d}" for i in range(n)]
    samples = pd.DataFrame({"sample_id": ids, "path": ids, "split": "test", "target": y})
    table = SampleTable("toy", "multiclass", ["normal", "disease"], "/x", samples, positive_class="disease")
    df = pd.DataFrame({"sample_id": ids[::-1], "probs": list(np.stack([1 - p1, p1], 1)[::-1])})  # any order
    auc = roc_auc_score(y, p1)
    entry = {"name": "torch-fp32", "metrics": {"threshold": 0.5}}
    task = task_of("multiclass")
    near = expected_section([fake_run({"auc_macro": {"value": auc, "from": "model.expected"}}, df)], [entry], table,
                            samples, task)
    m = near["metrics"]["auc_macro"]
    assert m["baseline"] == pytest.approx(auc) and m["ci"][0] < auc < m["ci"][1] and m["n"] == n
    assert m["reproduced"] is True and near["reproduced"] is True and expected_warnings(near) == []
    with caplog.at_level(logging.WARNING, logger="medray.report"):
        far = expected_section([fake_run({"auc_macro": {"value": 0.99, "from": "model.expected"},
                                          "accuracy": {"value": float(np.mean((p1 >= 0.5) == y)), "from": "paper"}}, df)],
                               [entry], table, samples, task)
    assert far["metrics"]["auc_macro"]["reproduced"] is False and far["reproduced"] is False
    assert far["metrics"]["accuracy"]["reproduced"] is True
    (warning,) = expected_warnings(far)
    assert warning.startswith("torch-fp32 does not reproduce the published auc_macro 0.9900 (model.expected)")
    assert warning in caplog.text  # the console hears it too
    lines = render_expected(far)
    assert lines[1] == "## Published metrics" and "**not reproduced**" in lines[-2] and "| accuracy |" in lines[-1]
    assert expected_section([fake_run({}, df)], [entry], table, samples, task) is None and render_expected(None) == []


def test_segmentation_mean_dice_ci_is_over_cases():
    dice = [np.array([0.8, 0.6]), np.array([0.9, np.nan]), np.array([0.7, 0.5]), np.array([np.nan, np.nan])]
    df = pd.DataFrame({"sample_id": ["a", "b", "c", "d"], "dice": dice, "has_label": [True, True, True, False]})
    task = task_class("segmentation")()
    out = task.metric_ci(fake_run({}, df), None, None, {}, "dice_mean", 500, 0.95)
    assert out["estimate"] == pytest.approx(np.mean([0.7, 0.9, 0.6])) and out["n"] == 3
    assert 0.6 <= out["ci"][0] <= out["estimate"] <= out["ci"][1] <= 0.9


def test_expected_metrics_are_checked_before_ray(tmp_path):
    base = dict(backend=OnnxRuntimeConfig(), cache_dir=str(tmp_path))
    with pytest.raises(ConfigError, match=r"model.expected=\{'dice_mean': 0.9\}: task=classification checks a published "
                                          "auc_macro / balanced_accuracy / accuracy; not dice_mean"):
        EvalConfig(**base, model=ModelConfig(expected={"dice_mean": 0.9}))
    with pytest.raises(ConfigError, match="model.expected=.*give the published value of each metric as a number"):
        ModelConfig(expected={"auc_macro": "high"})
    assert EvalConfig(**base, model=ModelConfig(expected={"auc_macro": 1})).model.expected == {"auc_macro": 1.0}


@pytest.mark.slow
def test_a_classification_run_reports_the_published_auc_first(ray_local, tmp_path, tiny_checkpoint):
    from medray.pipeline.execute import execute
    from medray.pipeline.prepare import prepare
    from medray.report.document import build_metrics
    from medray.report.markdown import render_report

    cfg = EvalConfig(backend=OnnxRuntimeConfig(), batch_size=8, warmup_batches=0, ray=RayConfig(num_cpus=2),
                     data=DataConfig(name="synthetic", root=str(tmp_path / "data"), n_train=8, n_calibration=8,
                                     n_test=40, image_size=64),
                     model=ModelConfig(name="tiny", arch=TINY_ARCH, checkpoint=str(tiny_checkpoint), input_size=TINY_SIZE,
                                       expected={"auc_macro": 0.97}),
                     output_dir=str(tmp_path / "out"), cache_dir=str(tmp_path / "cache"))
    table, samples, specs, task = prepare(cfg)
    assert specs[0].model.expected == {"auc_macro": {"value": 0.97, "from": "model.expected"}}
    results = execute(cfg, task, samples, specs)
    doc = build_metrics(cfg, table, samples, results, task)
    m = doc["expected"]["metrics"]["auc_macro"]
    assert doc["expected"]["run"] == "torch-fp32" and m["baseline"] == doc["runs"][0]["metrics"]["auc_macro"]
    assert m["reproduced"] is False  # a random-weight model is no 0.97 AUC model
    assert doc["warnings"][0].startswith("torch-fp32 does not reproduce the published auc_macro 0.9700")
    md = render_report(doc, task).splitlines()
    assert md[2] == "## Published metrics" and md.index("## Published metrics") < next(
        i for i, line in enumerate(md) if line.startswith("| Dataset |"))
    # without a published number, the document is the same but for the key itself
    plain = [replace(r, spec=replace(r.spec, model=replace(r.spec.model, expected={}))) for r in results]
    doc2 = build_metrics(cfg, table, samples, plain, task)
    assert doc2["expected"] is None and doc2["warnings"] == doc["warnings"][1:]
    strip = ("expected", "warnings")
    assert {k: v for k, v in doc2.items() if k not in strip} == {k: v for k, v in doc.items() if k not in strip}
    assert "Published metrics" not in render_report(doc2, task)
