"""Trial configs and result collection, without Ray."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from medray.backends.onnxruntime.config import OnnxRuntimeConfig
from medray.backends.torch.config import TorchConfig
from medray.config import ConfigError
from medray.tune.config import SweepConfig, SweepJobConfig
from medray.tune.state import collect as _collect
from medray.tune.trials import expected_trials, trial_eval_config


def root(**sweep) -> SweepJobConfig:
    return SweepJobConfig(backend=TorchConfig(threads=1), batch_size=8, sweep=SweepConfig(**sweep))


def test_trial_eval_config_is_the_root_with_the_point():
    cfg = root(limit=100, backend_options={"onnxruntime": {"graph_optimization": "basic"}})
    t = trial_eval_config(cfg, {"run": "onnxruntime-fp32", "batch_size": 64, "streams": 2})
    assert isinstance(t.backend, OnnxRuntimeConfig) and t.backend.graph_optimization == "basic"
    assert (t.precision, t.batch_size, t.streams, t.data.limit, t.baseline) == ("fp32", 64, 2, 100, None)
    assert t.device == cfg.device == "cpu" and t.model == cfg.model
    # The baseline backend keeps the root's own backend options (backend.threads=1 here).
    b = trial_eval_config(cfg, {"run": "torch-fp32", "batch_size": 8, "streams": 1}, with_baseline=True)
    assert b.backend.threads == 1 and b.baseline == "torch-fp32"
    # An unsupported pair is rejected by the evaluate config's own validation, at trial time.
    with pytest.raises(ConfigError, match=r"precision='int8': backend=torch on device=cpu supports"):
        trial_eval_config(cfg, {"run": "torch-int8", "batch_size": 8, "streams": 1})


def test_expected_trials():
    assert expected_trials(root(backends={"torch": ["fp32", "bf16"]}, batch_sizes=[1, 2, 4], streams=[1])) == 6
    assert expected_trials(root(search="random", num_samples=5)) == 5
    assert expected_trials(root(num_samples=2)) == 2 * 2 * 2


def _result(tid, config, metrics=None, error=None, path="/x"):
    return SimpleNamespace(metrics=metrics or {}, error=error, config=config, checkpoint=None, path=f"{path}/t_{tid}")


def test_collect_classifies_every_trial(tmp_path):
    point = {"run": "onnxruntime-fp32", "batch_size": 16, "streams": 1}
    done = {"trial_id": "a", "label": "x", "status": "ok", "run_uid": "u"}
    ck = tmp_path / "t_a" / "checkpoint_000000"
    ck.mkdir(parents=True)
    grid = [
        _result("a", point, {"final": True, "record": json.dumps(done), "trial_id": "a"}, path=str(tmp_path)),
        _result("b", point, {"trial_id": "b"}, error=RuntimeError("worker died: OOM")),  # process killed
        _result("c", point, {"final": False, "throughput_sps": 50.0, "trial_id": "c"}),  # ASHA stopped it
        _result("d", point, {"final": False, "trial_id": "d"}),  # running when interrupted
        _result("e", point),  # never started
    ]
    statuses = {"a": "TERMINATED", "b": "ERROR", "c": "TERMINATED", "d": "RUNNING", "e": "PENDING"}
    recs = {r["trial_id"]: r for r in _collect(grid, statuses)}
    assert recs["a"]["status"] == "ok" and recs["a"]["checkpoint"] == str(ck)
    assert recs["b"]["status"] == "failed" and "worker died: OOM" in recs["b"]["error"]
    assert recs["c"]["status"] == "stopped" and recs["c"]["throughput_sps"] == 50.0
    assert recs["d"]["status"] == recs["e"]["status"] == "unfinished"
    assert recs["e"]["label"] == "onnxruntime-fp32-b16-s1"


def test_restored_trial_reports_its_saved_record_without_evaluating(tmp_path, monkeypatch):
    """A trial interrupted after its final report (Tune still saw it RUNNING) is restored from
    that report's checkpoint: the saved record is reported again, same run id, nothing re-run."""
    from ray import tune

    from medray.tune import runner
    from medray.tune.trials import RECORD

    cfg = root()
    rec = {"label": "torch-fp32-b8-s1", "run_uid": "abc123", "status": "ok", "throughput_sps": 123.0,
           "throughput": {"end_to_end_sps": 100.0, "inference_sps": 123.0}}
    (tmp_path / RECORD).write_text(json.dumps(rec))
    reported = []
    monkeypatch.setattr(tune, "get_checkpoint", lambda: tune.Checkpoint.from_directory(str(tmp_path)))
    monkeypatch.setattr(tune, "report", lambda metrics, checkpoint=None: reported.append((metrics, checkpoint)))
    # Evaluating again would need these: they are absent, so any attempt fails the test.
    shared = SimpleNamespace(cfg=cfg)
    runner.run_trial({"run": "torch-fp32", "batch_size": 8, "streams": 1}, shared)
    [(metrics, ckpt)] = reported
    assert metrics["final"] and metrics["ok"] and ckpt.path == str(tmp_path)
    assert json.loads(metrics["record"]) == rec
    assert metrics["score"] == runner.score(rec, cfg)


def test_restored_checkpoint_without_a_record_is_evaluated_again(tmp_path, monkeypatch):
    """A checkpoint written before records travelled in it: the trial runs again (here it
    fails at once on the unsupported pair, and reports that with a fresh record)."""
    from ray import tune

    from medray.tune import runner

    reported = []
    monkeypatch.setattr(tune, "get_checkpoint", lambda: tune.Checkpoint.from_directory(str(tmp_path)))
    monkeypatch.setattr(tune, "report", lambda metrics, checkpoint=None: reported.append(metrics))
    monkeypatch.setattr(tune, "get_context", lambda: SimpleNamespace(get_trial_id=lambda: "t_00001"))
    runner.run_trial({"run": "torch-int8", "batch_size": 8, "streams": 1}, SimpleNamespace(cfg=root()))
    [metrics] = reported
    rec = json.loads(metrics["record"])
    assert not metrics["ok"] and rec["trial_id"] == "t_00001" and rec["status"] == "failed"
    assert "precision='int8': backend=torch on device=cpu supports" in rec["error"]
