"""GPU actor pools, scheduled on Ray *logical* GPUs of this CPU machine (no CUDA needed).

``ray.init(num_cpus=2, num_gpus=2)`` advertises two GPUs; Ray then assigns them to actors
exactly as on a GPU node (``ray.get_gpu_ids()``, ``CUDA_VISIBLE_DEVICES``).  A test-only
backend registered in ``REGISTRY`` (also inside the workers, by a setup hook) reports
what each actor was given.
"""

from __future__ import annotations

import collections
import concurrent.futures
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medray.backends import REGISTRY, Registered
from medray.backends.base import Backend
from medray.backends.config import BackendConfig
from medray.pipeline.resources import plan_pool
from medray.specs import ModelSpec, RunSpec

HERE = Path(__file__).resolve().parent
FAKE = "fakegpu"
CPUS, GPUS, RESERVE = 2, 2, 1.0


class FakeGPUBackend(Backend):
    """Returns zeros; reports the GPU ids, CUDA_VISIBLE_DEVICES and resources it holds."""

    name = FAKE

    def _load(self) -> None:
        pass

    def _infer(self, x: np.ndarray) -> np.ndarray:
        return np.zeros((len(x), self.spec.model.num_classes), dtype=np.float32)

    def _close(self) -> None:
        pass

    def _effective_precision(self) -> dict:
        import ray

        ctx = ray.get_runtime_context()
        return {
            "requested": self.spec.precision,
            "executed": self.spec.precision,
            "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "resources": ctx.get_assigned_resources(),
            "pid": os.getpid(),
        }


def register_fake_backend() -> None:
    """Worker setup hook: the registry entry the Predictor looks the backend up in."""
    REGISTRY[FAKE] = Registered("medray.backends.config:BackendConfig", f"{__name__}:FakeGPUBackend")


@pytest.fixture(scope="module")
def ray_gpus():
    import ray

    if ray.is_initialized():
        ray.shutdown()
    path = os.pathsep.join([str(HERE), str(HERE.parent), os.environ.get("PYTHONPATH", "")])
    ray.init(
        num_cpus=CPUS,
        num_gpus=GPUS,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": path}, "worker_process_setup_hook": register_fake_backend},
    )
    register_fake_backend()
    yield ray
    REGISTRY.pop(FAKE, None)
    ray.shutdown()


def _plan(streams: int):
    return plan_pool(
        device="cuda", streams=streams, cluster_cpus=CPUS, cluster_gpus=GPUS, node_cores=CPUS, reserve_cpus=RESERVE, threads=None
    )


@pytest.mark.parametrize("streams", [1, 2, 3])
def test_plan_fills_every_gpu_and_leaves_the_read_reserve(streams):
    p = _plan(streams)
    assert p.actors == streams * GPUS
    assert p.num_gpus * streams <= 1.0 and p.num_gpus == pytest.approx(1 / streams, abs=1e-4)
    assert p.actors * p.num_cpus <= CPUS - RESERVE  # a CPU stays free for decoding
    assert p.threads == 1


def test_actors_of_the_plan_fit_at_once_streams_per_gpu(ray_gpus):
    """All actors of the plan are alive together, ``streams`` on each GPU, and a 1-CPU
    decode task still runs beside them (the hang of two num_cpus=1 actors on 2 CPUs).
    streams=3: 6 actors of 1/3 GPU and 1/6 CPU, which only fit if the shares round down."""
    ray = ray_gpus
    streams = 3
    p = _plan(streams)

    @ray.remote(num_cpus=p.num_cpus, num_gpus=p.num_gpus)
    class Probe:
        def where(self):
            return ray.get_gpu_ids(), os.environ.get("CUDA_VISIBLE_DEVICES"), ray.get_runtime_context().get_assigned_resources()

    @ray.remote(num_cpus=1)
    def decode():
        return "decoded"

    actors = [Probe.remote() for _ in range(p.actors)]
    try:
        got = ray.get([a.where.remote() for a in actors], timeout=60)
        assert ray.get(decode.remote(), timeout=60) == "decoded"
    finally:
        for a in actors:
            ray.kill(a)
    per_gpu = collections.Counter(str(ids[0]) for ids, _, _ in got)
    assert per_gpu == {"0": streams, "1": streams}
    for ids, visible, res in got:
        assert len(ids) == 1 and visible == str(ids[0])  # the actor sees only its GPU
        assert res["GPU"] == pytest.approx(p.num_gpus) and res["CPU"] == pytest.approx(p.num_cpus)


def _spec(streams: int, batch_size: int = 2) -> RunSpec:
    model = ModelSpec(arch="none", num_classes=2, in_chans=1, input_size=8, checkpoint=None)
    return RunSpec(
        name=f"{FAKE}-fp32", role="candidate", backend=BackendConfig(name=FAKE), precision="fp32", device="cuda",
        batch_size=batch_size, streams=streams, model=model, threads=1, warmup_batches=0,
    )


def _write_images(root: Path, n: int, size: int = 8) -> pd.DataFrame:
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        path = root / f"s{i:03d}.png"
        Image.fromarray(np.full((size, size), i % 255, dtype=np.uint8)).save(path)
        rows.append({"sample_id": f"s{i:03d}", "path": str(path)})
    return pd.DataFrame(rows)


@pytest.mark.slow
def test_pipeline_on_logical_gpus_with_decode_tasks(ray_gpus, tmp_path):
    """The real read → decode (1 CPU each) → Predictor pool (fractional GPUs) pipeline
    completes on 2 CPUs, every sample once, on actors holding 1/streams of a GPU."""
    from medray.pipeline.execute import collect, predict, read_dataset
    from medray.tasks.classification import ClassificationTask

    streams = 2
    p = _plan(streams)
    samples = _write_images(tmp_path / "img", 48)
    spec = _spec(streams)

    def run():
        return collect(predict(read_dataset(ClassificationTask(), samples, spec, block_size=4), spec, p, ClassificationTask()))

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        df, clock = pool.submit(run).result(timeout=240)  # a starved decode would hang here
    assert sorted(df["sample_id"]) == sorted(samples["sample_id"])
    reports = [json.loads(s) for s in df["effective_precision"] if s]
    assert reports, "no actor reported"
    assert len({r["pid"] for r in reports}) <= p.actors
    for r in reports:
        assert r["gpu_ids"] in (["0"], ["1"]) and r["cuda_visible_devices"] == r["gpu_ids"][0]
        assert r["resources"]["GPU"] == pytest.approx(1 / streams)
        assert r["resources"]["CPU"] == pytest.approx(p.num_cpus)
