"""The sweep's options: the grid and how Tune walks it (``sweep.*``), what a recommendation
may cost clinically (``constraints.*``), and the sweep job's root config (the evaluate
config it shares with every trial, plus these)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from medray.backends import REGISTRY, config_class
from medray.backends.config import DEVICES, PRECISIONS, BackendConfig
from medray.config import EvalConfig, default_baseline
from medray.errors import fail as _fail
from medray.specs import RunName

SWEEP_OBJECTIVES = ("throughput", "capacity", "latency", "latency_p95")
# A sweep cell "int8+repair": INT8 with quantization.repair=true, its limits the constraints.
REPAIR_CELL = "+repair"


def cell_precision(value: str) -> tuple[str, bool]:
    """``"int8+repair"`` → ``("int8", True)``; ``"fp16"`` → ``("fp16", False)``."""
    base, plus, variant = str(value).partition("+")
    return (base, True) if plus and f"+{variant}" == REPAIR_CELL else (str(value), False)
SWEEP_SEARCHES = ("grid", "random", "optuna")
SWEEP_SCHEDULERS = ("fifo", "asha")


@dataclass
class SweepConfig:
    """The `sweep` config group (conf/sweep/*.yaml): the grid and how Tune walks it."""

    # Device of every trial (and of the baseline); null = the root `device`.
    device: str | None = None
    # backend -> precisions tried with it; a pair the hardware does not support becomes a
    # failed trial with the validation message (the sweep goes on).
    backends: dict[str, list[str]] = field(default_factory=lambda: {"torch": ["fp32"], "onnxruntime": ["fp32"]})
    # backend -> options of its config class (e.g. onnxruntime: {graph_optimization: all}).
    backend_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    batch_sizes: list[int] = field(default_factory=lambda: [16, 64])
    streams: list[int] = field(default_factory=lambda: [1])
    # task=segmentation only: sliding_window.overlap / sliding_window.sw_batch_size values.
    overlap: list[float] = field(default_factory=list)
    sw_batch_size: list[int] = field(default_factory=list)
    # task=segmentation, model=nnunet: model.mirroring values (e.g. [true, false]).
    mirroring: list[bool] = field(default_factory=list)
    # Every trial and the baseline evaluate the same random subset of this many samples
    # (null = data.limit, i.e. the whole split unless that is set).
    limit: int | None = 256
    # What the recommendation maximises among the configs that meet `constraints`:
    # throughput (end-to-end samples/s) | capacity (inference-stage samples/s, what the
    # backend takes if fed) | latency (per-sample p50) | latency_p95.
    objective: str = "throughput"
    # grid = every combination (Tune's BasicVariantGenerator); random = num_samples draws;
    # optuna = OptunaSearch (pip install optuna) over num_samples trials.
    search: str = "grid"
    # grid: repeats of the whole grid; random/optuna: trials drawn.
    num_samples: int = 1
    # fifo = run every trial to the end; asha = stop slow trials early (ASHA on the
    # running throughput, reported every `report_every` batches).
    scheduler: str = "fifo"
    report_every: int = 2
    # null = as many trials at once as the cluster holds (each trial reserves its actors
    # and a read CPU in a placement group); 1 on a one-node machine.
    max_concurrent_trials: int | None = None
    # Continue the interrupted sweep in output_dir (Tuner.restore): finished trials are kept.
    resume: bool = False
    seed: int = 0
    # Statistics of the recommended config vs the baseline.
    bootstrap_samples: int = 2000
    confidence: float = 0.95

    def __post_init__(self) -> None:
        if self.device is not None and self.device not in DEVICES:
            _fail("sweep.device", self.device, f"use one of {', '.join(DEVICES)} or null (the root device)")
        self._check_grid()
        if self.limit is not None and self.limit < 1:
            _fail("sweep.limit", self.limit, "use a positive number of samples, or null for data.limit")
        for key, allowed in (("objective", SWEEP_OBJECTIVES), ("search", SWEEP_SEARCHES), ("scheduler", SWEEP_SCHEDULERS)):
            if getattr(self, key) not in allowed:
                _fail(f"sweep.{key}", getattr(self, key), f"use one of {', '.join(allowed)}")
        if self.num_samples < 1:
            _fail("sweep.num_samples", self.num_samples, "use a positive number of trials / grid repeats")
        if self.report_every < 1:
            _fail("sweep.report_every", self.report_every, "use a positive number of batches")
        if self.max_concurrent_trials is not None and self.max_concurrent_trials < 1:
            _fail("sweep.max_concurrent_trials", self.max_concurrent_trials, "use a positive number or null (automatic)")
        if self.bootstrap_samples < 100:
            _fail("sweep.bootstrap_samples", self.bootstrap_samples, "use at least 100 resamples (2000 is usual)")
        if not 0.5 < self.confidence < 1:
            _fail("sweep.confidence", self.confidence, "use a level in (0.5, 1), e.g. 0.95")

    def _check_grid(self) -> None:
        """The grid's axes: registered backends with their precisions and options, positive
        batch sizes / streams, overlaps in [0, 1)."""
        if not self.backends:
            _fail("sweep.backends", self.backends, "list at least one backend with its precisions, e.g. {torch: [fp32]}")
        for name, precisions in self.backends.items():
            if name not in REGISTRY:
                _fail("sweep.backends", name, f"available backends: {', '.join(sorted(REGISTRY))}")
            if not precisions:
                _fail(f"sweep.backends.{name}", precisions, "list at least one precision, e.g. [fp32]")
            for p in precisions:
                base, repair = cell_precision(p)
                if base not in PRECISIONS or (repair and base != "int8"):
                    _fail(f"sweep.backends.{name}", p, f"precisions are {', '.join(PRECISIONS)}, and int8{REPAIR_CELL} "
                          "(the INT8 repair)")
                if repair and not config_class(name).REPAIR:
                    _fail(f"sweep.backends.{name}", p, f"backend={name} cannot keep INT8 layers in float; use "
                          f"int8{REPAIR_CELL} with " + "|".join(n for n in REGISTRY if config_class(n).REPAIR))
        for name, opts in self.backend_options.items():
            if name not in self.backends:
                _fail("sweep.backend_options", name, f"options for a backend not in sweep.backends ({', '.join(self.backends)})")
            config_class(name)(**dict(opts))  # the backend's own validation
        for key in ("batch_sizes", "streams", "sw_batch_size"):
            values = getattr(self, key)
            if key != "sw_batch_size" and not values:
                _fail(f"sweep.{key}", values, "list at least one value")
            if any(int(v) < 1 for v in values):
                _fail(f"sweep.{key}", values, "use positive integers")
        if any(not 0 <= v < 1 for v in self.overlap):
            _fail("sweep.overlap", self.overlap, "use fractions in [0, 1), e.g. [0.25, 0.5]")

    def pairs(self) -> list[str]:
        """``<backend>-<precision>`` of the grid, in config order."""
        return [str(RunName(b, p)) for b, ps in self.backends.items() for p in ps]


@dataclass
class ConstraintsConfig:
    """What a configuration may cost clinically to be recommended (null = no limit).

    Drops are baseline − candidate, as fractions (0.005 = half a point of AUC); the
    AUC / Dice limits are also the non-inferiority margins of the statistics.
    """

    max_auc_drop: float | None = 0.005
    max_bacc_drop: float | None = None
    # Top-1 (multilabel: per-label decision) agreement with the baseline.
    min_agreement: float | None = 0.99
    max_dice_drop: float | None = 0.01
    # Mean Dice relative to the baseline's: 0.001 = MLPerf 3D-UNet's 99.9 % rule (the
    # candidate's mean Dice at least 99.9 % of the fp32 baseline's); null = no limit.
    max_relative_dice_drop: float | None = None
    # The largest AUC drop allowed in any subgroup of report.subgroups (null = no limit).
    max_subgroup_auc_drop: float | None = None
    # Samples with NaN/inf outputs a recommended configuration may have (scored as wrong
    # answers anyway); null = any number.
    max_nonfinite: int | None = 0

    def __post_init__(self) -> None:
        if self.max_nonfinite is not None and self.max_nonfinite < 0:
            _fail("constraints.max_nonfinite", self.max_nonfinite, "use 0 (no NaN/inf output allowed), a count, or null")
        for key in ("max_auc_drop", "max_bacc_drop", "max_dice_drop", "max_relative_dice_drop", "max_subgroup_auc_drop"):
            v = getattr(self, key)
            if v is not None and not 0 <= v <= 1:
                _fail(f"constraints.{key}", v, "use a fraction in [0, 1] (0.005 = half a point), or null for no limit")
        if self.min_agreement is not None and not 0 <= self.min_agreement <= 1:
            _fail("constraints.min_agreement", self.min_agreement, "use a fraction in [0, 1] (e.g. 0.99), or null")


@dataclass
class SweepJobConfig(EvalConfig):
    """Root config of ``jobs/sweep.py``: the evaluate config plus the grid and constraints.

    The root ``backend``/``precision`` are set from ``baseline`` (the root is the shared
    baseline run: its ``batch_size`` and ``streams`` are the baseline's); every trial is
    the root with the grid's backend, precision, batch size and streams.
    """

    sweep: SweepConfig = field(default_factory=SweepConfig)
    constraints: ConstraintsConfig = field(default_factory=ConstraintsConfig)

    def __post_init__(self) -> None:
        if self.baseline is None:
            _fail("baseline", None, "a sweep compares every trial with the baseline; set baseline=<backend>-<precision>, e.g. torch-fp32")
        if self.resume:
            _fail("resume", True, "to continue an interrupted sweep use sweep.resume=true (with the same output_dir)")
        if self.threshold.method != "fixed":
            _fail("threshold.method", self.threshold.method, "a sweep ranks trials at a fixed threshold; choose the "
                  "threshold with jobs/evaluate.py on the recommended configuration")
        if self.baseline == "auto":
            self.baseline = default_baseline(self.model)
        name, precision = RunName.parse(self.baseline)
        if name not in REGISTRY:
            _fail("baseline", self.baseline, f"available backends: {', '.join(sorted(REGISTRY))}")
        if not (isinstance(self.backend, BackendConfig) and self.backend.name == name):
            self.backend = config_class(name)(**dict(self.sweep.backend_options.get(name, {})))
        self.precision = precision
        if self.sweep.device is not None:
            self.device = self.sweep.device
        super().__post_init__()


# --------------------------------------------------------------------------- Hydra glue


def register() -> None:
    """The sweep's schemas in Hydra's ConfigStore (with :func:`medray.config.register_configs`)."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="sweep_schema", node=SweepJobConfig)
    cs.store(group="schema/sweep", name="sweep", node=SweepConfig)
