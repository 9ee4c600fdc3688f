"""The two Ray Data stages of every run, behind one function.

Every evaluation is ``samples → read (CPU tasks) → predict (actor pool) → driver``.
What each stage needs from Ray beyond ``map_batches``' plain arguments — decode tasks
that are never fused into the actors, restarts and retries of dead actors, the placement
group of a sweep trial — goes through Ray's remote-args hooks, which Ray 2.60 deprecates
for removal in 2.64 with no named replacement.  They are passed here and nowhere else,
so moving the Ray pin is a change to :func:`map_stage` only (a test checks that the two
stages stay separate operators).  So is the one setting of Ray Data's internals medray
changes (:func:`prompt_resource_limits`).
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@contextlib.contextmanager
def ray_remote_args_accepted():
    """Silence Ray 2.60's deprecation of ``ray_remote_args(_fn)`` around our own calls.

    Shown on every run, the warning would only alarm users; revisit when the pin moves.
    A context, not a global filter: Ray installs its own filter for its warnings when it
    is imported.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`ray_remote_args(_fn)?` is deprecated", category=DeprecationWarning)
        yield


@dataclass
class Stage:
    """One ``map_batches`` stage: a read task (``actors=None``) or an actor pool."""

    fn: Callable | type
    batch_size: int | None = None
    fn_kwargs: dict[str, Any] = field(default_factory=dict)
    # Read tasks only: how many may run at once (None: as many as their CPUs admit).
    tasks: int | None = None
    # Actor pools only.
    actors: int | None = None
    constructor_kwargs: dict[str, Any] = field(default_factory=dict)
    num_cpus: float = 1.0
    num_gpus: float | None = None
    # A dead actor is restarted and its batch retried at most this often (Ray Data's
    # default is forever: a backend that crashes every time would hang the run).
    max_retries: int = 3


# How often Ray Data 2.60 asks its autoscaling coordinator for the cluster's resources
# (its default: every 1 s).  Until the first answer an execution's limits are zero and it
# runs one task at a time; medray asks every 0.1 s, so the answer is used as soon as it
# comes (measured on the 2-core VM: reads and predicts serialised for the first ~1 s of
# every run; the demo set on OpenVINO INT8 went from ~1300 to ~1500 img/s end to end).
LIMITS_REFRESH_S = 0.1


def prompt_resource_limits() -> None:
    """Make Ray Data pick up the cluster's resources within :data:`LIMITS_REFRESH_S` of an
    execution's start (a private class attribute of Ray 2.60: checked by a test).

    Process-wide and for the whole execution, not only its start: one query of the
    cluster's resources every 0.1 s instead of every second (an autoscaled cluster's new
    nodes are then seen sooner too)."""
    from ray.data._internal.execution.resource_manager import ResourceManager

    ResourceManager.GLOBAL_LIMITS_UPDATE_INTERVAL_S = min(ResourceManager.GLOBAL_LIMITS_UPDATE_INTERVAL_S,
                                                          LIMITS_REFRESH_S)


def map_stage(ds, stage: Stage):
    """``ds.map_batches`` for ``stage``, with the remote args that keep it what it is."""
    import ray.data

    prompt_resource_limits()

    common = dict(batch_format="numpy", batch_size=stage.batch_size)
    with ray_remote_args_accepted():
        if stage.actors is None:
            # A ray_remote_args_fn keeps Ray Data from fusing the read into the actors:
            # fused, each actor would read then infer serially instead of overlapping them.
            # num_cpus is also passed as such: Ray Data's resource budgets read the static
            # value only (without it they count every read task as 1 CPU, and a fraction
            # of a CPU per task would admit no more concurrent reads than whole CPUs).
            return ds.map_batches(
                stage.fn,
                fn_kwargs=stage.fn_kwargs,
                num_cpus=stage.num_cpus,
                ray_remote_args_fn=functools.partial(_read_task_args, stage.num_cpus),
                compute=ray.data.TaskPoolStrategy(size=stage.tasks),
                **common,
            )
        return ds.map_batches(
            stage.fn,
            fn_constructor_kwargs=stage.constructor_kwargs,
            compute=ray.data.ActorPoolStrategy(size=stage.actors),
            num_cpus=stage.num_cpus,
            num_gpus=stage.num_gpus or None,
            max_restarts=stage.max_retries,
            max_task_retries=stage.max_retries,
            **_actor_placement(),
            **common,
        )


def _read_task_args(num_cpus: float) -> dict:
    return {"num_cpus": num_cpus}


def _actor_placement() -> dict:
    """Inside a placement group (a sweep trial reserves one for its actors), the pool
    goes into it: Ray Data's default SPREAD would start the actors outside, on CPUs the
    group does not hold.  Read tasks stay outside (Ray Data's own tasks refuse to
    inherit a group), on the CPUs the sweep leaves free for them."""
    import ray

    pg = ray.util.get_current_placement_group() if ray.is_initialized() else None
    if pg is None:
        return {}
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    return {"scheduling_strategy": PlacementGroupSchedulingStrategy(pg, placement_group_capture_child_tasks=True)}
