"""Segmentation's side of the INT8 repair: the labelled validation cases, segmented by the
model's own recipe (its preprocessing, windows and way back to the original geometry) around
the candidate network, judged by mean Dice (the task's metric;
``quantization.min_ratio=0.999`` is MLPerf's 99.9 % rule).  A model of several networks
(nnU-Net's folds) is repaired member by member, each judged by its own masks."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from medray.backends.onnx.repair import RepairValidation
    from medray.data.table import SampleTable
    from medray.specs import ModelSpec
    from medray.tasks.base import RunConfig


@dataclass
class SegmentationValidation:
    """Labelled validation cases read by the model's recipe; :meth:`score` = mean Dice of the
    masks the recipe makes around a candidate network, in the masks' geometry, as the run
    scores them (nnU-Net's overlap counts per label or region, the ignore label left out)."""

    cases: list[dict]  # the recipe's read: image, label, geometry
    inputs: np.ndarray  # windows as the network sees them (the proxy, the speed check)
    model: ModelSpec  # one network: a model of several (nnU-Net's folds) is repaired per member
    settings: dict
    classes: list[str]
    regions: list[tuple[int, ...]]
    ignore_label: int | None
    windows_per_call: int

    def score(self, infer: Callable[[np.ndarray], np.ndarray]) -> dict[str, float | None]:
        from medray.metrics.segmentation import dice_iou, dice_summary, overlap_counts
        from medray.models.recipes import recipe_of

        recipe = recipe_of(self.model)

        def call(x: np.ndarray) -> np.ndarray:
            return np.asarray(infer(x), dtype=np.float32)

        dice = []
        for case in self.cases:
            mask, _ = recipe.segment(self.model, self.settings, [call], case["image"], case["geometry"],
                                     self.windows_per_call)
            dice.append(dice_iou(overlap_counts(mask, case["label"], self.regions, self.ignore_label))[0])
        return {"dice_mean": dice_summary(np.stack(dice), self.classes).get("dice_mean")}


def load(samples: pd.DataFrame, model: ModelSpec, settings: dict, classes: list[str], regions: list[tuple[int, ...]],
         ignore_label: int | None, windows_per_call: int) -> SegmentationValidation:
    from dataclasses import replace

    from medray.models.recipes import recipe_of
    from medray.tasks.segmentation.read import CASE_COLUMNS

    recipe = recipe_of(model)
    recipe.open(model, settings)
    cases = []
    for _, row in samples.iterrows():
        got = recipe.read(model, settings, {k: str(row[k]) if k in row.index else "" for k in CASE_COLUMNS})
        cases.append({"image": np.asarray(got["image"], np.float32), "label": got["label"], "geometry": got["geometry"]})
    windows = recipe.calibration(model, settings, samples, 8, 0).inputs
    return SegmentationValidation(cases, windows, replace(model, members=[]), settings, classes, regions, ignore_label,
                                  windows_per_call)


def repair_validation(task, cfg: RunConfig, table: SampleTable, evaluated: pd.DataFrame, model: ModelSpec,
                      calibration: pd.DataFrame | None) -> RepairValidation:
    from functools import partial

    from medray.backends.onnx.repair import RepairValidation
    from medray.errors import fail

    samples, overlap = task.repair_samples(cfg, table, evaluated, calibration)
    samples = samples[samples["label_path"].astype(str) != ""].reset_index(drop=True)
    if samples.empty:
        fail("quantization.repair_split", cfg.quantization.repair_split, "the repair is judged by Dice: choose a split "
             "with labelled cases (quantization.repair_split)")
    classes, regions = task.labels(table)
    loader = partial(load, model=model, settings=task.settings_for(model), classes=classes, regions=regions,
                     ignore_label=task.ignore_label, windows_per_call=cfg.sliding_window.sw_batch_size)
    return RepairValidation(samples, loader, task.repair_gates(cfg), overlap)
