"""The two Ray Data stages behind map_stage, and the actor that closes its session."""

from __future__ import annotations

import gc

import numpy as np
import pandas as pd
import pytest
from helpers import TINY_SIZE


def _images(root, n: int) -> pd.DataFrame:
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        p = root / f"img{i:02d}.png"
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (40, 40), dtype=np.uint8)).save(p)
        rows.append({"sample_id": f"img{i:02d}", "path": str(p)})
    return pd.DataFrame(rows)


@pytest.mark.slow
def test_read_and_predict_stay_separate_operators(ray_local, tiny_spec, tmp_path):
    """Fused, each actor would decode then infer serially: the stats of an executed run
    must show the read tasks and the Predictor pool as two operators."""
    from medray.pipeline.execute import collect, predict, read_dataset
    from medray.pipeline.resources import plan_pool
    from medray.tasks.classification import ClassificationTask

    samples = _images(tmp_path / "img", 8)
    spec = tiny_spec(batch_size=4)
    plan = plan_pool(device="cpu", streams=1, cluster_cpus=2, cluster_gpus=0, node_cores=2, reserve_cpus=1, threads=1)
    ds = predict(read_dataset(ClassificationTask(), samples, spec, block_size=4), spec, plan, ClassificationTask())
    df, _ = collect(ds)
    assert sorted(df["sample_id"]) == sorted(samples["sample_id"])
    ops = [line.split(":")[0] for line in ds.stats().splitlines() if line.startswith("Operator ")]
    names = " | ".join(ops)
    assert any("MapBatches(decode_batch)" in o and "Predictor" not in o for o in ops), names
    assert any(o.endswith("MapBatches(Predictor)") and "decode_batch" not in o for o in ops), names


def test_predictor_closes_its_backend_when_it_goes(tiny_spec):
    from medray.pipeline.predictor import Predictor
    from medray.tasks.classification import ClassificationTask

    p = Predictor(tiny_spec(batch_size=2), ClassificationTask())
    backend = p.backend
    out = p({"sample_id": np.array(["a", "b"]), "image": np.zeros((2, TINY_SIZE, TINY_SIZE), np.uint8)})
    assert out["probs"].shape == (2, 2) and backend._loaded
    del p
    gc.collect()
    assert not backend._loaded  # Ray Data deletes the UDF on a graceful actor shutdown: __del__ closes
    with pytest.raises(Exception, match=r"infer\(\) before load\(\)"):
        backend.infer(np.zeros((2, 3, TINY_SIZE, TINY_SIZE), np.float32))


def test_one_actor_call_runs_its_block_as_backend_batches(tiny_spec):
    """A read block of 10 samples at batch_size 4 is three backend calls (4, 4, 2), each with
    its own batch_uid, clocks and batch_size; the outputs equal one call per batch, and a bad
    row in the middle batch is a blank row there, not a lost batch."""
    from medray.pipeline.predictor import Predictor
    from medray.tasks.classification import ClassificationTask

    p = Predictor(tiny_spec(batch_size=4), ClassificationTask())
    shapes = []
    real = p.backend.infer

    def infer(x):
        shapes.append(len(x))
        return real(x)

    p.backend.infer = infer
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (10, TINY_SIZE, TINY_SIZE), dtype=np.uint8)
    ids = np.array([f"s{i}" for i in range(10)])
    reasons = np.array([""] * 5 + ["unreadable: x.png"] + [""] * 4, dtype=object)
    out = p({"sample_id": ids, "image": images, "skipped_reason": reasons})
    assert list(out["sample_id"]) == list(ids)
    assert shapes == [4, 3, 2]  # the bad row is not sent to the backend
    uids = list(out["batch_uid"])
    assert len(set(uids[:4])) == len(set(uids[4:8])) == len(set(uids[8:])) == 1
    assert len({uids[0], uids[4], uids[8]}) == 3
    assert list(out["batch_size"]) == [4, 4, 4, 4, 3, 0, 3, 3, 2, 2]  # the skipped row shares no batch time
    assert np.isnan(out["probs"][5]).all() and out["skipped_reason"][5] == reasons[5]
    assert np.all(out["t_start"][4:8] >= out["t_end"][0]) and np.all(out["t_start"][8:] >= out["t_end"][4])
    q = Predictor(tiny_spec(batch_size=4), ClassificationTask())
    one_by_one = [q({"sample_id": ids[i : i + 4], "image": images[i : i + 4], "skipped_reason": reasons[i : i + 4]})
                  for i in range(0, 10, 4)]
    np.testing.assert_array_equal(out["probs"], np.concatenate([o["probs"] for o in one_by_one]))


