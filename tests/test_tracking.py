"""tracking=mlflow against a real local MLflow store (SQLite), read back with MlflowClient:
an evaluation run with its params, metrics, tags and artifacts; a sweep's parent run with
one child per trial (Ray Tune's MLflow callback) and the recommendation as tags."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import TINY_ARCH, TINY_SIZE

from medray.backends.torch.config import TorchConfig
from medray.config import ConfigError, EvalConfig, RayConfig
from medray.data.config import DataConfig
from medray.models.config import ModelConfig
from medray.tracking.config import TrackingConfig
from medray.tune.config import ConstraintsConfig, SweepConfig, SweepJobConfig

mlflow = pytest.importorskip("mlflow", reason="pip install -e '.[tracking]'")
pytestmark = pytest.mark.slow
DATA = dict(n_train=4, n_calibration=8, n_test=48, image_size=48)


def _common(root: Path, ckpt, tracking: TrackingConfig) -> dict:
    return dict(
        data=DataConfig(name="synthetic", root=str(root / "data"), **DATA),
        model=ModelConfig(name="tiny", arch=TINY_ARCH, checkpoint=str(ckpt), input_size=TINY_SIZE),
        ray=RayConfig(num_cpus=2), batch_size=8, output_dir=str(root / "out"), cache_dir=str(root / "cache"),
        warmup_batches=1, tracking=tracking,
    )


def test_evaluation_is_an_mlflow_run(ray_local, tmp_path, tiny_checkpoint):
    from mlflow import MlflowClient

    from medray.backends.onnxruntime.config import OnnxRuntimeConfig
    from medray.pipeline.evaluate import run

    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    t = TrackingConfig(backend="mlflow", uri=uri, experiment="chest-ct-review")
    doc = run(EvalConfig(backend=OnnxRuntimeConfig(), **_common(tmp_path, tiny_checkpoint, t)))
    c = MlflowClient(tracking_uri=uri)
    exp = c.get_experiment_by_name("chest-ct-review")
    (r,) = c.search_runs([exp.experiment_id])
    assert r.info.run_id == doc["tracking"]["mlflow_run_id"] and r.info.status == "FINISHED"
    assert r.info.run_name == "onnxruntime-fp32"
    p, m, tags = r.data.params, r.data.metrics, r.data.tags
    assert p["backend"] == "onnxruntime" and p["precision"] == "fp32" and p["baseline"] == "torch-fp32"
    assert p["batch_size"] == "8" and p["preprocess.name"] == "medray" and p["dataset"] == "synthetic"
    assert p["model.checkpoint_sha256"] == doc["model"]["checkpoint_sha256"]
    assert p["dataset.samples_sha256"] == doc["dataset"]["samples_sha256"] and p["version.torch"]
    base, cand = doc["runs"]
    assert m["candidate.auc_macro"] == pytest.approx(cand["metrics"]["auc_macro"])
    assert m["baseline.auc_macro"] == pytest.approx(base["metrics"]["auc_macro"])
    assert m["delta.auc_macro"] == pytest.approx(cand["metric_deltas"]["auc_macro"])
    assert m["speedup.factor"] == pytest.approx(cand["speedup"]["factor"])
    assert m["candidate.throughput_sps"] == pytest.approx(cand["throughput_sps"])
    assert m["candidate.latency_ms.per_sample_p95"] == pytest.approx(cand["latency_ms"]["per_sample_p95"])
    assert m["candidate.calibration.ece"] == pytest.approx(cand["calibration"]["ece"])
    assert tags["medray.role"] == "evaluation" and "cores" in tags["medray.machine"]
    files = {f.path for f in c.list_artifacts(r.info.run_id)} | {f.path for f in c.list_artifacts(r.info.run_id, "plots")}
    assert {"report.md", "metrics.json", "config.yaml", "plots/roc.png"} <= files
    assert "| synthetic | Candidate onnxruntime-fp32" in Path(c.download_artifacts(r.info.run_id, "report.md", str(tmp_path))).read_text()


def test_sweep_is_a_parent_run_with_one_child_per_trial(ray_local, tmp_path, tiny_checkpoint):
    from mlflow import MlflowClient

    from medray.tune.runner import run

    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    t = TrackingConfig(backend="mlflow", uri=uri)
    cfg = SweepJobConfig(backend=TorchConfig(), sweep=SweepConfig(backends={"onnxruntime": ["fp32"]}, batch_sizes=[4, 8],
                                                                   streams=[1], limit=32, bootstrap_samples=200),
                         constraints=ConstraintsConfig(max_auc_drop=0.01, min_agreement=0.9),
                         **_common(tmp_path, tiny_checkpoint, t))
    doc = run(cfg)
    c = MlflowClient(tracking_uri=uri)
    exp = c.get_experiment_by_name("medray")
    parent = c.get_run(doc["tracking"]["mlflow_run_id"])
    assert parent.data.tags["medray.role"] == "sweep" and parent.info.status == "FINISHED"
    rec = doc["recommended"]
    assert parent.data.tags["medray.recommended"] == rec["trial_id"]
    assert parent.data.tags["medray.recommended.label"] == rec["label"]
    assert parent.data.tags["medray.recommended.command"].startswith("python jobs/evaluate.py")
    assert parent.data.params["sweep.batch_sizes"] == "[4, 8]" and parent.data.params["constraints.max_auc_drop"] == "0.01"
    children = c.search_runs([exp.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert len(children) == len(doc["trials"]) == 2
    labels = {ch.data.tags["medray.label"]: ch for ch in children}
    assert set(labels) == {"onnxruntime-fp32-b4-s1", "onnxruntime-fp32-b8-s1"}
    for x in doc["trials"]:
        ch = labels[x["label"]]
        assert ch.data.params["batch_size"] == str(x["batch_size"])  # Tune's callback logs the trial config
        assert ch.data.metrics["throughput_sps"] == pytest.approx(x["throughput_sps"])
        assert ch.data.metrics["delta.auc_macro"] == pytest.approx(x["deltas"]["auc_macro"])
        assert ch.data.tags["medray.recommended"] == str(x["trial_id"] == rec["trial_id"])
    assert {f.path for f in c.list_artifacts(parent.info.run_id)} >= {"sweep.md", "sweep.json"}


def test_tracking_config_errors(monkeypatch):
    import builtins

    with pytest.raises(ConfigError, match=r"tracking.backend='wandb': use one of none, mlflow"):
        TrackingConfig(backend="wandb")
    real = builtins.__import__

    def no_mlflow(name, *a, **k):
        if name == "mlflow":
            raise ImportError("No module named 'mlflow'")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_mlflow)
    with pytest.raises(ConfigError, match=r"tracking='mlflow': mlflow is not installed: pip install -e '.\[tracking\]'"):
        TrackingConfig(backend="mlflow")


@pytest.mark.parametrize("uri", ["file:///tmp/mlruns", "mlruns", "./runs/mlflow"])
def test_a_file_store_uri_is_refused_before_anything_runs(uri):
    """MLflow 3 accepted it and refused it after the whole evaluation, with a traceback."""
    from medray.errors import ConfigError

    with pytest.raises(ConfigError, match=r"tracking.uri=.*MLflow 3 has no file store; use a database file, e\.g\. "
                                          r"tracking.uri=sqlite:///.*mlflow.db"):
        TrackingConfig(backend="mlflow", uri=uri)
    assert TrackingConfig(backend="mlflow", uri="databricks").uri == "databricks"
