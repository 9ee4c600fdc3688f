"""The `sweep` config group → Tune's param space, search algorithm, scheduler, resources.

A trial is one point ``{"run": "<backend>-<precision>", "batch_size", "streams"}`` (plus
``overlap`` / ``sw_batch_size`` for segmentation).  Backend and precision travel as one
value because the precisions depend on the backend.

Resources: a trial runs a whole Ray Data pipeline.  Its placement group holds an empty
head bundle (the trial's own process, the Ray Data driver) and one bundle per inference
actor; the actors are started in it (``medray.pipeline.stages._actor_placement``).
The decode tasks cannot run in it — Ray Data's internal tasks (``from_pandas``'s
metadata) refuse to inherit a placement group, so a group holding every CPU deadlocks a
2-CPU machine — they use the ``ray.reserve_cpus_for_reading`` CPUs that the sweep keeps
free: a trial counts actors + reserve, and only as many trials run at once as the
cluster holds (on a 2-CPU machine: one).
"""

from __future__ import annotations

import itertools
import logging
import math
from dataclasses import dataclass

from medray.errors import ConfigError
from medray.pipeline.resources import plan_pool
from medray.results import PoolPlan
from medray.specs import RunName
from medray.tasks import task_class
from medray.tune.config import SweepJobConfig

log = logging.getLogger("medray.tune")

# Intermediate reports (scheduler=asha) and the final one maximise this; it is the
# objective of a configuration that meets the constraints, 0 for one that does not.
METRIC = "score"
MODE = "max"


def axes(cfg: SweepJobConfig) -> dict[str, list]:
    """The grid's axes, in a fixed order (also the order of trial names)."""
    sw = cfg.sweep
    out: dict[str, list] = {"run": sw.pairs(), "batch_size": list(sw.batch_sizes), "streams": list(sw.streams)}
    extra = task_class(cfg.task).sweep_axes(cfg)
    if (sw.overlap or sw.sw_batch_size or sw.mirroring) and not extra:
        log.warning("sweep.overlap / sweep.sw_batch_size / sweep.mirroring are sliding-window axes; ignored for task=%s",
                    cfg.task)
    out.update(extra)
    return out


def grid_points(cfg: SweepJobConfig) -> list[dict]:
    """Every combination of the axes (what search=grid runs, once per num_samples)."""
    ax = axes(cfg)
    return [dict(zip(ax, values)) for values in itertools.product(*ax.values())]


def trial_label(config: dict) -> str:
    """``onnxruntime-int8-b64-s2`` (+ ``-o0.5-w4`` for sliding-window values)."""
    label = f"{config['run']}-b{config['batch_size']}-s{config['streams']}"
    if "overlap" in config:
        label += f"-o{config['overlap']:g}"
    if "sw_batch_size" in config:
        label += f"-w{config['sw_batch_size']}"
    if "mirroring" in config:
        label += "-mirror" if config["mirroring"] else "-nomirror"
    return label


def param_space(cfg: SweepJobConfig) -> dict:
    """grid: ``tune.grid_search`` per axis; random/optuna: ``tune.choice`` per axis."""
    from ray import tune

    ax = axes(cfg)
    if cfg.sweep.search == "grid":
        return {k: tune.grid_search(v) for k, v in ax.items()}
    return {k: tune.choice(v) for k, v in ax.items()}


def search_algorithm(cfg: SweepJobConfig, max_concurrent: int):
    """The search algorithm, with the concurrency limit built in.

    grid/random: Tune's BasicVariantGenerator; optuna: OptunaSearch behind a
    ConcurrencyLimiter.  The limit is set here because Tune ignores
    ``TuneConfig.max_concurrent_trials`` once a generator instance is passed — and more
    trials than the cluster holds would take the decode tasks' CPUs and hang.
    """
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.basic_variant import BasicVariantGenerator

    sw = cfg.sweep
    if sw.search == "optuna":
        try:
            from ray.tune.search.optuna import OptunaSearch

            searcher = OptunaSearch(seed=sw.seed)  # metric/mode come from TuneConfig
        except (ImportError, AssertionError) as e:  # Tune asserts optuna is importable
            raise ConfigError(
                f"sweep.search='optuna': Optuna is not installed ({e}); pip install optuna, or use sweep.search=grid|random"
            ) from None
        return ConcurrencyLimiter(searcher, max_concurrent=max_concurrent)
    return BasicVariantGenerator(random_state=sw.seed, max_concurrent=max_concurrent)


def scheduler(cfg: SweepJobConfig):
    """None (FIFO: every trial runs to the end) or ASHA on the running score.

    A trial reports its running throughput every ``sweep.report_every`` batches (one
    ``training_iteration`` each); ASHA stops the slower half at each rung.
    """
    if cfg.sweep.scheduler == "asha":
        from ray.tune.schedulers import ASHAScheduler

        # metric/mode come from TuneConfig (Tune refuses them twice).
        return ASHAScheduler(time_attr="training_iteration", max_t=10_000, grace_period=1, reduction_factor=2)
    return None


