"""What a run gives back to the driver: :class:`RunResult` (per-sample outputs and what
was measured), and how its actor pool was sized (:class:`PoolPlan`, from the per-sample
:class:`StageCosts` measured at start-up).  Plain dataclasses: tasks, the report, the
pipeline and the sweep read them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

    from medray.specs import RunSpec


@dataclass
class StageCosts:
    """Core-seconds one sample costs each stage on this node, measured at start-up."""

    # Read + decode + preprocess one sample on one core (decoded-cache hits: reading it back).
    read_s: float
    # The actor's work for one sample at one thread: normalisation, TTA views, the backend.
    infer_s: float

    def __post_init__(self):
        for name in ("read_s", "infer_s"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise ValueError(f"StageCosts.{name}={v!r}: a measured cost is a positive number of seconds")

    @property
    def infer_share(self) -> float:
        """The fraction of the node's core time inference needs when both stages keep pace."""
        return self.infer_s / (self.infer_s + self.read_s)

    def describe(self) -> str:
        return f"read {1e3 * self.read_s:.3g} ms, inference {1e3 * self.infer_s:.3g} core-ms per sample"


@dataclass
class PoolPlan:
    """Actor-pool sizing for one run, and the read stage's share of the CPUs."""

    actors: int
    num_cpus: float
    num_gpus: float
    threads: int
    # Ray CPUs each read task asks for, and how many may run at once (None: as many as
    # the CPUs left by the pool admit).
    read_cpus: float = 1.0
    read_tasks: int | None = None
    # What the split was sized from (StageCosts as a dict), None = the fixed split.
    costs: dict | None = None

    def describe(self) -> str:
        gpu = f", {self.num_gpus:g} GPU" if self.num_gpus else ""
        text = f"{self.actors} actor(s) × ({self.num_cpus:g} CPU{gpu}, {self.threads} threads)"
        if self.read_tasks:
            text += f", up to {self.read_tasks} read task(s) × {self.read_cpus:g} CPU"
        if self.costs:
            text += f" ({StageCosts(**self.costs).describe()})"
        return text


@dataclass
class RunResult:
    """Per-sample outputs of one run plus what the driver measured (every task)."""

    spec: RunSpec
    predictions: pd.DataFrame
    # Driver clock: the first sample handed to Ray Data → the last result received.
    wall_s: float
    # End to end: the rate of the slower stage while both run (start-up excluded);
    # medray.metrics.performance.pipeline_rates.
    throughput_sps: float
    pool: PoolPlan
    effective_precision: dict
    # Samples that could not be read (data.on_error=skip): sample_id, reason.
    skipped: pd.DataFrame | None = None
    # {"from_previous": n, "processed": n} when resume=true found finished samples.
    resumed: dict | None = None
    # Second copies of samples a retried batch delivered again (identical, dropped).
    n_deduplicated: int = 0
    # Inference-stage capacity: samples / time the actors spent in predict calls.
    inference_sps: float | None = None
    # First sample handed to Ray Data → first predict call (actor start, model load, warm-up).
    startup_s: float | None = None
    # The decoded cache's {"dir", "hits", "misses"} for this run (None: not used).
    read_cache: dict | None = None
