"""README "Adding a task": a task added from this test folder — its Task subclass here, one
registry row, no edit under medray/ — is validated by the config, prepared, run through the
one pipeline on Ray (read stage, actors, exactly-once accounting), documented and written
(metrics.json, report.md, report.html, its predictions file)."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import pytest
from helpers import TINY_ARCH, TINY_SIZE
from sklearn.metrics import accuracy_score

from medray.data.sources import IMAGE
from medray.tasks import TASKS
from medray.tasks.base import Task

pytestmark = pytest.mark.slow


@dataclass
class ArgmaxTask(Task):
    """A toy task: the class a classifier picks for each image, scored by accuracy."""

    name: ClassVar[str] = "argmax"
    unit: ClassVar[str] = "image"
    data_kinds: ClassVar[tuple[str, ...]] = (IMAGE,)
    identity_columns: ClassVar[tuple[str, ...]] = ("pred",)

    def screen(self, cfg, table, samples):
        from medray.data.policy import apply_policy

        return apply_policy(samples, cfg.data.on_error)

    def resolve_model(self, cfg, table):
        from medray.models.config import ModelRequest
        from medray.models.resolve import resolve_model

        return resolve_model(ModelRequest(cfg.model, cfg.preprocess, cfg.cache_dir), table)

    def calibration(self, cfg, table, samples, model):
        raise NotImplementedError("the toy task runs fp32 only")

    def read_blocks(self, todo, spec, block):
        return [todo.iloc[i:i + block][["sample_id", "path"]] for i in range(0, len(todo), block)]

    def reader(self, spec):
        from medray.tasks.classification.read import decode_batch, model_prep

        return decode_batch, {"prep": model_prep(spec.model), "on_error": "skip"}

    def predict(self, backend, spec, batch):
        from medray.data.preprocess import to_model_input
        from medray.tasks.classification.read import model_prep

        logits = backend.infer(to_model_input(batch["image"], spec.model.in_chans, model_prep(spec.model), backend.inputs))
        n = len(logits)
        return {"pred": logits.argmax(1).astype(np.int64), "batch_ms": np.full(n, backend.last_ms),
                "batch_size": np.full(n, n, dtype=np.int32)}

    def placeholder(self, n, spec):
        return {"pred": np.full(n, -1, dtype=np.int64), "batch_ms": np.zeros(n), "batch_size": np.zeros(n, dtype=np.int32)}

    def run_metrics(self, result, table, samples) -> dict[str, Any]:
        y = table.targets(samples.set_index("sample_id").loc[result.predictions["sample_id"]].reset_index())
        return {"metrics": {"accuracy": float(np.mean(result.predictions["pred"].to_numpy() == y))}}

    def compare(self, base, cand, table, samples, base_entry, cand_entry) -> dict[str, Any]:
        b = base.predictions.set_index("sample_id")["pred"]
        c = cand.predictions.set_index("sample_id")["pred"].loc[b.index]
        return {"agreement": {"top1": float((b == c).mean())}}

    def dataset_section(self, cfg, table, samples, model) -> dict[str, Any]:
        return {"task": table.task, "classes": list(table.classes)}

    def render(self, doc: dict) -> list[str]:
        return [f"# argmax — {doc['dataset']['name']}", "", "| Run | Accuracy |", "|---|---|"] + [
            f"| {r['name']} | {r['metrics']['accuracy']:.4f} |" for r in doc["runs"]]

    def runs_columns(self, run: dict) -> dict[str, str]:
        return {"Latency (ms)": f"{run['latency_ms']['per_sample_mean']:.2f}"}

    def write_predictions(self, out, result, table, samples) -> None:
        from medray import io as medray_io

        df = result.predictions[["sample_id", "pred"]]
        medray_io.write_bytes(medray_io.join(out, "predictions", f"{result.spec.name}.csv"), df.to_csv(index=False).encode())


@pytest.fixture()
def argmax_task(monkeypatch):
    import ray.cloudpickle

    # The actors get the task object by value: this test module is not importable there.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    monkeypatch.setitem(TASKS, "argmax", f"{__name__}:ArgmaxTask")
    yield
    ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


def test_a_task_registered_with_one_row_runs_through_the_one_pipeline(ray_local, argmax_task, tmp_path, tiny_checkpoint):
    from medray.backends.onnxruntime.config import OnnxRuntimeConfig
    from medray.config import EvalConfig, RayConfig
    from medray.data.config import DataConfig
    from medray.models.config import ModelConfig
    from medray.pipeline.evaluate import run

    cfg = EvalConfig(
        task="argmax", backend=OnnxRuntimeConfig(),
        data=DataConfig(root=str(tmp_path / "data"), n_train=4, n_calibration=4, n_test=40, image_size=48),
        model=ModelConfig(name="tiny", arch=TINY_ARCH, checkpoint=str(tiny_checkpoint), input_size=TINY_SIZE),
        ray=RayConfig(num_cpus=2), batch_size=8, output_dir=str(tmp_path / "out"), cache_dir=str(tmp_path / "cache"),
        warmup_batches=1)
    doc = run(cfg)
    out = tmp_path / "out"
    saved = json.loads((out / "metrics.json").read_text())
    assert [r["name"] for r in saved["runs"]] == ["torch-fp32", "onnxruntime-fp32"]
    from medray.data.load import load_table

    table = load_table(cfg.data, cfg.data_root)
    test = table.split("test").set_index("sample_id")
    for r in saved["runs"]:
        pred = pd.read_csv(out / "predictions" / f"{r['name']}.csv").set_index("sample_id")
        assert len(pred) == r["n_samples"] == 40
        y = table.targets(test.loc[pred.index].reset_index())
        assert r["metrics"]["accuracy"] == pytest.approx(accuracy_score(y, pred["pred"]))
    assert saved["runs"][1]["agreement"]["top1"] == 1.0 and doc["dataset"]["task"] == "multiclass"
    assert "# argmax — synthetic" in (out / "report.md").read_text() and (out / "report.html").is_file()


def test_the_config_asks_the_registry(argmax_task):
    from medray.backends.onnxruntime.config import OnnxRuntimeConfig
    from medray.config import EvalConfig
    from medray.data.config import DataConfig
    from medray.errors import ConfigError

    EvalConfig(task="argmax", backend=OnnxRuntimeConfig())
    with pytest.raises(ConfigError, match="task='argmax': data=msd is a segmentation dataset; argmax needs"):
        EvalConfig(task="argmax", backend=OnnxRuntimeConfig(), data=DataConfig(name="msd"))
    with pytest.raises(ConfigError, match="task='nosuch': use one of .*argmax"):
        EvalConfig(task="nosuch", backend=OnnxRuntimeConfig())
