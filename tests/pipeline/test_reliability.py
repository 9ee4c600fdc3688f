"""Worker faults, bounded retries and explained resource errors.

A Predictor killed mid-run is restarted by Ray and its batch retried: the run ends with
every sample exactly once and the very metrics of a clean run.  A crash or an exception
that repeats fails the run with its cause instead of retrying forever.  Out-of-memory
errors and configs asking for more than the cluster has say what to change.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from helpers import TINY_ARCH, TINY_SIZE

from medray.backends.base import Backend, BackendError, is_out_of_memory
from medray.config import ConfigError, DataConfig, EvalConfig, ModelConfig, RayConfig, TorchConfig
from medray.pipeline.faults import WorkerFault, dedupe_retried
from medray.pipeline.resources import plan_pool

N_TEST = 40


def make_cfg(root, tmp, checkpoint, **kw) -> EvalConfig:
    base = dict(
        backend=TorchConfig(),
        baseline=None,
        data=DataConfig(name="synthetic", root=str(root), n_train=4, n_calibration=4, n_test=N_TEST,
                        image_size=64, read_block_size=8),
        model=ModelConfig(name="tiny", arch=TINY_ARCH, checkpoint=str(checkpoint), input_size=TINY_SIZE),
        ray=RayConfig(num_cpus=2),
        batch_size=4,
        output_dir=str(tmp / "out"),
        cache_dir=str(tmp / "cache"),
        warmup_batches=0,
    )
    base.update(kw)
    return EvalConfig(**base)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, tiny_checkpoint):
    from medray.pipeline.evaluate import prepare

    tmp = tmp_path_factory.mktemp("rel")
    cfg = make_cfg(tmp / "data", tmp, tiny_checkpoint)
    table, samples, specs = prepare(cfg)
    return cfg, table, samples, specs


@pytest.fixture(scope="module")
def clean(ray_local, prepared):
    from medray.pipeline.evaluate import execute
    from medray.report import build_metrics

    cfg, table, samples, specs = prepared
    results = execute(cfg, samples, specs)
    return results, build_metrics(cfg, table, samples, results)


def with_options(specs, **options):
    return [replace(s, options={**s.options, **options}) for s in specs]


# --------------------------------------------------------------------------- worker faults


@pytest.mark.slow
def test_killed_worker_is_retried_with_identical_metrics_and_no_duplicates(clean, prepared, tmp_path):
    from medray.pipeline.evaluate import execute
    from medray.report import build_metrics

    cfg, table, samples, specs = prepared
    marker = tmp_path / "killed-once"
    faulty = with_options(specs, fail_after_batches=3, fail_once_marker=str(marker))
    results = execute(cfg, samples, faulty)
    doc = build_metrics(cfg, table, samples, results)

    assert marker.exists(), "the fault was not injected"
    df = results[0].predictions
    # the restarted actor is a new process: two worker pids, every sample once
    assert df["worker_pid"].nunique() >= 2
    assert not df["sample_id"].duplicated().any() and sorted(df["sample_id"]) == sorted(samples["sample_id"])
    ref_results, ref = clean
    assert doc["runs"][0]["n_samples"] == ref["runs"][0]["n_samples"] == N_TEST
    assert doc["runs"][0]["metrics"] == ref["runs"][0]["metrics"]
    np.testing.assert_array_equal(np.stack(df["probs"]), np.stack(ref_results[0].predictions["probs"]))


@pytest.mark.slow
def test_worker_that_keeps_crashing_fails_after_bounded_retries(ray_local, prepared):
    from medray.pipeline.evaluate import execute

    cfg, _, samples, specs = prepared
    cfg = replace(cfg, ray=replace(cfg.ray, max_retries=1))
    with pytest.raises(WorkerFault) as e:
        execute(cfg, samples, with_options(specs, fail_after_batches=0))  # dies on every batch
    msg = str(e.value)
    assert msg.startswith("torch-fp32: a Predictor worker died and kept dying after 1 restarts/retries")
    assert "ray.max_retries=1" in msg


@pytest.mark.slow
def test_backend_exception_fails_the_run_with_its_cause_without_retry(ray_local, prepared, tmp_path):
    from medray.pipeline.evaluate import execute

    cfg, _, samples, specs = prepared
    attempts = tmp_path / "attempts"
    with pytest.raises(WorkerFault) as e:
        execute(cfg, samples, with_options(specs, raise_after_batches=2, attempts_file=str(attempts)))
    assert "torch-fp32: the pipeline failed in a worker: RuntimeError: injected backend fault after 2 batches" in str(e.value)
    assert len(attempts.read_text().splitlines()) == 1  # an application error is not retried


@pytest.mark.slow
def test_out_of_memory_in_a_worker_names_the_batch_size_to_use(ray_local, prepared):
    from medray.pipeline.evaluate import execute

    cfg, _, samples, specs = prepared
    with pytest.raises(BackendError) as e:
        execute(cfg, samples, with_options(specs, oom_at_batch_size=4))
    msg = str(e.value)
    assert "torch-fp32: out of memory on cpu at batch_size=4" in msg
    assert "lower batch_size (e.g. batch_size=2)" in msg and "MemoryError" in msg


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


def test_embedded_ray_cannot_advertise_more_than_the_machine(tmp_path, tiny_checkpoint, monkeypatch):
    import os

    import medray.pipeline.evaluate as ev

    cores = len(os.sched_getaffinity(0))
    cfg = make_cfg(tmp_path / "d", tmp_path, tiny_checkpoint, ray=RayConfig(num_cpus=cores + 1))
    with pytest.raises(ConfigError, match=rf"ray.num_cpus={cores + 1}: this machine has {cores} CPU cores"):
        ev.preflight(cfg)
    monkeypatch.setattr(ev, "local_gpu_count", lambda: 0)
    cfg = make_cfg(tmp_path / "d", tmp_path, tiny_checkpoint, ray=RayConfig(num_gpus=2))
    with pytest.raises(ConfigError, match=r"ray.num_gpus=2: this machine shows 0 GPU\(s\) to CUDA"):
        ev.preflight(cfg)


def test_retry_budget_is_validated():
    with pytest.raises(ConfigError, match=r"ray.max_retries=-1: use 0 \(no retry\)"):
        RayConfig(max_retries=-1)
