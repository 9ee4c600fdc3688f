"""How big the actor pool is and what each actor asks Ray for.

The rule that keeps a small machine from hanging: the pool's CPUs never exceed the
cluster's CPUs minus ``reserve_cpus_for_reading``, so decode tasks always get a CPU.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from medray.config import ConfigError

log = logging.getLogger("medray.resources")


@dataclass
class PoolPlan:
    """Actor-pool sizing for one run."""

    actors: int
    num_cpus: float
    num_gpus: float
    threads: int

    def describe(self) -> str:
        gpu = f", {self.num_gpus:g} GPU" if self.num_gpus else ""
        return f"{self.actors} actor(s) × ({self.num_cpus:g} CPU{gpu}, {self.threads} threads)"


def plan_pool(
    *,
    device: str,
    streams: int,
    cluster_cpus: float,
    cluster_gpus: float,
    node_cores: int,
    reserve_cpus: float,
    threads: int | None,
) -> PoolPlan:
    """Size the Predictor pool.

    CPU: ``streams`` actors sharing the node's cores (``threads`` each, default
    cores // streams).  GPU: ``streams`` actors per GPU, each asking ``1/streams`` GPU,
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
    per_actor_threads = threads or max(1, node_cores // streams)
    num_cpus = min(float(per_actor_threads), free / streams)
    # Ray accepts fractional CPUs below 1 only; round to keep the pool within `free`.
    num_cpus = math.floor(num_cpus * 100) / 100 if num_cpus < 1 else math.floor(num_cpus)
    return PoolPlan(streams, num_cpus, 0.0, per_actor_threads)
