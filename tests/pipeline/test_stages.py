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
    from medray.tasks import ClassificationTask

    samples = _images(tmp_path / "img", 8)
    spec = tiny_spec(batch_size=4)
    plan = plan_pool(device="cpu", streams=1, cluster_cpus=2, cluster_gpus=0, node_cores=2, reserve_cpus=1, threads=1)
    ds = predict(read_dataset(ClassificationTask(), samples, spec, block_size=4), spec, plan)
    df, _ = collect(ds)
    assert sorted(df["sample_id"]) == sorted(samples["sample_id"])
    ops = [line.split(":")[0] for line in ds.stats().splitlines() if line.startswith("Operator ")]
    names = " | ".join(ops)
    assert any("MapBatches(decode_batch)" in o and "Predictor" not in o for o in ops), names
    assert any(o.endswith("MapBatches(Predictor)") and "decode_batch" not in o for o in ops), names


def test_predictor_closes_its_backend_when_it_goes(tiny_spec):
    from medray.pipeline.predictor import Predictor

    p = Predictor(tiny_spec(batch_size=2))
    backend = p.backend
    out = p({"sample_id": np.array(["a", "b"]), "image": np.zeros((2, TINY_SIZE, TINY_SIZE), np.uint8)})
    assert out["probs"].shape == (2, 2) and backend._loaded
    del p
    gc.collect()
    assert not backend._loaded  # Ray Data deletes the UDF on a graceful actor shutdown: __del__ closes
    with pytest.raises(Exception, match=r"infer\(\) before load\(\)"):
        backend.infer(np.zeros((2, 3, TINY_SIZE, TINY_SIZE), np.float32))
