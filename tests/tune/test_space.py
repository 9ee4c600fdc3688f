"""Search space, trial resources and concurrency, without Ray."""

from __future__ import annotations

import pytest

from medray.backends.torch.config import TorchConfig
from medray.config import ConfigError, RayConfig
from medray.tune import space
from medray.tune.config import SweepConfig, SweepJobConfig


def cfg(**sweep) -> SweepJobConfig:
    base = dict(backends={"torch": ["fp32", "bf16"], "onnxruntime": ["fp32"]}, batch_sizes=[16, 64], streams=[1, 2])
    base.update(sweep)
    return SweepJobConfig(backend=TorchConfig(), ray=RayConfig(reserve_cpus_for_reading=1.0), sweep=SweepConfig(**base))


def test_grid_points_and_labels():
    pts = space.grid_points(cfg())
    assert len(pts) == 3 * 2 * 2
    assert pts[0] == {"run": "torch-fp32", "batch_size": 16, "streams": 1}
    assert space.trial_label(pts[-1]) == "onnxruntime-fp32-b64-s2"
    assert space.trial_label({"run": "torch-fp32", "batch_size": 1, "streams": 1, "overlap": 0.5, "sw_batch_size": 4}) == (
        "torch-fp32-b1-s1-o0.5-w4"
    )
    # Sliding-window values are axes of segmentation sweeps only.
    assert "overlap" not in space.axes(cfg(overlap=[0.25, 0.5]))


def test_param_space_per_search():
    from ray.tune.search.sample import Categorical

    grid = space.param_space(cfg())
    assert grid["batch_size"] == {"grid_search": [16, 64]}
    rnd = space.param_space(cfg(search="random", num_samples=5))
    assert isinstance(rnd["run"], Categorical) and rnd["run"].categories == ["torch-fp32", "torch-bf16", "onnxruntime-fp32"]
    # The concurrency limit travels inside the search algorithm (Tune ignores
    # max_concurrent_trials once an instance is passed).
    assert space.search_algorithm(cfg(), 1).max_concurrent == 1
    assert space.search_algorithm(cfg(search="random", num_samples=5), 3).max_concurrent == 3
    assert space.scheduler(cfg()) is None
    assert space.scheduler(cfg(scheduler="asha")).__class__.__name__ == "AsyncHyperBandScheduler"


def test_optuna_missing_is_a_config_error():
    try:
        import optuna  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match="sweep.search='optuna': Optuna is not installed"):
            space.search_algorithm(cfg(search="optuna", num_samples=4), 1)
    else:
        pytest.skip("optuna is installed here")


def test_trial_resources_on_a_2_cpu_node():
    shape = space.ClusterShape(node_cpus=2, node_gpus=0, total_cpus=2, total_gpus=0)
    c = cfg()
    plans, errors = space.plan_all(c, shape)
    assert errors == {}
    one, two = plans[("torch", 1)], plans[("torch", 2)]
    assert (one.actors, one.num_cpus, one.threads) == (1, 1.0, 2)
    assert (two.actors, two.num_cpus, two.threads) == (2, 0.5, 1)
    # Placement group: empty head bundle (the trial's driver) + one bundle per actor; the
    # decode CPU stays outside it, so a 2-CPU node runs one trial at a time.
    assert space.bundles(two) == [{}, {"CPU": 0.5}, {"CPU": 0.5}]
    demands = [space.demand(p, 1.0) for p in plans.values()]
    assert all(d == {"CPU": 2.0, "GPU": 0.0} for d in demands)
    assert space.max_concurrent(c, demands, shape) == 1
    pgf = space.TrialResources({k: space.bundles(p) for k, p in plans.items()})({"run": "torch-fp32", "streams": 2})
    assert pgf.head_bundle_is_empty and pgf.bundles == [{"CPU": 0.5}, {"CPU": 0.5}]


def test_trial_resources_on_a_cluster():
    # 4 nodes × 8 CPUs: a CPU trial takes a node (7 CPUs of actors + 1 for decoding).
    shape = space.ClusterShape(node_cpus=8, node_gpus=0, total_cpus=32, total_gpus=0)
    plans, _ = space.plan_all(cfg(streams=[1]), shape)
    assert plans[("torch", 1)].num_cpus == 7
    assert space.max_concurrent(cfg(), [space.demand(p, 1.0) for p in plans.values()], shape) == 4
    # GPU trials: one GPU each, its share of the node's CPUs; 2 nodes × 4 GPUs → 8 at once.
    gshape = space.ClusterShape(node_cpus=32, node_gpus=4, total_cpus=64, total_gpus=8)
    g = cfg(device="cuda", backends={"torch": ["fp16"]}, streams=[2])
    plan = space.plan_all(g, gshape)[0][("torch", 2)]
    assert (plan.actors, plan.num_gpus, plan.num_cpus) == (2, 0.5, 1.0)
    assert space.bundles(plan) == [{}, {"CPU": 1.0, "GPU": 0.5}, {"CPU": 1.0, "GPU": 0.5}]
    assert space.max_concurrent(g, [space.demand(plan, 1.0)], gshape) == 8
    assert space.max_concurrent(cfg(max_concurrent_trials=3), [space.demand(plan, 1.0)], gshape) == 3


def test_unplannable_streams_are_recorded_not_raised():
    shape = space.ClusterShape(node_cpus=2, node_gpus=0, total_cpus=2, total_gpus=0)
    plans, errors = space.plan_all(cfg(streams=[1, 500]), shape)
    assert ("torch", 1) in plans
    assert "streams=500" in errors[("torch", 500)]


def test_segmentation_axes_tile_step_windows_and_mirroring():
    """task=segmentation: the windows per call, the overlap (nnU-Net's tile step) and
    model.mirroring are grid axes; each trial's evaluate config carries them."""
    from medray.data.config import DataConfig
    from medray.tune.trials import trial_eval_config, trial_record

    sw = SweepConfig(backends={"torch": ["fp32"], "openvino": ["int8"]}, batch_sizes=[1], streams=[1],
                     sw_batch_size=[1, 8], overlap=[0.5, 0.25], mirroring=[True, False])
    c = SweepJobConfig(backend=TorchConfig(), task="segmentation", data=DataConfig(name="msd"), sweep=sw)
    pts = space.grid_points(c)
    assert len(pts) == 2 * 2 * 2 * 2
    p = next(x for x in pts if x["run"] == "openvino-int8" and not x["mirroring"] and x["overlap"] == 0.25)
    assert space.trial_label(p).endswith("-o0.25-nomirror") and trial_record(p)["mirroring"] is False
    t = trial_eval_config(c, p)
    assert t.model.mirroring is False and t.sliding_window.overlap == 0.25
    assert t.sliding_window.sw_batch_size == p["batch_size"] and (t.backend.name, t.precision) == ("openvino", "int8")
