"""task=segmentation: 3D volumes through a sliding window around any backend.

Read stage: one case per block; a CPU task reads and preprocesses it (:mod:`.read`).
Actor: MONAI's ``sliding_window_inference`` with a predictor callable that hands each
batch of ROI windows to ``backend.infer`` (:mod:`.actor`); the argmax mask comes back
compressed (:mod:`.masks`) with Dice per class vs the labels, the summed backend time (the
case's latency) and the whole sliding-window time.  Volumes never come back to the
driver; masks do, so Dice of the candidate vs the baseline, resume parts and remote
outputs need no shared disk.  The driver's document, report sections, plots and files
are :mod:`.document`, :mod:`.markdown`, :mod:`.plots` and :mod:`.predictions`.
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
from medray.tasks.segmentation.read import calibration_windows, read_case_batch

if TYPE_CHECKING:
    from medray.backends.base import Backend
    from medray.data.calibration import CalibrationSource
    from medray.data.table import SampleTable
    from medray.results import RunResult
    from medray.specs import ModelSpec, RunSpec


@dataclass
class SegmentationTask(Task):
    """3D segmentation of volumes (MSD layout) by sliding windows; Dice per class.

    The volume preprocessing is the model's (``ModelSpec.preprocess``), not the task's."""

    # sliding_window config: overlap, mode, sigma_scale (roi = the model's spatial shape).
    sliding: dict = field(default_factory=dict)
    num_classes: int = 2
    modality: list[str] = field(default_factory=list)
    # HD95 and surface Dice (at this tolerance, mm) beside Dice; null = Dice only.
    surface_tolerance_mm: float | None = 2.0

    name: ClassVar[str] = "segmentation"
    unit: ClassVar[str] = "case"
    rate_unit: ClassVar[str] = "cases/s"
    data_description: ClassVar[str] = "3D volumes with voxel labels"
    data_hint: ClassVar[str] = " (data.root=<MSD task folder>, or unset for the synthetic phantoms)"
    data_kinds: ClassVar[tuple[str, ...]] = (VOLUME,)
    identity_columns: ClassVar[tuple[str, ...]] = ("dice", "mask_sha256")
    cache_by_default: ClassVar[bool] = False  # a preprocessed float volume is tens of MB
    # One case is a whole volume through the sliding window: timing one on the driver at one
    # thread would cost as much as the probe saves on a test set of tens of cases.
    cost_probe: ClassVar[bool] = False
    sweep_metrics: ClassVar[tuple[SweepMetric, ...]] = (SweepMetric("dice_mean", "Dice", "max_dice_drop"),)

    # -- config ---------------------------------------------------------------------------
    @classmethod
    def for_config(cls, cfg: RunConfig, table: SampleTable) -> SegmentationTask:
        from medray.data.msd import modalities, read_dataset_json
        from medray.io import as_dict

        return cls(as_dict(cfg.sliding_window), len(table.classes), list(modalities(read_dataset_json(table.root))),
                   cfg.report.surface_tolerance_mm)

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
        from medray.data.msd import VolumeError, check_headers
        from medray.errors import BadSampleError
        from medray.tasks.subgroups import subgroup_columns

        subgroup_columns(cfg, table)  # report.subgroups must name existing columns (before Ray)
        try:
            return check_headers(samples, cfg.data.on_error)
        except VolumeError as e:  # a bad input file: exit 3 with its path, like a bad image
            path, _, reason = str(e).partition(": ")
            raise BadSampleError(path, reason.rsplit("; set data.on_error", 1)[0]) from None

    def resolve_model(self, cfg: RunConfig, table: SampleTable) -> ModelSpec:
        from medray.models.config import ModelRequest
        from medray.models.resolve import resolve_model

        return resolve_model(ModelRequest(cfg.model, cfg.preprocess, cfg.cache_dir, cfg.data.volume,
                                          cfg.sliding_window.roi_size), table)

    def actor_batch(self, spec: RunSpec, block: int) -> int:
        return 1  # one case per actor call

    def split_batch(self, spec: RunSpec) -> int | None:
        return None  # batch_size is windows per backend call, inside the case's sliding window

    def block_size(self, n: int, spec: RunSpec, actors: int, configured: int | None, read_s: float | None = None) -> int:
        return 1

    def calibration(self, cfg: RunConfig, table: SampleTable, samples: pd.DataFrame, model: ModelSpec) -> CalibrationSource:
        from medray.data.calibration import CalibrationSource

        loader = partial(calibration_windows, prep=model.preprocess, roi=tuple(model.spatial),
                         max_windows=cfg.calibration.num_samples, seed=cfg.calibration.seed)
        return CalibrationSource(samples, loader)

    def describe(self, table: SampleTable, samples: pd.DataFrame, model: ModelSpec) -> str:
        n_lab = int((samples["label_path"] != "").sum())
        return (f"dataset {table.name}: {len(samples)} cases evaluated ({n_lab} with labels), {len(table.classes)} labels "
                f"{table.classes}; preprocessing {model.preprocess}")

    # -- read stage -----------------------------------------------------------------
    def read_blocks(self, todo: pd.DataFrame, spec: RunSpec, block: int) -> list[pd.DataFrame]:
        return [todo.iloc[[i]][["sample_id", "path", "label_path"]] for i in range(len(todo))]

    def reader(self, spec: RunSpec):
        return read_case_batch, {"prep": spec.model.preprocess, "num_classes": self.num_classes}

    # -- actor ----------------------------------------------------------------------
    def open(self, spec: RunSpec) -> None:
        import torch

        # MONAI's window slicing and blending run in torch in this process.
        torch.set_num_threads(max(1, spec.threads))

    def segment(self, backend: Backend, spec: RunSpec, image: np.ndarray) -> tuple[np.ndarray, dict]:
        """``image`` ``(C, D, H, W)`` → uint8 mask ``(D, H, W)`` and its timings."""
        return actor.segment(self.sliding, backend, spec, image)

    def predict(self, backend: Backend, spec: RunSpec, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return actor.predict(self.sliding, self.num_classes, self.surface_tolerance_mm, backend, spec, batch)

    def placeholder(self, n: int, spec: RunSpec) -> dict[str, np.ndarray]:
        return actor.placeholder(self.num_classes, n)

    # -- driver, after ----------------------------------------------------------------
    def foreground(self, table: SampleTable) -> list[str]:
        return list(table.classes[1:])

    def run_metrics(self, result: RunResult, table: SampleTable, samples: pd.DataFrame) -> dict[str, Any]:
        return document.run_metrics(result, self.foreground(table), self.surface_tolerance_mm)

    def compare(self, base: RunResult, cand: RunResult, table: SampleTable, samples: pd.DataFrame,
                base_entry: dict, cand_entry: dict) -> dict[str, Any]:
        return document.compare(base, cand, self.foreground(table), base_entry, cand_entry)

    def dataset_section(self, cfg: RunConfig, table: SampleTable, samples: pd.DataFrame,
                        model: ModelSpec | None) -> dict[str, Any]:
        return {
            "task": "segmentation",
            "classes": self.foreground(table),
            "labels": list(table.classes),
            "modality": list(self.modality),
            "n_labelled": int((samples["label_path"] != "").sum()),
            "preprocessing": dict(model.preprocess) if model is not None else {},
        }

    def document_extras(self, cfg: RunConfig, doc: dict, results: list[RunResult], table: SampleTable,
                        samples: pd.DataFrame, validation: RunResult | None = None) -> None:
        document.extras(cfg, doc, results, table, samples)

    def render(self, doc: dict) -> list[str]:
        return markdown.render(doc)

    def write_plots(self, out: str, doc: dict, results: list[RunResult], table: SampleTable,
                    samples: pd.DataFrame) -> dict[str, str]:
        from medray.tasks.segmentation.plots import write_plots

        return write_plots(out, results, samples, self.num_classes)

    def runs_columns(self, r: dict) -> dict[str, str]:
        return markdown.runs_columns(r)

    def write_predictions(self, out: str, result: RunResult, table: SampleTable, samples: pd.DataFrame) -> None:
        predictions.write(out, result, self.foreground(table))

    def repair_validation(self, cfg: RunConfig, table: SampleTable, evaluated: pd.DataFrame, model: ModelSpec,
                          calibration: pd.DataFrame | None = None):
        from medray.tasks.segmentation.repair import repair_validation

        return repair_validation(self, cfg, table, evaluated, model, calibration)

    # -- sweep ------------------------------------------------------------------------
    @classmethod
    def sweep_axes(cls, cfg: RunConfig) -> dict[str, list]:
        # A trial's batch is its windows per backend call (sliding_window.sw_batch_size):
        # sweep.sw_batch_size, else sweep.batch_sizes, is that axis.
        sw, out = cfg.sweep, {}
        if sw.sw_batch_size:
            out["batch_size"] = list(sw.sw_batch_size)
        if sw.overlap:
            out["overlap"] = list(sw.overlap)
        return out

    @classmethod
    def trial_values(cls, cfg: RunConfig, point: dict) -> dict[str, Any]:
        from dataclasses import replace

        return {"batch_size": cfg.batch_size, "sliding_window": replace(
            cfg.sliding_window, overlap=float(point.get("overlap", cfg.sliding_window.overlap)),
            sw_batch_size=int(point.get("sw_batch_size", point["batch_size"])))}

    def statistics(self, cfg: RunConfig, table: SampleTable, samples: pd.DataFrame, base: pd.DataFrame,
                   cand: pd.DataFrame) -> dict[str, Any]:
        return document.statistics(self.sweep_metrics, cfg, base, cand)
