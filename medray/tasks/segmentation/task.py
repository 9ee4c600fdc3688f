"""task=segmentation: 3D volumes through a sliding window around any backend.

What runs around the network is the model's own contract, its recipe
(:mod:`medray.models.recipes`, chosen by ``ModelSpec.recipe``): MONAI's transforms and
``sliding_window_inference`` for medray's UNets, nnU-Net's preprocessing, predictor and
export for ``model=nnunet``.  Read stage: one case per block; a CPU task reads and
preprocesses it with the recipe (:mod:`.read`).  Actor: the recipe's windows with the
backend's sessions as network calls (:mod:`.actor`); the mask in the original geometry
comes back compressed (:mod:`.masks`) with TP/FP/FN, Dice and IoU per label or region vs
the labels, the summed backend time (the case's latency), the whole segmentation time and
the actor's peak memory.  Volumes never come back to the driver; masks do, so Dice of
the candidate vs the baseline, resume parts and remote outputs need no shared disk.  The
driver's document, report sections, plots and files are :mod:`.document`,
:mod:`.markdown`, :mod:`.plots` and :mod:`.predictions`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pandas as pd

from medray.data.sources import VOLUME
from medray.tasks.base import RunConfig, SweepMetric, Task
from medray.tasks.segmentation import actor, document, markdown, predictions
from medray.tasks.segmentation.read import CASE_COLUMNS, read_case_batch

if TYPE_CHECKING:
    from medray.backends.base import Backend
    from medray.data.calibration import CalibrationSet, CalibrationSource
    from medray.data.table import SampleTable
    from medray.results import RunResult
    from medray.specs import ModelSpec, RunSpec


def calibrate(samples: pd.DataFrame, model: ModelSpec, settings: dict, max_windows: int, seed: int) -> CalibrationSet:
    """INT8 calibration windows of ``samples``, made by the model's recipe."""
    from medray.models.recipes import recipe_of

    return recipe_of(model).calibration(model, settings, samples, max_windows, seed)


