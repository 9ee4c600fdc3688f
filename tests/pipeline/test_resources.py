"""Actor-pool sizing never takes the CPUs the read tasks need."""

from __future__ import annotations

import pytest

from medray.config import ConfigError
from medray.pipeline.resources import plan_pool


def plan(**kw):
    args = dict(device="cpu", streams=1, cluster_cpus=2, cluster_gpus=0, node_cores=2, reserve_cpus=1.0, threads=None)
    args.update(kw)
    return plan_pool(**args)


@pytest.mark.parametrize("streams, cpus, threads", [(1, 1.0, 2), (2, 0.5, 1), (4, 0.25, 1)])
def test_two_cpu_machine_leaves_one_cpu_for_reading(streams, cpus, threads):
    p = plan(streams=streams)
    assert (p.actors, p.num_cpus, p.threads, p.num_gpus) == (streams, cpus, threads, 0.0)
    assert p.actors * p.num_cpus <= 2 - 1.0


def test_big_node_gives_each_stream_its_share_of_cores():
    p = plan(streams=4, cluster_cpus=32, node_cores=32)
    assert (p.actors, p.threads, p.num_cpus) == (4, 8, 7.0)  # 4 × 7 ≤ 32 − 1


def test_explicit_threads_are_kept():
    assert plan(threads=3, cluster_cpus=16, node_cores=16).threads == 3


def test_no_cpu_left_is_an_error_with_numbers():
    with pytest.raises(ConfigError, match="only 1 CPUs, none would be left"):
        plan(cluster_cpus=1)


def test_gpu_pool_uses_fractional_gpus_per_stream():
    p = plan(device="cuda", streams=2, cluster_cpus=8, cluster_gpus=2)
    assert (p.actors, p.num_gpus, p.num_cpus) == (4, 0.5, 1.0)


def test_gpu_requested_on_cpu_cluster_names_resources():
    with pytest.raises(ConfigError, match=r"device=cuda: the Ray cluster has no GPU \(resources: 2 CPU, 0 GPU\)"):
        plan(device="cuda")


# -- the split from measured costs (every core busy) ------------------------------------
from medray.results import StageCosts  # noqa: E402


@pytest.mark.parametrize(
    "read_ms, infer_ms, threads, tasks, read_cpus",
    [
        # The demo model (OpenVINO INT8) on 256-px PNGs: decoding is 60 % of the work, so
        # one backend thread (0.76 cores needed) and two decode tasks (1.24 cores needed).
        (0.75, 0.5, 1, 2, 0.5),
        # DenseNet121 on 1024-px JPEGs: 0.72 cores of decoding, 1.28 of inference.
        (4.3, 7.9, 2, 1, 1.0),
        # Warm cache: reading back is a fraction of inference.
        (0.1, 0.5, 2, 1, 1.0),
    ],
)
def test_costs_size_backend_threads_and_decode_tasks_rounded_up(read_ms, infer_ms, threads, tasks, read_cpus):
    p = plan(costs=StageCosts(read_ms / 1e3, infer_ms / 1e3))
    assert (p.actors, p.num_cpus, p.threads, p.read_tasks, p.read_cpus) == (1, 1.0, threads, tasks, read_cpus)
    assert p.costs == {"read_s": read_ms / 1e3, "infer_s": infer_ms / 1e3}
    assert f"up to {tasks} read task(s)" in p.describe() and "inference" in p.describe()


@pytest.mark.parametrize("streams", [1, 2, 4])
@pytest.mark.parametrize("read_ms", [0.01, 0.5, 2.0, 50.0, 5000.0])
@pytest.mark.parametrize("cpus", [2, 3, 8, 32, 128])
@pytest.mark.parametrize("explicit", [False, True])
def test_a_costed_split_never_gives_away_the_read_reserve(streams, read_ms, cpus, explicit):
    """Whatever the costs and threads: the actors' CPUs plus the read tasks' CPUs fit the
    cluster, the actors never take the reserved CPU (the 2-CPU hang), and each read task gets
    a share Ray counts (>= 0.01 CPU)."""
    threads = max(1, cpus // streams) if explicit else None
    p = plan(streams=streams, cluster_cpus=cpus, node_cores=cpus, threads=threads, costs=StageCosts(read_ms / 1e3, 1e-3))
    assert p.actors * p.num_cpus <= cpus - 1.0
    assert p.actors * p.num_cpus + p.read_tasks * p.read_cpus <= cpus + 1e-9
    assert p.read_cpus >= 0.01 and 1 <= p.read_tasks <= cpus and 1 <= p.threads <= max(1, cpus // streams)


def test_a_big_node_splits_its_cores_by_the_costs():
    p = plan(streams=4, cluster_cpus=32, node_cores=32, costs=StageCosts(1e-3, 1e-3))
    assert (p.threads, p.read_tasks) == (4, 16)  # half the cores each: 4 threads × 4 actors, 16 decode tasks
    assert p.actors * p.num_cpus + p.read_tasks * p.read_cpus <= 32


def test_explicit_threads_stay_and_decoding_gets_the_cores_they_leave():
    # Decoding alone would want 2 tasks; 2 threads on 2 cores leave it one.
    p = plan(threads=2, costs=StageCosts(0.75e-3, 0.5e-3))
    assert (p.threads, p.read_tasks, p.read_cpus) == (2, 1, 1.0)
    p = plan(threads=2, cluster_cpus=8, node_cores=8, costs=StageCosts(0.75e-3, 0.5e-3))
    assert (p.threads, p.read_tasks) == (2, 5)  # 4.8 cores of decoding wanted, 6 left


def test_gpu_pools_ignore_cpu_costs():
    p = plan(device="cuda", cluster_cpus=8, cluster_gpus=1, costs=StageCosts(1e-3, 1e-3))
    assert (p.read_tasks, p.read_cpus, p.costs) == (None, 1.0, None)


@pytest.mark.parametrize("bad", [float("nan"), 0.0, -1e-3, float("inf"), None])
def test_stage_costs_are_positive_finite_seconds(bad):
    with pytest.raises(ValueError, match="StageCosts.read_s=.*a measured cost is a positive number"):
        StageCosts(bad, 1e-3)
