"""Worker faults, bounded retries, resumable runs and explained resource errors.

One Ray and one uninterrupted reference run (``jobs/evaluate.py``'s config, composed by
Hydra) serve every end-to-end test of this module:

* a Predictor killed mid-run is restarted by Ray and its batch retried: every sample
  exactly once, the very metrics and probabilities of the reference;
* a crash that repeats fails after ``ray.max_retries``; an exception (out of memory)
  fails at once with its cause and a smaller batch size to use;
* a driver killed after part of the data (the real CLI in a subprocess, exiting like a
  kill after K part files), then ``resume=true``: only the remaining samples are
  evaluated and the outputs equal the reference's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pyarrow.parquet as pq
import pytest
from helpers import REPO, TINY_ARCH, TINY_SIZE
from hydra import compose, initialize_config_dir

from medray.backends.base import Backend, BackendError, is_out_of_memory
from medray.cli import register_configs
from medray.config import ConfigError, RayConfig, to_config
from medray.io import read_part
from medray.pipeline.faults import WorkerFault, dedupe_retried
from medray.pipeline.resources import plan_pool
from medray.pipeline.resume import EXIT_AFTER_PARTS_ENV, INTERRUPT_AFTER_PARTS_ENV, STATE_FILE

N_TEST = 40
BATCH = 4
RUN = "torch-fp32"
KILL_AFTER = 2  # resume parts (one per block of Predictor output) written before the driver dies
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


def predictions(out, run=RUN):
    """The predictions file without its timing/worker columns."""
    t = pq.read_table(out / "predictions" / f"{run}.parquet")
    return t.select([c for c in t.column_names if c not in TIMING])


@pytest.fixture(scope="module")
def tmp(tmp_path_factory):
    return tmp_path_factory.mktemp("rel")


@pytest.fixture(scope="module")
def reference(ray_local, tmp, tiny_checkpoint):
    """The uninterrupted run (also generates the data)."""
    from medray.pipeline.evaluate import run

    out = tmp / "uninterrupted"
    return run(config(*overrides(tmp, tiny_checkpoint, out))), out


@pytest.fixture(scope="module")
def prepared(reference, tmp, tiny_checkpoint):
    from medray.pipeline.prepare import prepare

    cfg = config(*overrides(tmp, tiny_checkpoint, tmp / "faults"))
    table, samples, specs, task = prepare(cfg)
    return cfg, table, samples, specs, task


def with_options(specs, **options):
    return [replace(s, options={**s.options, **options}) for s in specs]


# --------------------------------------------------------------------------- worker faults


@pytest.mark.slow
def test_killed_worker_is_retried_with_identical_metrics_and_no_duplicates(reference, prepared, tmp_path):
    from medray.pipeline.execute import execute
    from medray.report.document import build_metrics

    cfg, table, samples, specs, task = prepared
    marker = tmp_path / "killed-once"
    results = execute(cfg, task, samples, with_options(specs, fail_after_batches=3, fail_once_marker=str(marker)))
    doc = build_metrics(cfg, table, samples, results, task)

    assert marker.exists(), "the fault was not injected"
    df = results[0].predictions
    # the restarted actor is a new process: two worker pids, every sample once
    assert df["worker_pid"].nunique() >= 2
    assert not df["sample_id"].duplicated().any() and sorted(df["sample_id"]) == sorted(samples["sample_id"])
    ref, ref_out = reference
    assert doc["runs"][0]["n_samples"] == ref["runs"][0]["n_samples"] == N_TEST
    assert doc["runs"][0]["metrics"] == ref["runs"][0]["metrics"]
    ref_probs = predictions(ref_out).column("probs").to_numpy(zero_copy_only=False)
    np.testing.assert_array_equal(np.stack(df["probs"]), np.stack(ref_probs))


@pytest.mark.slow
def test_worker_that_keeps_crashing_fails_after_bounded_retries(prepared):
    from medray.pipeline.execute import execute

    cfg, _, samples, specs, task = prepared
    cfg = replace(cfg, ray=replace(cfg.ray, max_retries=1))
    with pytest.raises(WorkerFault) as e:
        execute(cfg, task, samples, with_options(specs, fail_after_batches=0))  # dies on every batch
    msg = str(e.value)
    assert msg.startswith(f"{RUN}: a Predictor worker died and kept dying after 1 restarts/retries")
    assert "ray.max_retries=1" in msg


@pytest.mark.slow
def test_an_actor_that_cannot_start_is_reported_as_itself(prepared):
    """The break-it round: a session that fails to start was reported as a worker that
    "kept dying ... (a segfault)"; its own error is the message."""
    from medray.pipeline.execute import execute

    cfg, _, samples, specs, task = prepared
    with pytest.raises(WorkerFault) as e:
        execute(cfg, task, samples, with_options(specs, fail_load="this CPU has no fp16"))
    assert str(e.value) == f"{RUN}: the Predictor could not start its {RUN} session: RuntimeError: injected: this CPU has no fp16"


@pytest.mark.slow
def test_out_of_memory_in_a_worker_fails_at_once_naming_a_smaller_batch(prepared, tmp_path):
    from medray.pipeline.execute import execute

    cfg, _, samples, specs, task = prepared
    attempts = tmp_path / "attempts"
    with pytest.raises(BackendError) as e:
        execute(cfg, task, samples, with_options(specs, oom_at_batch_size=BATCH, attempts_file=str(attempts)))
    msg = str(e.value)
    assert f"{RUN}: out of memory on cpu at batch_size={BATCH}" in msg
    assert f"lower batch_size (e.g. batch_size={BATCH // 2})" in msg and "MemoryError" in msg
    # an exception is not retried (it is the answer): no batch ran twice, no actor restarted
    pids, batches = zip(*(line.split() for line in attempts.read_text().splitlines()))
    assert len(set(pids)) == 1 and len(batches) == len(set(batches)), attempts.read_text()


# --------------------------------------------------------------------------- resume


@pytest.fixture(scope="module")
def resumed(reference, ray_local, tmp, tiny_checkpoint):
    """The CLI killed after KILL_AFTER parts, then ``resume=true`` in the same output_dir."""
    from medray.pipeline.evaluate import run

    out = tmp / "interrupted"
    env = {**os.environ, EXIT_AFTER_PARTS_ENV: str(KILL_AFTER)}
    addr = ray_local.get_runtime_context().gcs_address
    cmd = [sys.executable, str(REPO / "jobs" / "evaluate.py"), *overrides(tmp, tiny_checkpoint, out, f"ray.address={addr}")]
    killed = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    parts = sorted((out / "predictions" / f"{RUN}.parts").glob("*.parquet"))
    rows = sum(len(read_part(p)) for p in parts)
    doc = run(config(*overrides(tmp, tiny_checkpoint, out, "resume=true")))
    return dict(out=out, killed=killed, parts=parts, rows=rows, doc=doc)


@pytest.mark.slow
def test_ctrl_c_says_how_to_continue_and_that_command_finishes_the_run(reference, ray_local, tmp, tiny_checkpoint):
    """Ctrl-C of jobs/evaluate.py: exit 130 and the command that continues it (not a bare
    traceback); running that command gives the uninterrupted run's metrics."""
    import shlex

    out = tmp / "ctrl-c"
    addr = ray_local.get_runtime_context().gcs_address
    cmd = [sys.executable, str(REPO / "jobs" / "evaluate.py"), *overrides(tmp, tiny_checkpoint, out, f"ray.address={addr}")]
    stopped = subprocess.run(cmd, env={**os.environ, INTERRUPT_AFTER_PARTS_ENV: "1"}, cwd=REPO, capture_output=True,
                             text=True, timeout=600)
    assert stopped.returncode == 130, stopped.stderr[-2000:]
    line = next(x for x in stopped.stderr.splitlines() if x.startswith("medray: interrupted; continue with: "))
    assert "Traceback" not in stopped.stderr
    again = shlex.split(line.split("continue with: ", 1)[1])
    assert again[:2] == ["python", "jobs/evaluate.py"] and "resume=true" in again and f"output_dir={out}" in again
    done = subprocess.run([sys.executable, *again[1:]], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["runs"][0]["metrics"] == reference[0]["runs"][0]["metrics"] and doc["runs"][0]["resumed"]["from_previous"] > 0


@pytest.mark.slow
def test_killed_driver_left_whole_parts_and_the_resume_did_the_rest(resumed):
    k = resumed["killed"]
    assert k.returncode == 75, (k.returncode, k.stderr[-3000:])
    assert len(resumed["parts"]) == KILL_AFTER
    assert 0 < resumed["rows"] < N_TEST  # killed part-way through the data
    assert not list(resumed["out"].glob("predictions/*.parts/*.tmp"))  # atomic writes: no half part
    r = resumed["doc"]["runs"][0]
    # the second run evaluated only what the first had not written
    assert r["resumed"] == {"from_previous": resumed["rows"], "processed": N_TEST - resumed["rows"]}
    assert r["n_samples"] == N_TEST and r["n_skipped"] == 0
    md = (resumed["out"] / "report.md").read_text()
    assert f"resumed — {resumed['rows']} samples from the interrupted run, {N_TEST - resumed['rows']} evaluated now" in md


@pytest.mark.slow
def test_resumed_outputs_equal_the_uninterrupted_run(resumed, reference):
    ref, ref_out = reference
    assert resumed["doc"]["runs"][0]["metrics"] == ref["runs"][0]["metrics"]
    a, b = predictions(ref_out), predictions(resumed["out"])
    assert a.column_names == b.column_names == ["sample_id", "target", "probs"]
    assert a.equals(b), "predictions differ from the uninterrupted run"
    parts = [read_part(p) for p in sorted((resumed["out"] / "predictions" / f"{RUN}.parts").glob("*.parquet"))]
    ids = [s for p in parts for s in p["sample_id"]]
    assert len(ids) == len(set(ids)) == N_TEST  # nothing lost, nothing twice


@pytest.mark.slow
def test_resume_of_a_finished_run_evaluates_nothing(resumed, reference, tmp, tiny_checkpoint):
    from medray.pipeline.evaluate import run

    again = run(config(*overrides(tmp, tiny_checkpoint, resumed["out"], "resume=true")))
    assert again["runs"][0]["resumed"] == {"from_previous": N_TEST, "processed": 0}
    assert again["runs"][0]["metrics"] == reference[0]["runs"][0]["metrics"]


@pytest.mark.slow
def test_resume_refuses_a_different_config(resumed, tmp, tiny_checkpoint):
    from medray.pipeline.evaluate import run

    out = resumed["out"]
    state = json.loads((out / STATE_FILE).read_text())
    with pytest.raises(ConfigError) as e:
        run(config(*overrides(tmp, tiny_checkpoint, out, "resume=true", "batch_size=8")))
    msg = str(e.value)
    assert msg.startswith(f"resume=true: output_dir={out} holds a run of a different configuration (")
    assert "batch_size: 4 → 8" in msg and "use another output_dir" in msg
    assert json.loads((out / STATE_FILE).read_text()) == state  # nothing overwritten


def test_a_fresh_run_refuses_another_runs_folder_and_one_run_holds_it(tmp_path):
    """The break-it case: a new run into another run's output_dir destroyed it (reports
    overwritten, resume parts deleted, old predictions left beside the new) and a second
    job deleted a running job's files.  Now the folder is refused, and locked while used."""
    import pandas as pd

    from medray.backends.torch.config import TorchConfig
    from medray.config import EvalConfig
    from medray.data.config import DataConfig
    from medray.pipeline.resume import ResumeState

    out = tmp_path / "o"
    parts = out / "predictions" / f"{RUN}.parts"
    parts.mkdir(parents=True)
    (parts / "000000.parquet").write_bytes(b"old")
    cfg = EvalConfig(backend=TorchConfig(), baseline=None, data=DataConfig(), output_dir=str(out), cache_dir=str(tmp_path))
    with pytest.raises(ConfigError, match=rf"output_dir={out}: already holds a run \(predictions\); use a new output_dir, "
                                          "or resume=true"):
        ResumeState.claim(out, cfg)
    assert (parts / "000000.parquet").read_bytes() == b"old"  # nothing touched
    with pytest.raises(ConfigError, match="holds outputs .* but no resume.json to resume from"):
        ResumeState.open(out, replace(cfg, resume=True), pd.DataFrame({"sample_id": ["a"]}), [])

    fresh = tmp_path / "fresh"
    first = ResumeState.claim(fresh, replace(cfg, output_dir=str(fresh)))
    with pytest.raises(ConfigError, match=rf"another medray run is writing there \(pid {os.getpid()}\)"):
        ResumeState.claim(fresh, replace(cfg, output_dir=str(fresh)))
    first.release()
    ResumeState.claim(fresh, replace(cfg, output_dir=str(fresh))).release()  # free again


def test_parts_are_read_back_and_damaged_parts_are_redone(tmp_path):
    import pandas as pd

    from medray.backends.torch.config import TorchConfig
    from medray.config import EvalConfig
    from medray.data.config import DataConfig
    from medray.pipeline.resume import ResumeState

    out = tmp_path / "o"
    parts = out / "predictions" / f"{RUN}.parts"
    cfg = EvalConfig(backend=TorchConfig(), baseline=None, data=DataConfig(), output_dir=str(out), cache_dir=str(tmp_path))
    state = ResumeState.open(out, cfg, pd.DataFrame({"sample_id": ["a", "b"]}), [])
    assert (out / STATE_FILE).is_file()

    w = state.writer(RUN)
    w({"sample_id": np.array(["a"], dtype=object), "probs": np.array([[0.25, 0.75]], np.float32),
       "effective_precision": np.array(['{"executed": "fp32"}'], dtype=object)})
    w({"sample_id": np.array(["b"], dtype=object), "probs": np.array([[0.5, 0.5]], np.float32),
       "effective_precision": np.array([""], dtype=object)})
    got = state.load(RUN)
    assert list(got["sample_id"]) == ["a", "b"] and got["probs"][0].dtype == np.float32
    np.testing.assert_array_equal(got["probs"][0], [0.25, 0.75])
    # a damaged part is deleted (logged) and its samples count as not done
    (parts / "000001.parquet").write_bytes(b"PAR1 truncated")
    assert state.done_ids(RUN) == {"a"} and not (parts / "000001.parquet").exists()
    assert state.writer(RUN).next == 1
    state.release()


# --------------------------------------------------------------------------- dedupe


def test_dedupe_keeps_identical_copies_once_and_refuses_different_ones():
    import pandas as pd

    p = [np.array([0.2, 0.8], np.float32), np.array([0.6, 0.4], np.float32)]
    df = pd.DataFrame({"sample_id": ["a", "b", "a"], "probs": [p[0], p[1], p[0].copy()], "batch_ms": [1.0, 1.0, 9.0]})
    out, n = dedupe_retried("r", df)
    assert n == 1 and list(out["sample_id"]) == ["a", "b"]
    df.at[2, "probs"] = np.array([0.2, 0.8000001], np.float32)
    with pytest.raises(RuntimeError, match=r"r: 1 samples came back more than once with different predictions \(e.g. \['a'\]\)"):
        dedupe_retried("r", df)


def test_worker_errors_forwarded_as_text_are_explained():
    from medray.pipeline.faults import explain_failure, inject_faults

    # Ray Data re-raises a worker's error as a wrapper whose text is the worker traceback
    text = (
        "ray::MapBatches(Predictor)() (pid=1, ip=1.2.3.4)\n  File \"x.py\", line 1, in f\n"
        "medray.backends.base.BackendError: torch-fp32: out of memory on cuda at batch_size=64 (...)\n\n"
        "ray.exceptions.UserCodeException: UDF failed to process a data block."
    )
    got = explain_failure(RUN, RuntimeError(text), 3)
    assert isinstance(got, BackendError) and str(got).startswith("torch-fp32: out of memory on cuda at batch_size=64")
    with pytest.raises(RuntimeError, match="injected backend fault after 2 batches") as e:
        inject_faults({"raise_after_batches": 2}, 2)
    got = explain_failure(RUN, RuntimeError(f"ray::X()\nbuiltins.RuntimeError: {e.value}"), 3)
    assert str(got) == f"{RUN}: the pipeline failed in a worker: RuntimeError: injected backend fault after 2 batches"
    inject_faults({"raise_after_batches": 2}, 1)  # not yet


# --------------------------------------------------------------------------- out of memory


class _Raising(Backend):
    name = "raising"

    def __init__(self, spec, error):
        super().__init__(spec)
        self.error = error

    def _load(self):
        pass

    def _infer(self, x):
        raise self.error

    def _close(self):
        pass


@pytest.mark.parametrize(
    "error",
    [
        "torch",
        RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Failed to allocate memory for requested buffer of size 1073741824"),
        RuntimeError("Exception from src/inference/src/infer_request.cpp:223: std::bad_alloc"),
        MemoryError(),
    ],
    ids=["torch", "onnxruntime", "openvino", "host"],
)
def test_out_of_memory_suggests_a_smaller_batch(tiny_spec, error):
    import torch

    if error == "torch":
        error = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    b = _Raising(tiny_spec(batch_size=64, streams=2), error)
    with pytest.raises(BackendError) as e:
        b.load()  # the warm-up batches run at the configured batch size
    msg = str(e.value)
    assert msg.startswith("torch-fp32: out of memory on cpu at batch_size=64 (streams=2, ")
    assert msg.endswith("lower batch_size (e.g. batch_size=32), or fewer streams per device")
    assert is_out_of_memory(e.value.__cause__)


def test_out_of_memory_at_batch_one_and_other_errors(tiny_spec):
    b = _Raising(tiny_spec(batch_size=1), MemoryError())
    with pytest.raises(BackendError, match="does not fit even at batch_size=1: use a device with more memory"):
        b.load()
    other = _Raising(tiny_spec(batch_size=2), ValueError("shape mismatch"))
    with pytest.raises(ValueError, match="shape mismatch"):  # not an OOM: passed through untouched
        other.load()


# --------------------------------------------------------------------------- resources


def plan(**kw):
    args = dict(device="cpu", streams=1, cluster_cpus=2, cluster_gpus=0, node_cores=2, reserve_cpus=1.0, threads=None)
    args.update(kw)
    return plan_pool(**args)


def test_threads_beyond_node_cores_fail_with_the_numbers():
    with pytest.raises(ConfigError, match=r"backend.threads=8: the smallest node of the Ray cluster has 2 CPU cores \(2 CPUs in all\); use backend.threads<=2"):
        plan(threads=8)


def test_more_streams_than_cpus_can_share_fail_with_the_numbers():
    with pytest.raises(ConfigError, match=r"streams=500: the cluster has 2 CPUs, 1 reserved for reading; 1 CPUs cannot be shared by 500 actors .* use streams<=100"):
        plan(streams=500)


def test_fractional_gpu_cluster_fails_with_the_numbers():
    with pytest.raises(ConfigError, match=r"advertises only 0.5 GPU; the pool places streams=2 actors per whole GPU"):
        plan(device="cuda", streams=2, cluster_cpus=8, cluster_gpus=0.5)
    p = plan(device="cuda", streams=2, cluster_cpus=8, cluster_gpus=1.5)  # whole GPUs only
    assert (p.actors, p.num_gpus) == (2, 0.5)


def test_embedded_ray_cannot_advertise_more_than_the_machine(tmp_path, monkeypatch):
    import medray.pipeline.cluster as ev
    from medray.backends.torch.config import TorchConfig
    from medray.config import EvalConfig

    cores = len(os.sched_getaffinity(0))
    cfg = EvalConfig(backend=TorchConfig(), ray=RayConfig(num_cpus=cores + 1), cache_dir=str(tmp_path))
    with pytest.raises(ConfigError, match=rf"ray.num_cpus={cores + 1}: this machine has {cores} CPU cores"):
        ev.preflight(cfg)
    monkeypatch.setattr(ev, "local_gpu_count", lambda: 0)
    cfg = EvalConfig(backend=TorchConfig(), ray=RayConfig(num_gpus=2), cache_dir=str(tmp_path))
    with pytest.raises(ConfigError, match=r"ray.num_gpus=2: this machine shows 0 GPU\(s\) to CUDA"):
        ev.preflight(cfg)


def test_retry_budget_is_validated():
    with pytest.raises(ConfigError, match=r"ray.max_retries=-1: use 0 \(no retry\)"):
        RayConfig(max_retries=-1)
