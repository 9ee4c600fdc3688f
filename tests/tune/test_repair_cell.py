"""The repaired INT8 as a sweep cell (``int8+repair``): the grid accepts it only where the
backend can repair, its trial is INT8 with the repair limited by the sweep's own
constraints, its reproduce command composes to that config; end to end, it is ranked
beside full INT8 under the same constraints."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import repair_case as rc
from helpers import REPO

from medray.backends.torch.config import TorchConfig
from medray.config import ConfigError, RayConfig
from medray.data.config import CalibrationConfig, DataConfig
from medray.models.config import ModelConfig
from medray.tune import space
from medray.tune.config import ConstraintsConfig, SweepConfig, SweepJobConfig
from medray.tune.trials import trial_eval_config, trial_record

TARGET = f"{REPO}/tests/repair_case.py:build"


def cfg(root: Path, backends=None, **constraints) -> SweepJobConfig:
    (root / "data").mkdir(exist_ok=True)
    return SweepJobConfig(
        backend=TorchConfig(),
        data=DataConfig(name="imagefolder", root=str(root / "data"), split="test"),
        model=ModelConfig(name="python", source="python", target=TARGET, input_size=rc.SIZE),
        calibration=CalibrationConfig(num_samples=64),
        ray=RayConfig(num_cpus=2),
        batch_size=16,
        output_dir=str(root / "out"),
        cache_dir=str(root / "cache"),
        warmup_batches=1,
        sweep=SweepConfig(backends=backends or {"onnxruntime": ["int8", "int8+repair"]}, batch_sizes=[16], limit=None,
                          bootstrap_samples=200),
        constraints=ConstraintsConfig(**{"max_auc_drop": 0.01, "min_agreement": 0.9, **constraints}),
    )


def test_grid_takes_repair_cells_only_where_they_mean_something(tmp_path):
    pts = space.grid_points(cfg(tmp_path))
    assert [p["run"] for p in pts] == ["onnxruntime-int8", "onnxruntime-int8+repair"]
    assert space.trial_label(pts[1]) == "onnxruntime-int8+repair-b16-s1"
    assert trial_record(pts[1])["precision"] == "int8+repair"
    with pytest.raises(ConfigError, match=r"sweep.backends.onnxruntime='fp16\+repair': precisions are .* and int8\+repair"):
        cfg(tmp_path, {"onnxruntime": ["fp16+repair"]})
    with pytest.raises(ConfigError, match=r"sweep.backends.torch='int8\+repair': backend=torch cannot keep INT8 layers "
                                          r"in float; use int8\+repair with onnxruntime\|openvino\|trt"):
        cfg(tmp_path, {"torch": ["int8+repair"]})


def test_repair_trial_is_int8_limited_by_the_sweeps_constraints(tmp_path):
    c = cfg(tmp_path, max_bacc_drop=0.02)
    plain = trial_eval_config(c, {"run": "onnxruntime-int8", "batch_size": 16, "streams": 1})
    assert plain.precision == "int8" and not plain.quantization.repair
    rep = trial_eval_config(c, {"run": "onnxruntime-int8+repair", "batch_size": 16, "streams": 1})
    q = rep.quantization
    assert rep.precision == "int8" and q.repair and q.max_drop is None and q.max_subgroup_drop is None
    assert q.limits == {"auc_macro": 0.01, "balanced_accuracy": 0.02}
    sub = trial_eval_config(cfg(tmp_path, max_subgroup_auc_drop=0.03),
                            {"run": "onnxruntime-int8+repair", "batch_size": 16, "streams": 1})
    assert sub.quantization.max_subgroup_drop == 0.03


def test_reproduce_command_of_a_repair_trial_composes_to_it(tmp_path):
    from medray.io import as_dict
    from medray.tune.select import _evaluate_dict, _flatten, reproduce_command

    target = trial_eval_config(cfg(tmp_path), {"run": "onnxruntime-int8+repair", "batch_size": 16, "streams": 1},
                               with_baseline=True)
    r = reproduce_command(target, str(tmp_path / "repro"))
    assert r["verified"], r["note"]
    argv = shlex.split(r["command"])
    assert {"precision=int8", "quantization.repair=true"} <= set(argv) and any("quantization.limits" in a for a in argv)
    want = _flatten(as_dict(target))
    want["output_dir"] = str(tmp_path / "repro")
    assert _evaluate_dict(argv[2:]) == want


@pytest.mark.slow
def test_sweep_ranks_the_repaired_int8_beside_full_int8(ray_local, tmp_path):
    from medray.tune.runner import run

    rc.imagefolder(tmp_path / "data")
    c = cfg(tmp_path)
    c.quantization.repair_threads = 1
    doc = run(c)
    by = {t["label"]: t for t in doc["trials"]}
    full, rep = by["onnxruntime-int8-b16-s1"], by["onnxruntime-int8+repair-b16-s1"]
    assert full["status"] == rep["status"] == "ok"
    assert any(v.startswith("AUC drop") for v in full["violations"]) and not full["feasible"]
    assert rep["feasible"] and rep["effective_precision"] == "int8"
    assert doc["recommended"]["label"] == rep["label"]
    assert "quantization.repair=true" in doc["recommended"]["reproduce"]["command"]
    assert "onnxruntime-int8+repair-b16-s1" in (tmp_path / "out" / "sweep.md").read_text()
