"""Classification's side of the INT8 repair: the validation images, preprocessed exactly
as the evaluated ones, and the task's metrics of a model on them (macro-AUC, balanced
accuracy... as in metrics.json; per subgroup when a subgroup limit is set)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from medray.backends.onnx.repair import RepairValidation
    from medray.data.table import SampleTable
    from medray.specs import ModelSpec
    from medray.tasks.base import RunConfig

BATCH = 32


@dataclass
class ClassificationValidation:
    """Validation inputs and targets; :meth:`score` = the task's metrics of a model."""

    inputs: np.ndarray
    y: np.ndarray
    task: str
    classes: list[str]
    positive: int
    model: ModelSpec
    # metadata column -> each sample's group, for the subgroup limit (empty: none asked)
    groups: dict[str, np.ndarray] = field(default_factory=dict)
    min_n: int = 10

    def score(self, infer: Callable[[np.ndarray], np.ndarray]) -> dict[str, float | None]:
        logits = np.concatenate([infer(self.inputs[i : i + BATCH]) for i in range(0, len(self.inputs), BATCH)])
        return self.score_outputs(logits)[0]

    def score_outputs(self, logits: np.ndarray, idx: np.ndarray | None = None) -> tuple[dict, list[float]]:
        """(metrics, per-sample probability of the true outcome) of outputs of the samples
        ``idx`` (all when None).  A non-finite output makes every metric unmeasurable."""
        from medray.metrics.classification import classification_metrics
        from medray.metrics.scores import model_probabilities, true_outcome_probability
        from medray.metrics.statistics import auc_macro

        y = self.y if idx is None else self.y[idx]
        m = self.model
        p = model_probabilities(np.asarray(logits), m)
        if not np.isfinite(p).all():
            return {"auc_macro": None, "balanced_accuracy": None, "accuracy": None, "f1_macro": None}, [0.0] * len(y)
        full = classification_metrics(y, p, self.task, self.classes, positive=self.positive)
        out: dict = {k: full.get(k) for k in ("auc_macro", "balanced_accuracy", "accuracy", "f1_macro")}
        for col, values in self.groups.items():
            v = values if idx is None else values[idx]
            for g in sorted(set(v.tolist())):
                sel = v == g
                if sel.sum() >= self.min_n:
                    auc = auc_macro(y[sel], p[sel], self.task)
                    out[f"auc_macro@{col}={g}"] = None if np.isnan(auc) else float(auc)
        return out, true_outcome_probability(y, p, self.task).astype(float).tolist()


def load(samples: pd.DataFrame, table: SampleTable, model: ModelSpec, columns: list[str], min_n: int) -> ClassificationValidation:
    """Decode and preprocess the validation images (the calibration path: exactly the
    evaluation's preprocessing) with their targets, in sample-id order."""
    from medray.data.calibration import load_calibration
    from medray.tasks.classification.read import model_prep

    cs = load_calibration(samples, model_prep(model), model.in_chans)
    ordered = samples.set_index(samples["sample_id"].astype(str)).loc[cs.sample_ids].reset_index(drop=True)
    return ClassificationValidation(
        inputs=cs.inputs, y=table.targets(ordered), task=table.task, classes=list(table.classes),
        positive=table.positive_index(), model=model,
        groups={c: ordered[c].astype(str).to_numpy() for c in columns}, min_n=min_n)


def repair_validation(task, cfg: RunConfig, table: SampleTable, evaluated: pd.DataFrame, model: ModelSpec,
                      calibration: pd.DataFrame | None) -> RepairValidation:
    from functools import partial

    from medray.backends.onnx.repair import RepairValidation
    from medray.tasks.subgroups import subgroup_columns

    samples, overlap = task.repair_samples(cfg, table, evaluated, calibration)
    columns = subgroup_columns(cfg, table) if cfg.quantization.max_subgroup_drop is not None else []
    if cfg.quantization.max_subgroup_drop is not None and not columns:
        from medray.errors import fail

        fail("quantization.max_subgroup_drop", cfg.quantization.max_subgroup_drop,
             f"dataset {table.name} has no subgroup column: set report.subgroups or data.metadata")
    loader = partial(load, table=table, model=model, columns=columns, min_n=cfg.report.min_subgroup_size)
    return RepairValidation(samples, loader, task.repair_gates(cfg), overlap)