@dataclass
class SegmentationTask(Task):
    """3D segmentation of volumes by the model's recipe; Dice, IoU, HD95 per label or region.

    The preprocessing and the windows are the model's (``ModelSpec.preprocess``, its
    recipe), not the task's."""

    # sliding_window.* and model.mirroring as configured (null = the model's own).
    sliding: dict = field(default_factory=dict)
    # The foreground labels or regions evaluated: their names and label values.
    classes: list[str] = field(default_factory=list)
    regions: list[tuple[int, ...]] = field(default_factory=list)
    ignore_label: int | None = None
    modality: list[str] = field(default_factory=list)
    # HD95 and surface Dice (at this tolerance, mm) beside Dice; null = Dice only.
    surface_tolerance_mm: float | None = 2.0
    # The window settings the model's recipe resolved from ``sliding`` (resolve_model).
    settings: dict = field(default_factory=dict)

    name: ClassVar[str] = "segmentation"
    unit: ClassVar[str] = "case"
    rate_unit: ClassVar[str] = "cases/s"
    data_description: ClassVar[str] = "3D volumes with voxel labels"
    data_hint: ClassVar[str] = (" (data.root=<MSD task folder>, or unset for the synthetic phantoms; data=nnunet "
                                 "data.root=<nnU-Net raw DatasetXXX folder>)")
    data_kinds: ClassVar[tuple[str, ...]] = (VOLUME,)
    identity_columns: ClassVar[tuple[str, ...]] = ("dice", "mask_sha256")
    cache_by_default: ClassVar[bool] = False  # a preprocessed float volume is tens of MB
    # One case is a whole volume through the sliding window: timing one on the driver at one
    # thread would cost as much as the probe saves on a test set of tens of cases.
    cost_probe: ClassVar[bool] = False
    # Dice (absolute drop: constraints.max_dice_drop) and Dice relative to the baseline's
    # (MLPerf 3D-UNet's 99.9 % rule: constraints.max_relative_dice_drop=0.001).
    expected_metrics: ClassVar[tuple[str, ...]] = ("dice_mean",)
    sweep_metrics: ClassVar[tuple[SweepMetric, ...]] = (
        SweepMetric("dice_mean", "Dice", "max_dice_drop"),
        SweepMetric("dice_relative", "Dice / baseline's", "max_relative_dice_drop"),
    )

    # -- config ---------------------------------------------------------------------------
    @classmethod
    def for_config(cls, cfg: RunConfig, table: SampleTable) -> SegmentationTask:
        from medray.io import as_dict

        values = table.label_values()
        fg = list(table.classes[1:])
        return cls({**as_dict(cfg.sliding_window), "mirroring": cfg.model.mirroring}, fg, [values[c] for c in fg],
                   table.ignore_label, list(table.channels), cfg.report.surface_tolerance_mm)

    @classmethod
    def check_config(cls, cfg: RunConfig) -> None:
        from medray.errors import fail

        if cfg.threshold.method != "fixed":
            fail("threshold.method", cfg.threshold.method, "a decision threshold is for task=classification; remove it")
        if cfg.tta != "none":
            fail("tta", cfg.tta, f"test-time augmentation is for task=classification; use tta=none with task={cls.name}")
        if cfg.quantization.max_drop is not None and not cfg.quantization.repair:
            fail("quantization.max_drop", cfg.quantization.max_drop,
                 "accuracy-controlled quantization measures macro-AUC (classification); remove it for task=segmentation, "
                 "or add quantization.repair=true (its limit is then the Dice drop)")

    @classmethod
    def backend_batch(cls, cfg: RunConfig) -> int:
        return cfg.sliding_window.sw_batch_size  # windows per backend call

    # -- driver, before Ray ---------------------------------------------------------
    def screen(self, cfg: RunConfig, table: SampleTable, samples: pd.DataFrame) -> pd.DataFrame:
        from medray.data.volumes import VolumeError, check_headers
        from medray.errors import BadSampleError
        from medray.tasks.subgroups import subgroup_columns

        subgroup_columns(cfg, table)  # report.subgroups must name existing columns (before Ray)
        try:
            return check_headers(samples, cfg.data.on_error)
        except VolumeError as e:  # a bad input file: exit 3 with its path, like a bad image
            path, _, reason = str(e).partition(": ")
            raise BadSampleError(path, reason.rsplit("; set data.on_error", 1)[0]) from None

    def resolve_model(self, cfg: RunConfig, table: SampleTable) -> ModelSpec:
        """The model (through :mod:`medray.models`) and the window settings its recipe resolves."""
        from medray.models.config import ModelRequest
        from medray.models.recipes import recipe_of
        from medray.models.resolve import resolve_model

        spec = resolve_model(ModelRequest(cfg.model, cfg.preprocess, cfg.cache_dir, cfg.data.volume,
                                          cfg.sliding_window.roi_size), table)
        self.settings = recipe_of(spec).settings(spec, self.sliding)
        if not self.classes:  # a dataset that left its label names to the model (data=datalist)
            values = table.label_values()
            self.classes = list(table.classes[1:])
            self.regions = [values[c] for c in self.classes]
        return spec

    def actor_batch(self, spec: RunSpec, block: int) -> int:
        return 1  # one case per actor call

    def split_batch(self, spec: RunSpec) -> int | None:
        return None  # batch_size is windows per backend call, inside the case's sliding window

    def block_size(self, n: int, spec: RunSpec, actors: int, configured: int | None, read_s: float | None = None) -> int:
        return 1

    def calibration(self, cfg: RunConfig, table: SampleTable, samples: pd.DataFrame, model: ModelSpec) -> CalibrationSource:
        from medray.data.calibration import CalibrationSource

        return CalibrationSource(samples, partial(calibrate, model=model, settings=self.settings,
                                                  max_windows=cfg.calibration.num_samples, seed=cfg.calibration.seed))

    def describe(self, table: SampleTable, samples: pd.DataFrame, model: ModelSpec) -> str:
        n_lab = int((samples["label_path"] != "").sum())
        return (f"dataset {table.name}: {len(samples)} cases evaluated ({n_lab} with labels), {len(table.classes)} labels "
                f"{table.classes}; model recipe {model.recipe or 'monai'}, windows {self.settings}")

    # -- read stage -----------------------------------------------------------------
    def read_blocks(self, todo: pd.DataFrame, spec: RunSpec, block: int) -> list[pd.DataFrame]:
        cols = [c for c in CASE_COLUMNS if c in todo.columns]
        return [todo.iloc[[i]][cols] for i in range(len(todo))]

    def reader(self, spec: RunSpec):
        return read_case_batch, {"model": spec.model, "settings": self.settings_for(spec.model)}

    def settings_for(self, model: ModelSpec) -> dict:
        """The window settings of ``model`` (resolved once by :meth:`resolve_model`; a task
        made from a config without resolving asks the recipe here)."""
        from medray.models.recipes import recipe_of

        if not self.settings:
            self.settings = recipe_of(model).settings(model, self.sliding)
        return self.settings

    # -- actor ----------------------------------------------------------------------
    def open(self, spec: RunSpec) -> None:
        import torch

        from medray.models.recipes import recipe_of

        # The windows' slicing and blending run in torch in this process.
        torch.set_num_threads(max(1, spec.threads))
        # One-time set-up (a bundle's configs parsed, its transforms built) belongs to start-up,
        # not to the first case's segmentation time.
        recipe_of(spec.model).open(spec.model, self.settings_for(spec.model))
        actor.warm_metrics(self)

    def segment(self, backend: Backend, spec: RunSpec, image: np.ndarray, geometry: bytes) -> tuple[np.ndarray, dict]:
        """``image`` (the network's input volume) → the label map and its timings."""
        return actor.segment(self.settings_for(spec.model), backend, spec, image, geometry)

    def predict(self, backend: Backend, spec: RunSpec, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.settings_for(spec.model)
        return actor.predict(self, backend, spec, batch)

    def placeholder(self, n: int, spec: RunSpec) -> dict[str, np.ndarray]:
        return actor.placeholder(len(self.regions), n)

    # -- driver, after ----------------------------------------------------------------
    def labels(self, table: SampleTable) -> tuple[list[str], list[tuple[int, ...]]]:
        """The foreground labels or regions and their values (a plain task: the table's)."""
        if self.classes:
            return list(self.classes), list(self.regions)
        values = table.label_values()
        return list(table.classes[1:]), [values[c] for c in table.classes[1:]]

    def run_metrics(self, result: RunResult, table: SampleTable, samples: pd.DataFrame) -> dict[str, Any]:
        return document.run_metrics(result, self.labels(table)[0], self.surface_tolerance_mm)

    def metric_ci(self, result: RunResult, table: SampleTable, samples: pd.DataFrame, entry: dict, metric: str,
                  n_boot: int, confidence: float) -> dict[str, Any]:
        """Mean Dice (each labelled case's mean, then over cases) with a bootstrap CI over cases."""
        from medray.metrics.segmentation import case_mean
        from medray.metrics.statistics import Comparison, metric_ci

        df = result.predictions
        df = df[df["has_label"].astype(bool)] if len(df) else df
        v = np.array([case_mean(d) for d in df["dice"]], dtype=np.float64) if len(df) else np.zeros(0)
        return metric_ci(np.zeros(len(v)), v, self.name, "mean", Comparison(n_boot=n_boot, confidence=confidence))

    def compare(self, base: RunResult, cand: RunResult, table: SampleTable, samples: pd.DataFrame,
                base_entry: dict, cand_entry: dict) -> dict[str, Any]:
        return document.compare(base, cand, *self.labels(table), base_entry, cand_entry)

    def dataset_section(self, cfg: RunConfig, table: SampleTable, samples: pd.DataFrame,
                        model: ModelSpec | None) -> dict[str, Any]:
        return {
            "task": "segmentation",
            "classes": self.labels(table)[0],
            "labels": list(table.classes),
            "label_values": {c: list(v) for c, v in zip(*self.labels(table))},
            "modality": list(self.modality),
            "n_labelled": int((samples["label_path"] != "").sum()),
            "recipe": (model.recipe if model is not None else None) or "monai",
            "preprocessing": dict(model.preprocess) if model is not None else {},
        }

    def document_extras(self, cfg: RunConfig, doc: dict, results: list[RunResult], table: SampleTable,
                        samples: pd.DataFrame, validation: RunResult | None = None) -> None:
        document.extras(cfg, doc, results, table, samples, self.settings)

    def render(self, doc: dict) -> list[str]:
        return markdown.render(doc)

    def write_plots(self, out: str, doc: dict, results: list[RunResult], table: SampleTable,
                    samples: pd.DataFrame) -> dict[str, str]:
        from medray.tasks.segmentation.plots import write_plots

        return write_plots(out, results, samples, self.settings_for(results[0].spec.model) if results else {})

    def runs_columns(self, r: dict) -> dict[str, str]:
        return markdown.runs_columns(r)

    def write_predictions(self, out: str, result: RunResult, table: SampleTable, samples: pd.DataFrame) -> None:
        predictions.write(out, result, self.labels(table)[0])

    def repair_validation(self, cfg: RunConfig, table: SampleTable, evaluated: pd.DataFrame, model: ModelSpec,
                          calibration: pd.DataFrame | None = None):
        from medray.tasks.segmentation.repair import repair_validation

        return repair_validation(self, cfg, table, evaluated, model, calibration)

    # -- sweep ------------------------------------------------------------------------
    @classmethod
    def sweep_axes(cls, cfg: RunConfig) -> dict[str, list]:
        # A trial's batch is its windows per backend call (sliding_window.sw_batch_size):
        # sweep.sw_batch_size, else sweep.batch_sizes, is that axis; the tile overlap and
        # mirroring (model.mirroring) are axes of their own.
        sw, out = cfg.sweep, {}
        if sw.sw_batch_size:
            out["batch_size"] = list(sw.sw_batch_size)
        if sw.overlap:
            out["overlap"] = list(sw.overlap)
        if sw.mirroring:
            out["mirroring"] = [bool(v) for v in sw.mirroring]
        return out

    @classmethod
    def trial_values(cls, cfg: RunConfig, point: dict) -> dict[str, Any]:
        from dataclasses import replace

        out = {"batch_size": cfg.batch_size, "sliding_window": replace(
            cfg.sliding_window, overlap=point.get("overlap", cfg.sliding_window.overlap),
            sw_batch_size=int(point.get("sw_batch_size", point["batch_size"])))}
        if "mirroring" in point:
            out["model"] = replace(cfg.model, mirroring=bool(point["mirroring"]))
        return out

    def statistics(self, cfg: RunConfig, table: SampleTable, samples: pd.DataFrame, base: pd.DataFrame,
                   cand: pd.DataFrame) -> dict[str, Any]:
        # The bootstrap is of mean Dice (the absolute drop and its margin).
        return document.statistics(self.sweep_metrics[:1], cfg, base, cand)
