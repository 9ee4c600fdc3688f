"""The Ray pipeline: sharded runs give exactly the single-actor metrics and scikit-learn's."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import TINY_ARCH, TINY_SIZE
from sklearn.metrics import roc_auc_score

from medray.backends.onnxruntime.config import OnnxRuntimeConfig
from medray.config import EvalConfig, RayConfig
from medray.data.config import DataConfig
from medray.models.config import ModelConfig
from medray.pipeline.execute import execute
from medray.pipeline.prepare import prepare
from medray.report.document import build_metrics

pytestmark = pytest.mark.slow


def make_cfg(tmp_path, checkpoint, **kw) -> EvalConfig:
    base = dict(
        backend=OnnxRuntimeConfig(),
        data=DataConfig(name="synthetic", root=str(tmp_path / "data"), n_train=8, n_calibration=8, n_test=60, image_size=64),
        model=ModelConfig(name="tiny", arch=TINY_ARCH, checkpoint=str(checkpoint), input_size=TINY_SIZE),
        ray=RayConfig(num_cpus=2),
        batch_size=8,
        output_dir=str(tmp_path / "out"),
        cache_dir=str(tmp_path / "cache"),
        warmup_batches=1,
    )
    base.update(kw)
    return EvalConfig(**base)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("pipe")


def test_sharded_equals_single_actor_equals_sklearn(ray_local, data_dir, tiny_checkpoint):
    single = make_cfg(data_dir, tiny_checkpoint, streams=1)
    table, samples, specs, task = prepare(single)
    res1 = execute(single, task, samples, specs)
    sharded = make_cfg(data_dir, tiny_checkpoint, streams=2, batch_size=4, data=single.data)
    _, samples2, specs2, task2 = prepare(sharded)
    res2 = execute(sharded, task2, samples2, specs2)

    # Two actors were started; which of them Ray Data gives each block is its scheduling,
    # not a property of medray (a loaded machine may feed one): the metrics must not care.
    assert res2[1].pool.actors == 2
    doc1 = build_metrics(single, table, samples, res1)
    doc2 = build_metrics(sharded, table, samples2, res2)
    for r1, r2 in zip(doc1["runs"], doc2["runs"]):
        assert r1["n_samples"] == r2["n_samples"] == 60
        for k in ("accuracy", "balanced_accuracy", "auc_macro", "f1_macro"):
            assert r1["metrics"][k] == pytest.approx(r2["metrics"][k], abs=1e-6), k

    # and equal to scikit-learn on the merged per-sample outputs
    for res, doc in ((res1, doc1), (res2, doc2)):
        df = res[1].predictions.set_index("sample_id").loc[samples["sample_id"]]
        p1 = np.stack(df["probs"].to_numpy())[:, 1]
        y = table.targets(samples)
        assert doc["runs"][1]["metrics"]["auc_macro"] == pytest.approx(roc_auc_score(y, p1), abs=1e-9)
    cand = doc1["runs"][1]
    assert cand["agreement"]["top1"] == 1.0 and cand["agreement"]["max_abs_prob_diff"] < 1e-4
    assert cand["latency_ms"]["per_sample_mean"] > 0 and cand["throughput_sps"] > 0
    assert cand["effective_precision"]["executed"] == "fp32"


def test_building_the_pipeline_shows_no_ray_remote_args_deprecation(ray_local, data_dir, tiny_checkpoint):
    """Ray 2.60 warns about the remote args medray must pass (no replacement yet): users
    should not see that on every run, whatever warning filters are in force."""
    import warnings

    from medray.pipeline.execute import predict, read_dataset
    from medray.pipeline.resources import plan_pool

    cfg = make_cfg(data_dir, tiny_checkpoint)
    _, samples, specs, task = prepare(cfg)
    plan = plan_pool(device="cpu", streams=1, cluster_cpus=2, cluster_gpus=0, node_cores=2, reserve_cpus=1, threads=None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        predict(read_dataset(task, samples, specs[-1], block_size=8), specs[-1], plan, task)  # built, not executed
    assert not [w for w in caught if "ray_remote_args" in str(w.message)], [str(w.message) for w in caught]


def test_both_rates_and_the_cost_probe_on_a_small_and_a_large_set(ray_local, tmp_path_factory, tiny_checkpoint):
    """256 and 2048 samples: every sample comes back, start-up and wall time are measured,
    both rates are reported, and the cores are split by measured costs from MIN_SAMPLES on.
    (That the end-to-end rate does not depend on the set size is a property of its
    definition, shown on constructed clocks in tests/metrics/test_performance.py; a timing
    ratio measured here would test the machine's load.)"""
    from medray.pipeline.costs import MIN_SAMPLES

    tmp = tmp_path_factory.mktemp("tput")
    data = DataConfig(name="synthetic", root=str(tmp / "data"), n_train=2, n_calibration=2, n_test=2048, image_size=256)
    for limit in (256, 2048):
        cfg = make_cfg(tmp, tiny_checkpoint, baseline=None, batch_size=32, data=DataConfig(**{**data.__dict__, "limit": limit}),
                       output_dir=str(tmp / f"out{limit}"))
        _, samples, specs, task = prepare(cfg)
        r = execute(cfg, task, samples, specs)[0]
        assert len(r.predictions) == limit and r.startup_s > 0 and r.wall_s > r.startup_s
        assert r.throughput_sps > 0 and r.inference_sps > 0
        # 2048 samples: the cores split by what a sample costs each stage, measured first.
        assert (r.pool.costs is not None) == (limit >= MIN_SAMPLES), r.pool
