"""How big the actor pool is, what each actor and read task asks Ray for, and how the
cores are split between decoding and inference.

The rule that keeps a small machine from hanging: the pool's CPUs never exceed the
cluster's CPUs minus ``reserve_cpus_for_reading``, so decode tasks always get a CPU.

Every core busy (CPU pools): with what one sample costs each stage (:class:`StageCosts`,
measured at start-up by :mod:`medray.pipeline.costs`), the backend gets the threads its
share of the node's core time needs and the read stage as many concurrent tasks as its
share needs, each rounded up, so that neither stage alone leaves a core idle while the
other waits.  The read tasks share the CPUs the pool leaves (at least the reserved ones;
fractions of a CPU each): Ray counts them, the operating system runs them on whichever
core is free.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict

from medray.errors import ConfigError
from medray.results import PoolPlan, StageCosts

log = logging.getLogger("medray.resources")


def plan_pool(
    *,
    device: str,
    streams: int,
    cluster_cpus: float,
    cluster_gpus: float,
    node_cores: int,
    reserve_cpus: float,
    threads: int | None,
    costs: StageCosts | None = None,
) -> PoolPlan:
    """Size the Predictor pool.

    CPU: ``streams`` actors sharing the node's cores (``threads`` each, default
    cores // streams, or what inference's share of the node needs when ``costs`` are
    known; then also the read concurrency, see the module docstring).  GPU: ``streams`` actors per GPU, each asking ``1/streams`` GPU,
    so every GPU runs ``streams`` concurrent sessions.

    Why one actor per stream rather than ``streams`` contexts inside one actor: a Ray Data
    actor handles one batch at a time, so concurrency on a GPU comes from actors; each
    actor then has its own process (no shared GIL around the host-side copies), its own
    CUDA stream and execution context, and Ray's fractional GPU request sets its
    ``CUDA_VISIBLE_DEVICES`` to the GPU it shares (device 0 inside the actor).  The cost is
    one CUDA context and one copy of the weights/engine per stream in GPU memory.  GPU
    actors ask at most 1 CPU each and never more than the CPUs left after the read reserve.
    """
    free = cluster_cpus - reserve_cpus
    if threads is not None and threads > node_cores:
        raise ConfigError(
            f"backend.threads={threads}: the smallest node of the Ray cluster has {node_cores} CPU cores "
            f"({cluster_cpus:g} CPUs in all); use backend.threads<={node_cores} or null (cores / streams)"
        )
    if device == "cuda":
        if cluster_gpus <= 0:
            raise ConfigError(
                f"device=cuda: the Ray cluster has no GPU (resources: {cluster_cpus:g} CPU, "
                f"{cluster_gpus:g} GPU); run with device=cpu or on a cluster with GPU nodes"
            )
        if cluster_gpus < 1:
            raise ConfigError(
                f"device=cuda: the Ray cluster advertises only {cluster_gpus:g} GPU; the pool places "
                f"streams={streams} actors per whole GPU (1/{streams} GPU each), so it needs at least 1 GPU"
            )
        if cluster_gpus != int(cluster_gpus):
            log.warning("the cluster advertises %g GPUs; the pool uses %d whole GPUs", cluster_gpus, int(cluster_gpus))
        actors = streams * int(cluster_gpus)
        num_cpus = min(1.0, max(free, 0.0) / actors)
        if num_cpus < 0.01:
            raise ConfigError(
                f"ray: {cluster_cpus:g} CPUs, {reserve_cpus:g} reserved for reading: no CPU left for "
                f"the {actors} GPU actors; lower ray.reserve_cpus_for_reading"
            )
        # Rounded down: Ray keeps 4 decimals, and 6 × round(1/6) = 1.0002 > 1 would leave
        # one actor (or the decode tasks, for CPUs) unschedulable.
        return PoolPlan(actors, math.floor(num_cpus * 100) / 100, math.floor(1e4 / streams) / 1e4, threads or 1)
    if free <= 0:
        raise ConfigError(
            f"ray.reserve_cpus_for_reading={reserve_cpus:g}: the cluster has only {cluster_cpus:g} CPUs, "
            "none would be left for the inference actors; lower the reserve or add CPUs"
        )
    if free / streams < 0.01:
        raise ConfigError(
            f"streams={streams}: the cluster has {cluster_cpus:g} CPUs, {reserve_cpus:g} reserved for reading; "
            f"{free:g} CPUs cannot be shared by {streams} actors (each needs >= 0.01 CPU); "
            f"use streams<={int(free / 0.01)}"
        )
    most = max(1, node_cores // streams)
    per_actor_threads = threads or (_rounded_up(node_cores * costs.infer_share / streams, most) if costs else most)
    num_cpus = min(float(per_actor_threads), free / streams)
    # Ray accepts fractional CPUs below 1 only; round to keep the pool within `free`.
    num_cpus = math.floor(num_cpus * 100) / 100 if num_cpus < 1 else math.floor(num_cpus)
    if costs is None:
        return PoolPlan(streams, num_cpus, 0.0, per_actor_threads)
    tasks = _rounded_up(cluster_cpus * (1.0 - costs.infer_share), max(1, int(cluster_cpus)))
    if threads:  # the user's threads: decoding gets the cores they leave, however dear it is
        tasks = min(tasks, max(1, node_cores - streams * threads))
    # The CPUs the pool leaves, shared by the concurrent read tasks (a test checks that Ray
    # Data runs that many at once: tests/pipeline/test_stages.py); at least 0.01 CPU each,
    # the least Ray counts.
    left = cluster_cpus - streams * num_cpus
    tasks = min(tasks, max(1, int(left * 100)))
    read_cpus = math.floor(left / tasks * 100) / 100
    return PoolPlan(streams, num_cpus, 0.0, per_actor_threads, read_cpus, tasks, asdict(costs))


def _rounded_up(need: float, most: int) -> int:
    """``need`` (cores) rounded up to whole threads/tasks, 1..most, with 0.05 of a core of
    slack, so a measured 1.02 cores is one, not two."""
    return max(1, min(most, math.ceil(need - 0.05)))