def test_read_block_size_amortises_actor_calls_within_memory_and_overlap_limits():
    from medray.tasks.classification.read import BLOCK_BYTES, BLOCK_SAMPLES, read_block_size

    assert read_block_size(100_000, 64, 1) == BLOCK_SAMPLES == 256  # 4 backend batches per actor call
    assert read_block_size(100_000, 32, 1) % 32 == 0
    assert read_block_size(1000, 64, 1) == 256  # 4 blocks: read and predict still overlap
    assert read_block_size(300, 64, 1) == 128  # 3 blocks
    assert read_block_size(200, 64, 1) == 64  # a small set: several blocks, not one
    assert read_block_size(100_000, 512, 1) == 512  # never below one backend batch
    # Ten 224-px RGB crops a sample (1.5 MB): the block stays within BLOCK_BYTES.
    big = 10 * 224 * 224 * 3
    b = read_block_size(100_000, 8, 1, big)
    assert b % 8 == 0 and b * big <= BLOCK_BYTES and (b + 8) * big > BLOCK_BYTES


def _most_at_once(starts, ends) -> int:
    events = sorted([(t, 1) for t in starts] + [(t, -1) for t in ends])
    now = most = 0
    for _, step in events:
        now += step
        most = max(most, now)
    return most


@pytest.mark.slow
@pytest.mark.parametrize("read_ms, tasks", [(0.75, 2), (0.1, 1)])
def test_a_costed_plan_runs_its_read_tasks_at_once_on_two_cpus(ray_local, read_ms, tasks, tmp_path):
    """The plan's read concurrency is what Ray Data really runs on the 2-CPU machine beside
    the actor pool (its budgets see the read tasks' fractional CPUs), and never more; the
    run finishes (an actor pool that takes every CPU would hang here).

    The first wave of reads waits at a barrier until `tasks` of them are running, so the
    overlap does not depend on how busy the machine is: if Ray ran fewer at once the
    barrier times out and the overlap falls short."""
    import ray.data

    from medray.pipeline.resources import plan_pool
    from medray.pipeline.stages import Stage, map_stage
    from medray.results import StageCosts

    gate = str(tmp_path)

    def slow_read(batch):  # defined here: Ray pickles it by value (the test module is not importable there)
        import itertools
        import os
        import time

        for k in itertools.count():  # arrival order, atomically, across processes
            try:
                os.close(os.open(os.path.join(gate, f"arrived-{k}"), os.O_CREAT | os.O_EXCL))
                break
            except FileExistsError:
                continue
        t0 = time.time()
        if k < tasks:  # the first wave meets, however slowly the workers start
            while len([f for f in os.listdir(gate) if f.startswith("arrived-")]) < tasks and time.time() - t0 < 120:
                time.sleep(0.02)
        time.sleep(0.05)
        n = len(batch["i"])
        return {"i": batch["i"], "t0": np.full(n, t0), "t1": np.full(n, time.time()), "pid": np.full(n, os.getpid())}

    class Passthrough:
        def __call__(self, batch):
            return dict(batch)

    p = plan_pool(device="cpu", streams=1, cluster_cpus=2, cluster_gpus=0, node_cores=2, reserve_cpus=1, threads=None,
                  costs=StageCosts(read_ms / 1e3, 0.5e-3))
    assert p.read_tasks == tasks
    blocks = [pd.DataFrame({"i": np.arange(j * 4, (j + 1) * 4)}) for j in range(16)]
    ds = map_stage(ray.data.from_pandas(blocks), Stage(slow_read, num_cpus=p.read_cpus, tasks=p.read_tasks))
    ds = map_stage(ds, Stage(Passthrough, batch_size=4, actors=p.actors, num_cpus=p.num_cpus))
    rows = pd.concat([pd.DataFrame(dict(b)) for b in ds.iter_batches(batch_size=None, batch_format="numpy")])
    assert sorted(rows["i"]) == list(range(64))
    reads = rows.groupby(["pid", "t0"])["t1"].first().reset_index()
    assert len(reads) == 16
    assert _most_at_once(reads["t0"], reads["t1"]) == tasks


def test_ray_data_is_told_to_pick_up_the_cluster_resources_promptly():
    """The Ray Data 2.60 attribute medray lowers still exists and is what its resource
    manager reads (a Ray upgrade that renames it fails here, not silently in every run)."""
    import inspect

    from ray.data._internal.execution.resource_manager import ResourceManager

    from medray.pipeline.stages import LIMITS_REFRESH_S, prompt_resource_limits

    assert "self.GLOBAL_LIMITS_UPDATE_INTERVAL_S" in inspect.getsource(ResourceManager.get_global_limits)
    prompt_resource_limits()
    assert ResourceManager.GLOBAL_LIMITS_UPDATE_INTERVAL_S == LIMITS_REFRESH_S
