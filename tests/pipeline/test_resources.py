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
