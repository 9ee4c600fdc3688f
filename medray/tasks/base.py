"""The task protocol: what one pipeline needs to know about a kind of evaluation.

The pipeline (``medray.pipeline``) is the same for every task — prepare, read, predict,
collect, metrics, report — and owns everything around it: pool planning, retries,
resume parts, shipping, GPU waits, placement groups, monitoring, URI outputs, exit codes
and the pairing checks.  A task says only:

* config, before anything runs (class hooks, :mod:`medray.config` calls them): the kinds
  of dataset it takes (:attr:`data_kinds`), its own rules (:meth:`check_config`), the
  batch of a backend call (:meth:`backend_batch`);
* driver, before Ray: which samples can be evaluated (:meth:`screen`), the model
  (:meth:`resolve_model`, through :mod:`medray.models`), INT8 calibration inputs
  (:meth:`calibration`);
* the read stage: how samples are grouped into blocks and read (:meth:`read_blocks`,
  :meth:`reader`);
* the actor: what it does around the backend call for a batch of read samples
  (:meth:`predict`) and the blank outputs of rows that were not readable
  (:meth:`placeholder`); which output columns make two deliveries of a sample identical
  (:attr:`identity_columns`);
* the driver, after: a run's metrics, a candidate's comparison with the baseline, the
  dataset section, the report sections and the per-sample predictions file;
* the sweep (:mod:`medray.tune`): the metrics a trial is ranked and constrained on
  (:attr:`sweep_metrics`), its grid axes and trial values (:meth:`sweep_axes`,
  :meth:`trial_values`) and the statistics of the recommendation (:meth:`statistics`),
  so that the sweep never asks which task it runs.

A task object is a plain dataclass: it travels to the actors with the run spec.  The
run config it is given is :class:`medray.config.EvalConfig`, the composition root above
the tasks (not imported here: read as ``RunConfig``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from medray.backends.base import Backend
    from medray.backends.onnx.repair import RepairValidation
    from medray.backends.onnx.search import Gate
    from medray.data.calibration import CalibrationSource
    from medray.data.table import SampleTable
    from medray.results import RunResult
    from medray.specs import ModelSpec, RunSpec

# The composed run config (medray.config.EvalConfig / SweepJobConfig): the composition
# root sits above the tasks, which read it by its attributes.
RunConfig = Any


@dataclass(frozen=True)
class SweepMetric:
    """A metric the sweep reports, tests and may constrain: ``constraint`` is the key of
    ``constraints.*`` bounding its drop vs the baseline (None = reported only)."""

    key: str
    label: str
    constraint: str | None = None


class Task(ABC):
    """One kind of evaluation (classification, segmentation) for the one pipeline."""

    name: ClassVar[str]
    # What one sample is called in logs and reports ("image", "case").
    unit: ClassVar[str] = "sample"
    # Output columns that must be equal for two deliveries of one sample (a retried batch)
    # to be the same prediction.
    identity_columns: ClassVar[tuple[str, ...]] = ()
    # data.cache=auto caches this task's read outputs (medray.data.cache).
    cache_by_default: ClassVar[bool] = True
    # The driver times a few samples through the reader and predict before a CPU run, to
    # split the cores between decoding and inference (medray.pipeline.costs).
    cost_probe: ClassVar[bool] = True
    # The kinds of dataset (medray.data.sources: IMAGE, VOLUME) it evaluates.
    data_kinds: ClassVar[tuple[str, ...]] = ()
    # What its datasets hold, and how to point at one (config error messages).
    data_description: ClassVar[str] = ""
    data_hint: ClassVar[str] = ""
    # Throughput unit in reports ("img/s", "cases/s").
    rate_unit: ClassVar[str] = "samples/s"
    # Sweep: the metrics of its table, the first one primary (the Pareto front's y axis).
    sweep_metrics: ClassVar[tuple[SweepMetric, ...]] = ()
    # Sweep: the key of a candidate's worst_subgroup change that
    # constraints.max_subgroup_auc_drop bounds (None = no subgroup constraint).
    subgroup_delta: ClassVar[str | None] = None
    # The metrics a published value (model.expected) is checked on (:meth:`metric_ci`).
    expected_metrics: ClassVar[tuple[str, ...]] = ()

    # -- config, before anything runs ---------------------------------------------------
    @classmethod
    def for_config(cls, cfg: RunConfig, table: SampleTable) -> Task:
        """The task object of a run on ``table``."""
        return cls()

    @classmethod
    def check_config(cls, cfg: RunConfig) -> None:
        """The task's own rules on the composed config (ConfigError naming the key)."""
        return None

    @classmethod
    def check_expected(cls, cfg: RunConfig) -> None:
        """``model.expected`` names metrics this task checks a published value on."""
        unknown = sorted(set(cfg.model.expected) - set(cls.expected_metrics))
        if unknown:
            from medray.errors import fail

            fail("model.expected", dict(cfg.model.expected), f"task={cls.name} checks a published "
                 f"{' / '.join(cls.expected_metrics) or 'metric on none'}; not {', '.join(unknown)}")

    @classmethod
    def backend_batch(cls, cfg: RunConfig) -> int:
        """Inputs per backend call (``RunSpec.batch_size``)."""
        return cfg.batch_size

    # -- driver, before Ray ---------------------------------------------------------
    @abstractmethod
    def screen(self, cfg: RunConfig, table: SampleTable, samples: pd.DataFrame) -> pd.DataFrame:
        """``samples`` with a ``problem`` column ("" = fine); raises BadSampleError for the
        first bad one with ``data.on_error=fail``."""

    @abstractmethod
    def resolve_model(self, cfg: RunConfig, table: SampleTable) -> ModelSpec:
        """The model the actors load, checked against the dataset (trains a demo if needed)."""

    def actor_batch(self, spec: RunSpec, block: int) -> int:
        """Read samples per actor call (``map_batches``' batch size): one read block, which
        the Predictor splits into backend calls of :meth:`split_batch` samples."""
        return block

    def split_batch(self, spec: RunSpec) -> int | None:
        """Samples per backend call inside one actor call; None = the whole call at once."""
        return spec.batch_size

    def block_size(self, n: int, spec: RunSpec, actors: int, configured: int | None, read_s: float | None = None) -> int:
        """Samples per read task (``configured``: data.read_block_size; ``read_s``: one
        sample's measured read cost, when known)."""
        return configured or spec.batch_size

    @abstractmethod
    def calibration(self, cfg: RunConfig, table: SampleTable, samples: pd.DataFrame, model: ModelSpec) -> CalibrationSource:
        """INT8 calibration inputs from ``samples`` (a split disjoint from the evaluated one)."""

    def describe(self, table: SampleTable, samples: pd.DataFrame, model: ModelSpec) -> str:
        """One log line about the evaluated samples."""
        return f"dataset {table.name}: {len(samples)} {self.unit}s evaluated ({table.task})"

    def validation_samples(self, cfg: RunConfig, table: SampleTable, samples: pd.DataFrame) -> pd.DataFrame | None:
        """Samples of another split the baseline also scores (e.g. to choose a threshold
        there, not on the test set); None = no such run."""
        return None

    # -- read stage (CPU tasks) -----------------------------------------------------
    @abstractmethod
    def read_blocks(self, todo: pd.DataFrame, spec: RunSpec, block: int) -> list[pd.DataFrame]:
        """The blocks of samples handed to the read tasks (``block``: :meth:`block_size`)."""

    @abstractmethod
    def reader(self, spec: RunSpec) -> tuple[Callable, dict[str, Any]]:
        """The read function and its keyword arguments. It must mark unreadable rows with a
        ``skipped_reason`` instead of raising (the driver applies data.on_error)."""

    # -- actor ----------------------------------------------------------------------
    def open(self, spec: RunSpec) -> None:
        """Per-actor set-up after the backend is loaded (none by default)."""
        return None

    @abstractmethod
    def predict(self, backend: Backend, spec: RunSpec, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Outputs of readable rows: per-row columns, including ``batch_ms`` (backend time
        charged to the row's batch) and ``batch_size`` (samples sharing that time)."""

    @abstractmethod
    def placeholder(self, n: int, spec: RunSpec) -> dict[str, np.ndarray]:
        """Outputs of ``n`` rows that could not be read: the columns of :meth:`predict`, blank."""

    # -- driver, after ----------------------------------------------------------------
    def begin_document(self, cfg: RunConfig, table: SampleTable, samples: pd.DataFrame, results: list[RunResult],
                       validation: RunResult | None = None) -> None:
        """Before any run's metrics: decisions every run shares (e.g. the operating
        threshold, chosen on ``validation``); nothing by default."""
        return None

    @abstractmethod
    def run_metrics(self, result: RunResult, table: SampleTable, samples: pd.DataFrame) -> dict[str, Any]:
        """Keys of the run's ``runs[]`` entry that depend on the task (``metrics`` at least)."""

    @abstractmethod
    def compare(self, base: RunResult, cand: RunResult, table: SampleTable, samples: pd.DataFrame,
                base_entry: dict, cand_entry: dict) -> dict[str, Any]:
        """A candidate's ``agreement`` and ``metric_deltas`` against the baseline."""

    @abstractmethod
    def dataset_section(self, cfg: RunConfig, table: SampleTable, samples: pd.DataFrame, model: ModelSpec | None) -> dict[str, Any]:
        """Task keys of the ``dataset`` section of metrics.json."""

    def document_extras(self, cfg: RunConfig, doc: dict, results: list[RunResult], table: SampleTable,
                        samples: pd.DataFrame, validation: RunResult | None = None) -> None:
        """Add task sections to the metrics document (per-case table...); none by default.
        ``validation``: the baseline's run on the validation split, when the task asked for
        one (:meth:`validation_samples`)."""
        return None

    def metric_ci(self, result: RunResult, table: SampleTable, samples: pd.DataFrame, entry: dict, metric: str,
                  n_boot: int, confidence: float) -> dict[str, Any]:
        """The run's ``metric`` (one of :attr:`expected_metrics`) on its samples with its
        percentile bootstrap CI: ``estimate``, ``ci``, ``n``, ``resampling``."""
        raise NotImplementedError(f"task {self.name} checks no published metric")

    @abstractmethod
    def render(self, doc: dict) -> list[str]:
        """report.md lines of the task (title, main table, task sections)."""

    @abstractmethod
    def runs_columns(self, run: dict) -> dict[str, str]:
        """The task's latency cells of a run's row in report.md's runs table."""

    def write_plots(self, out: str, doc: dict, results: list[RunResult], table: SampleTable,
                    samples: pd.DataFrame) -> dict[str, str]:
        """PNGs under ``out``; ``{name: relative file}`` (none by default)."""
        return {}

    @abstractmethod
    def write_predictions(self, out: str, result: RunResult, table: SampleTable, samples: pd.DataFrame) -> None:
        """``predictions/<run>.parquet`` (and any per-sample files) under ``out``."""

    # -- sweep (medray.tune) ------------------------------------------------------------
    @classmethod
    def sweep_axes(cls, cfg: RunConfig) -> dict[str, list]:
        """The grid's axes beyond run / batch_size / streams (and changes to them), from
        ``cfg.sweep``; none by default."""
        return {}

    @classmethod
    def trial_values(cls, cfg: RunConfig, point: dict) -> dict[str, Any]:
        """Fields of the trial's EvalConfig that a grid point sets besides backend,
        precision, batch size and streams; none by default."""
        return {}

    def statistics(self, cfg: RunConfig, table: SampleTable, samples: pd.DataFrame, base: pd.DataFrame,
                   cand: pd.DataFrame) -> dict[str, Any]:
        """Bootstrap CIs, paired tests and non-inferiority of the recommended trial's
        :attr:`sweep_metrics` vs the baseline (``base``/``cand``: their predictions)."""
        return {}

    # -- INT8 repair (medray.backends.onnx.repair) -----------------------------------------
    @classmethod
    def check_repair(cls, cfg: RunConfig) -> None:
        """quantization.* limits the task can judge (ConfigError naming the key)."""
        from medray.errors import fail

        q = cfg.quantization
        if not q.repair:
            return
        keys = [m.key for m in cls.sweep_metrics]
        for k in q.limits:
            if k not in keys:
                fail(f"quantization.limits.{k}", q.limits[k], f"task={cls.name} is judged on {', '.join(keys)}")
        if q.max_subgroup_drop is not None and not cls.subgroup_delta:
            fail("quantization.max_subgroup_drop", q.max_subgroup_drop, f"task={cls.name} has no subgroup metric; remove it")

    def repair_gates(self, cfg: RunConfig) -> list[Gate]:
        """The repair's limits on the task's own metrics: ``quantization.max_drop`` /
        ``min_ratio`` / ``max_subgroup_drop`` on the first of :attr:`sweep_metrics`, and
        ``quantization.limits`` (the sweep's constraints) on any of them."""
        from medray.backends.onnx.search import Gate

        q, primary = cfg.quantization, self.sweep_metrics[0].key
        gates = [Gate(primary, max_drop=q.max_drop, key="quantization.max_drop")] if q.max_drop is not None else []
        if q.min_ratio is not None:
            gates.append(Gate(primary, min_ratio=q.min_ratio, key="quantization.min_ratio"))
        gates += [Gate(k, max_drop=float(v), key=f"quantization.limits.{k}") for k, v in q.limits.items()]
        if q.max_subgroup_drop is not None:
            gates.append(Gate(primary, max_drop=q.max_subgroup_drop, subgroups=True, key="quantization.max_subgroup_drop"))
        return gates

    def repair_samples(self, cfg: RunConfig, table: SampleTable, evaluated: pd.DataFrame,
                       calibration: pd.DataFrame | None) -> tuple[pd.DataFrame, int]:
        """The repair's validation samples and how many of them also calibrate: from
        ``quantization.repair_split`` (null: the calibration split), never the evaluated
        ones; the calibration samples are left out when at least 100 others remain."""
        from medray.data.load import calibration_samples

        q = cfg.quantization
        pool = calibration_samples(table, q.repair_split or cfg.calibration.split, 10**12, cfg.data.seed, evaluated,
                                   cfg.data.split)
        if calibration is not None:
            rest = pool[~pool["sample_id"].isin(set(calibration["sample_id"]))]
            if len(rest) >= min(100, q.repair_samples or 10**12):
                pool = rest
        if q.repair_samples is not None and q.repair_samples < len(pool):
            pool = pool.sample(n=q.repair_samples, random_state=cfg.data.seed).sort_values("sample_id")
        pool = pool.reset_index(drop=True)
        overlap = 0 if calibration is None else int(pool["sample_id"].isin(set(calibration["sample_id"])).sum())
        return pool, overlap

    def repair_validation(self, cfg: RunConfig, table: SampleTable, evaluated: pd.DataFrame, model: ModelSpec,
                          calibration: pd.DataFrame | None = None) -> RepairValidation | None:
        """The repair's validation samples, how to load and score them with the task's metric
        (:class:`~medray.backends.onnx.repair.ValidationData`) and its limits; None = this
        task cannot judge a repair."""
        return None