# --------------------------------------------------------------------------- resources


@dataclass(frozen=True)
class ClusterShape:
    """What one trial can be given: the smallest node's CPUs, GPUs per GPU node, totals."""

    node_cpus: float
    node_gpus: float
    total_cpus: float
    total_gpus: float

    @classmethod
    def current(cls) -> ClusterShape:
        import ray

        nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
        cpus = [float(r.get("CPU", 0)) for r in nodes if r.get("CPU", 0) > 0] or [1.0]
        gpus = [float(r.get("GPU", 0)) for r in nodes if r.get("GPU", 0) > 0] or [0.0]
        res = ray.cluster_resources()
        return cls(min(cpus), min(gpus), float(res.get("CPU", 0)), float(res.get("GPU", 0)))


def trial_plan(cfg: SweepJobConfig, config: dict, shape: ClusterShape) -> PoolPlan:
    """The actor pool of one trial, sized to what one trial may hold.

    CPU: one node (the pool's actors plus the read reserve fill the smallest node, so
    two CPU trials never share cores and their timings stay comparable).  GPU: one GPU
    with its share of the node's CPUs (``streams`` actors on it).
    """
    backend = RunName.parse(config["run"], key="run").backend
    threads = (cfg.sweep.backend_options.get(backend) or {}).get("threads")
    reserve = cfg.ray.reserve_cpus_for_reading
    if cfg.device == "cuda":
        cpus = shape.node_cpus / max(1.0, shape.node_gpus)
        return plan_pool(device="cuda", streams=config["streams"], cluster_cpus=max(cpus, reserve + 0.01),
                         cluster_gpus=1.0 if shape.total_gpus >= 1 else shape.total_gpus,
                         node_cores=int(shape.node_cpus), reserve_cpus=reserve, threads=threads)
    return plan_pool(device="cpu", streams=config["streams"], cluster_cpus=shape.node_cpus, cluster_gpus=0.0,
                     node_cores=int(shape.node_cpus), reserve_cpus=reserve, threads=threads)


def bundles(plan: PoolPlan) -> list[dict]:
    """Placement-group bundles of a trial: empty head (the trial's driver), one bundle per
    actor (the decode tasks' CPUs are kept free by :func:`max_concurrent`)."""
    actor = {"CPU": plan.num_cpus}
    if plan.num_gpus:
        actor["GPU"] = plan.num_gpus
    return [{}] + [dict(actor) for _ in range(plan.actors)]


def demand(plan: PoolPlan, reserve_cpus: float) -> dict[str, float]:
    """What one running trial uses: its actors plus the CPUs of its decode tasks."""
    return {"CPU": plan.actors * plan.num_cpus + reserve_cpus, "GPU": plan.actors * plan.num_gpus}


# A trial that cannot be planned still runs (and reports why it failed) in a token group.
FAILED_BUNDLES = [{"CPU": 0.01}]


class TrialResources:
    """``tune.with_resources`` callable: the placement group of a trial's config."""

    def __init__(self, groups: dict[tuple, list[dict]]):
        self.groups = groups

    def __call__(self, config: dict):
        from ray import tune

        return tune.PlacementGroupFactory(self.groups.get(plan_key(config), FAILED_BUNDLES), strategy="STRICT_PACK")


def plan_key(config: dict) -> tuple:
    return (RunName.parse(config["run"], key="run").backend, int(config["streams"]))


def plan_all(cfg: SweepJobConfig, shape: ClusterShape) -> tuple[dict[tuple, PoolPlan], dict[tuple, str]]:
    """Plans per (backend, streams) of the grid, and the reason where none fits."""
    plans: dict[tuple, PoolPlan] = {}
    errors: dict[tuple, str] = {}
    for point in grid_points(cfg):
        key = plan_key(point)
        if key in plans or key in errors:
            continue
        try:
            plans[key] = trial_plan(cfg, point, shape)
        except ConfigError as e:
            errors[key] = f"ConfigError: {e}"
    return plans, errors


def max_concurrent(cfg: SweepJobConfig, demands: list[dict[str, float]], shape: ClusterShape) -> int:
    """How many of the largest trials (actors + decode CPUs) the cluster holds at once
    (at least 1): the CPUs outside the trials' groups are the decode tasks' only CPUs."""
    if cfg.sweep.max_concurrent_trials is not None:
        return cfg.sweep.max_concurrent_trials
    if not demands:
        return 1
    need_cpu = max(d["CPU"] for d in demands)
    need_gpu = max(d["GPU"] for d in demands)
    fits = [math.floor(shape.total_cpus / need_cpu + 1e-9)] if need_cpu else []
    if need_gpu:
        fits.append(math.floor(shape.total_gpus / need_gpu + 1e-9))
    return max(1, min(fits or [1]))
