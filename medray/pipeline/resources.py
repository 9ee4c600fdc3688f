"""How big the actor pool is and what each actor asks Ray for.

The rule that keeps a small machine from hanging: the pool's CPUs never exceed the
cluster's CPUs minus ``reserve_cpus_for_reading``, so decode tasks always get a CPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from medray.config import ConfigError


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
    """
    free = cluster_cpus - reserve_cpus
    if device == "cuda":
        if cluster_gpus < 1:
            raise ConfigError(
                f"device=cuda: the Ray cluster has no GPU (resources: {cluster_cpus:g} CPU, "
                f"{cluster_gpus:g} GPU); run with device=cpu or on a cluster with GPU nodes"
            )
        actors = streams * int(cluster_gpus)
        num_cpus = min(1.0, max(free, 0.0) / actors)
        if num_cpus <= 0:
            raise ConfigError(
                f"ray: {cluster_cpus:g} CPUs, {reserve_cpus:g} reserved for reading: no CPU left for "
                f"the {actors} GPU actors; lower ray.reserve_cpus_for_reading"
            )
        return PoolPlan(actors, num_cpus, 1.0 / streams, threads or 1)
    if free <= 0:
        raise ConfigError(
            f"ray.reserve_cpus_for_reading={reserve_cpus:g}: the cluster has only {cluster_cpus:g} CPUs, "
            "none would be left for the inference actors; lower the reserve or add CPUs"
        )
    per_actor_threads = threads or max(1, node_cores // streams)
    num_cpus = min(float(per_actor_threads), free / streams)
    # Ray accepts fractional CPUs below 1 only; round to keep the pool within `free`.
    num_cpus = math.floor(num_cpus * 100) / 100 if num_cpus < 1 else math.floor(num_cpus)
    return PoolPlan(streams, num_cpus, 0.0, per_actor_threads)
