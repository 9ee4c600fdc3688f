"""Segmentation's side of the INT8 repair: the labelled validation cases, segmented with the
run's own sliding window around the candidate model, judged by mean Dice (the task's
metric; ``quantization.min_ratio=0.999`` is MLPerf's 99.9 % rule)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from medray.backends.onnx.repair import RepairValidation
    from medray.data.table import SampleTable
    from medray.specs import ModelSpec
    from medray.tasks.base import RunConfig


class _Session:
    """What :func:`~medray.tasks.segmentation.actor.segment` needs of a backend."""

    def __init__(self, infer: Callable[[np.ndarray], np.ndarray]):
        self._infer, self.last_ms = infer, 0.0

    def infer(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self._infer(x), dtype=np.float32)


@dataclass
class SegmentationValidation:
    """Preprocessed labelled cases; :meth:`score` = mean Dice of a model's masks."""

    cases: list[tuple[np.ndarray, np.ndarray]]
    inputs: np.ndarray  # ROI windows (the proxy, the speed check)
    sliding: dict
    foreground: list[str]
    spec: SimpleNamespace

    def score(self, infer: Callable[[np.ndarray], np.ndarray]) -> dict[str, float | None]:
        from medray.metrics.segmentation import dice_per_class, dice_summary
        from medray.tasks.segmentation.actor import segment

        k = len(self.foreground) + 1
        dice = [dice_per_class(segment(self.sliding, _Session(infer), self.spec, image)[0], label, k)
                for image, label in self.cases]
        s = dice_summary(np.stack(dice), self.foreground)
        return {"dice_mean": s.get("dice_mean")}


def load(samples: pd.DataFrame, model: ModelSpec, sliding: dict, foreground: list[str], batch: int) -> SegmentationValidation:
    from medray.data.msd import load_case
    from medray.tasks.segmentation.read import calibration_windows

    cases = []
    for path, lab in zip(samples["path"], samples["label_path"]):
        case = load_case(str(path), str(lab), model.preprocess, len(foreground) + 1)
        cases.append((np.asarray(case["image"], np.float32), np.asarray(case["label"])))
    windows = calibration_windows(samples, model.preprocess, tuple(model.spatial), 8, 0).inputs
    spec = SimpleNamespace(model=SimpleNamespace(spatial=tuple(model.spatial)), batch_size=batch)
    return SegmentationValidation(cases, windows, sliding, foreground, spec)


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
    loader = partial(load, model=model, sliding=task.sliding, foreground=task.foreground(table),
                     batch=cfg.sliding_window.sw_batch_size)
    return RepairValidation(samples, loader, task.repair_gates(cfg), overlap)
