"""Resumable runs: a driver killed after part of the data, then resume=true.

The interrupted run is the real CLI (``jobs/evaluate.py``) in a subprocess connected to
this module's Ray; a test-only environment variable makes its driver exit like a kill
right after it wrote K part files.  The resumed run must evaluate only the remaining
samples and end with the outputs of an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
from helpers import REPO, TINY_ARCH, TINY_SIZE
from hydra import compose, initialize_config_dir

from medray.config import ConfigError, register_configs, to_config
from medray.pipeline.resume import EXIT_AFTER_PARTS_ENV, STATE_FILE, read_part

pytestmark = pytest.mark.slow

N_TEST = 40
BATCH = 4
KILL_AFTER = 2  # parts (one per block of Predictor output) written before the driver dies
TIMING = {"batch_uid", "batch_ms", "batch_size", "node_id", "worker_pid", "t_start", "t_end"}


def overrides(tmp, checkpoint, out, *extra):
    return [
        "backend=torch",
        "baseline=null",
        f"data.root={tmp / 'data'}",
        "data.n_train=4",
        "data.n_calibration=4",
        f"data.n_test={N_TEST}",
        "data.image_size=64",
        "data.read_block_size=8",
        "model.name=tiny",
        f"model.arch={TINY_ARCH}",
        f"model.checkpoint={checkpoint}",
        f"model.input_size={TINY_SIZE}",
        f"batch_size={BATCH}",
        "warmup_batches=0",
        f"output_dir={out}",
        f"cache_dir={tmp / 'cache'}",
        *extra,
    ]


def config(*ov):
    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return to_config(compose(config_name="evaluate", overrides=list(ov)))


def predictions(out, run="torch-fp32"):
    t = pq.read_table(out / "predictions" / f"{run}.parquet")
    return t.select([c for c in t.column_names if c not in TIMING])


@pytest.fixture(scope="module")
def runs(ray_local, tmp_path_factory, tiny_checkpoint):
    from medray.pipeline.evaluate import run

    tmp = tmp_path_factory.mktemp("resume")
    ref_out, out = tmp / "uninterrupted", tmp / "interrupted"
    ref = run(config(*overrides(tmp, tiny_checkpoint, ref_out)))  # also generates the data

    env = {**os.environ, EXIT_AFTER_PARTS_ENV: str(KILL_AFTER)}
    addr = ray_local.get_runtime_context().gcs_address
    cmd = [sys.executable, str(REPO / "jobs" / "evaluate.py"), *overrides(tmp, tiny_checkpoint, out, f"ray.address={addr}")]
    killed = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    parts_after_kill = sorted((out / "predictions" / "torch-fp32.parts").glob("*.parquet"))
    rows_after_kill = sum(len(read_part(p)) for p in parts_after_kill)

    resumed = run(config(*overrides(tmp, tiny_checkpoint, out, "resume=true")))
    return dict(tmp=tmp, ref=ref, ref_out=ref_out, out=out, killed=killed, parts_after_kill=parts_after_kill,
                rows_after_kill=rows_after_kill, resumed=resumed)


def test_killed_driver_left_whole_parts_and_no_outputs(runs):
    k = runs["killed"]
    assert k.returncode == 75, (k.returncode, k.stderr[-3000:])
    assert len(runs["parts_after_kill"]) == KILL_AFTER
    assert 0 < runs["rows_after_kill"] < N_TEST  # killed part-way through the data
    assert not list(runs["out"].glob("predictions/*.parts/*.tmp"))  # atomic writes: no half part


def test_resume_processes_only_the_remaining_samples(runs):
    r = runs["resumed"]["runs"][0]
    done = runs["rows_after_kill"]
    assert r["resumed"] == {"from_previous": done, "processed": N_TEST - done}
    assert r["n_samples"] == N_TEST and r["n_skipped"] == 0
    md = (runs["out"] / "report.md").read_text()
    assert f"resumed — {done} samples from the interrupted run, {N_TEST - done} evaluated now" in md


def test_resumed_outputs_equal_the_uninterrupted_run(runs):
    ref, res = runs["ref"]["runs"][0], runs["resumed"]["runs"][0]
    assert res["metrics"] == ref["metrics"]
    assert res["n_samples"] == ref["n_samples"] == N_TEST
    a, b = predictions(runs["ref_out"]), predictions(runs["out"])
    assert a.column_names == b.column_names == ["sample_id", "target", "probs"]
    assert a.equals(b), "predictions differ from the uninterrupted run"
    # every part row is a prediction of the merged file: nothing lost, nothing twice
    parts = [read_part(p) for p in sorted((runs["out"] / "predictions" / "torch-fp32.parts").glob("*.parquet"))]
    ids = [s for p in parts for s in p["sample_id"]]
    assert len(ids) == len(set(ids)) == N_TEST


def test_resume_of_a_finished_run_evaluates_nothing(runs, tiny_checkpoint):
    from medray.pipeline.evaluate import run

    again = run(config(*overrides(runs["tmp"], tiny_checkpoint, runs["out"], "resume=true")))
    r = again["runs"][0]
    assert r["resumed"] == {"from_previous": N_TEST, "processed": 0}
    assert r["metrics"] == runs["ref"]["runs"][0]["metrics"]


def test_resume_refuses_a_different_config(runs, tiny_checkpoint):
    from medray.pipeline.evaluate import run

    state = json.loads((runs["out"] / STATE_FILE).read_text())
    with pytest.raises(ConfigError) as e:
        run(config(*overrides(runs["tmp"], tiny_checkpoint, runs["out"], "resume=true", "batch_size=8")))
    msg = str(e.value)
    assert msg.startswith(f"resume=true: output_dir={runs['out']} holds a run of a different configuration (")
    assert "batch_size: 4 → 8" in msg and "use another output_dir" in msg
    assert json.loads((runs["out"] / STATE_FILE).read_text()) == state  # nothing overwritten


def test_fresh_run_clears_old_parts_and_damaged_parts_are_redone(tmp_path):
    import numpy as np
    import pandas as pd

    from medray.config import DataConfig, EvalConfig, TorchConfig
    from medray.pipeline.resume import ResumeState

    out = tmp_path / "o"
    parts = out / "predictions" / "torch-fp32.parts"
    parts.mkdir(parents=True)
    (parts / "000000.parquet").write_bytes(b"old")
    cfg = EvalConfig(backend=TorchConfig(), baseline=None, data=DataConfig(), output_dir=str(out), cache_dir=str(tmp_path))
    samples = pd.DataFrame({"sample_id": ["a", "b"]})
    # resume=false over a directory with parts starts over: the parts are removed
    state = ResumeState.open(out, cfg, samples, [])
    assert not parts.exists() and (out / STATE_FILE).is_file()

    w = state.writer("torch-fp32")
    w({"sample_id": np.array(["a"], dtype=object), "probs": np.array([[0.25, 0.75]], np.float32),
       "effective_precision": np.array(['{"executed": "fp32"}'], dtype=object)})
    w({"sample_id": np.array(["b"], dtype=object), "probs": np.array([[0.5, 0.5]], np.float32),
       "effective_precision": np.array([""], dtype=object)})
    got = state.load("torch-fp32")
    assert list(got["sample_id"]) == ["a", "b"] and got["probs"][0].dtype == np.float32
    np.testing.assert_array_equal(got["probs"][0], [0.25, 0.75])
    # a damaged part is deleted (logged) and its samples count as not done
    (parts / "000001.parquet").write_bytes(b"PAR1 truncated")
    assert state.done_ids("torch-fp32") == {"a"} and not (parts / "000001.parquet").exists()
    assert state.writer("torch-fp32").next == 1
