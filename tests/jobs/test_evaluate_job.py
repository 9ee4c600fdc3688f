"""`jobs/evaluate.py` as a user runs it: the output contract of DESIGN.md on a small synthetic set."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
from helpers import REPO, TINY_ARCH, TINY_SIZE
from sklearn.metrics import roc_auc_score

pytestmark = pytest.mark.slow

RUN_KEYS = {
    "name", "role", "backend", "precision", "device", "batch_size", "streams", "n_samples", "n_skipped",
    "latency_ms", "throughput_sps", "metrics", "artifact",
}


def test_evaluate_writes_the_output_contract(tmp_path, tiny_checkpoint):
    out = tmp_path / "out"
    p = subprocess.run(
        [
            sys.executable, str(REPO / "jobs" / "evaluate.py"), "backend=onnxruntime", "precision=fp32",
            f"data.root={tmp_path / 'data'}", "data.n_train=4", "data.n_calibration=4", "data.n_test=40",
            "data.image_size=64", "data.limit=30", "batch_size=8", "streams=1",
            "model.name=tiny", f"model.arch={TINY_ARCH}", f"model.checkpoint={tiny_checkpoint}",
            f"model.input_size={TINY_SIZE}", "ray.num_cpus=2", f"output_dir={out}", f"cache_dir={tmp_path / 'cache'}",
        ],
        capture_output=True, text=True, cwd=tmp_path, timeout=600,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    assert f"outputs written to {out}" in p.stdout
    for f in ("config.yaml", "metrics.json", "report.md", "predictions/torch-fp32.parquet", "predictions/onnxruntime-fp32.parquet"):
        assert (out / f).is_file(), f

    doc = json.loads((out / "metrics.json").read_text())
    assert doc["dataset"]["n_samples"] == 30 and doc["dataset"]["task"] == "multiclass"
    assert doc["dataset"]["classes"] == ["NORMAL", "PNEUMONIA"]
    base, cand = doc["runs"]
    assert (base["role"], base["name"], cand["role"], cand["name"]) == ("baseline", "torch-fp32", "candidate", "onnxruntime-fp32")
    for r in (base, cand):
        assert RUN_KEYS <= set(r), RUN_KEYS - set(r)
        assert r["n_samples"] + r["n_skipped"] == 30
        assert set(r["latency_ms"]) >= {"per_sample_p50", "per_sample_p95", "per_sample_mean"}
        assert set(r["metrics"]) >= {"accuracy", "balanced_accuracy", "auc_macro", "f1_macro", "sensitivity", "specificity"}
    assert cand["agreement"]["top1"] >= 0.99 and cand["agreement"]["max_abs_prob_diff"] <= 1e-3
    assert set(cand["speedup"]) >= {"latency_reduction_pct", "factor"}
    assert cand["artifact"]["bytes"] > 0 and cand["artifact"]["path"].endswith(".onnx")

    # metrics.json's AUC is scikit-learn's on the parquet rows
    t = pq.read_table(out / "predictions" / "onnxruntime-fp32.parquet").to_pandas()
    assert len(t) == 30 and t["sample_id"].is_unique
    probs = np.stack(t["probs"].to_numpy())
    assert cand["metrics"]["auc_macro"] == pytest.approx(roc_auc_score(t["target"].astype(int), probs[:, 1]), abs=1e-9)

    report = (out / "report.md").read_text()
    assert "| Dataset | Model | Latency (ms) | Speed-up | Accuracy | BACC | mAUC |" in report
    assert "Baseline torch-fp32" in report and "Candidate onnxruntime-fp32" in report
