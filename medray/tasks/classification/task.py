"""task=classification: 2D images, one label (multiclass, binary) or several (multilabel).

Read stage: blocks of about 256 file paths → :func:`.read.decode_batch` (uint8 pixels at
the model's input, small object-store traffic).  Actor: the views of ``tta`` through the
backend, softmax / sigmoid, probabilities averaged over the views.  Driver: exact
metrics over all samples (scikit-learn), agreement paired by sample id, the clinical
sections (:mod:`.clinical`), report.md (:mod:`.markdown`), plots and predictions.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pandas as pd

from medray.data.sources import IMAGE
from medray.metrics.scores import finite_rows, model_probabilities, nonfinite_entry, stacked_probs, worst_case
from medray.tasks.base import RunConfig, SweepMetric, Task
from medray.tasks.classification.read import decode_batch, model_prep, read_block_size
from medray.tasks.classification.scores import targets

if TYPE_CHECKING:
    from medray.backends.base import Backend
    from medray.data.calibration import CalibrationSource
    from medray.data.table import SampleTable
    from medray.results import RunResult
    from medray.specs import ModelSpec, RunSpec

log = logging.getLogger("medray.classification")

COMPARED_METRICS = ("accuracy", "balanced_accuracy", "auc_macro", "f1_macro")


@dataclass
class ClassificationTask(Task):
    """Multiclass / multilabel image classification (the kind is the model spec's ``task``)."""

    name: ClassVar[str] = "classification"
    unit: ClassVar[str] = "image"
    rate_unit: ClassVar[str] = "img/s"
    data_kinds: ClassVar[tuple[str, ...]] = (IMAGE,)
    data_description: ClassVar[str] = "2-D images with a class or labels per image"
    # Two deliveries of an image (a retried batch) are one prediction if their probabilities are.
    identity_columns: ClassVar[tuple[str, ...]] = ("probs",)
    sweep_metrics: ClassVar[tuple[SweepMetric, ...]] = (SweepMetric("auc_macro", "AUC", "max_auc_drop"),
                                                         SweepMetric("balanced_accuracy", "BACC", "max_bacc_drop"))
    subgroup_delta: ClassVar[str | None] = "delta_auc"
    expected_metrics: ClassVar[tuple[str, ...]] = ("auc_macro", "balanced_accuracy", "accuracy")

    # -- driver, before Ray ---------------------------------------------------------
    def screen(self, cfg: RunConfig, table: SampleTable, samples: pd.DataFrame) -> pd.DataFrame:
        from medray.data.policy import apply_policy

        if cfg.data.check_patient_overlap:  # a patient in both splits would leak into calibration
            from medray.data.load import check_patient_overlap, resolve_calibration_split

            cal_split = resolve_calibration_split(table, cfg.calibration.split, cfg.data.split)
            check_patient_overlap(table, cfg.data.split, cal_split)
        from medray.tasks.classification.clinical import check_threshold
        from medray.tasks.subgroups import subgroup_columns

        check_threshold(cfg, table)
        subgroup_columns(cfg, table)
        # Missing files / unknown labels: fail now (data.on_error=fail) or mark them skipped.
        return apply_policy(samples, cfg.data.on_error)

    def validation_samples(self, cfg: RunConfig, table: SampleTable, samples: pd.DataFrame) -> pd.DataFrame | None:
        from medray.data.policy import apply_policy
        from medray.tasks.classification.clinical import validation_samples

        val = validation_samples(cfg, table, samples)
        return None if val is None else apply_policy(val, cfg.data.on_error)

    def resolve_model(self, cfg: RunConfig, table: SampleTable) -> ModelSpec:
        from medray.models.config import ModelRequest
        from medray.models.resolve import resolve_model

        return resolve_model(ModelRequest(cfg.model, cfg.preprocess, cfg.cache_dir), table)

    def calibration(self, cfg: RunConfig, table: SampleTable, samples: pd.DataFrame, model: ModelSpec) -> CalibrationSource:
        from medray.data.calibration import CalibrationSource, load_calibration

        return CalibrationSource(samples, partial(load_calibration, prep=model_prep(model), in_chans=model.in_chans))

    # -- read stage -----------------------------------------------------------------
    def block_size(self, n: int, spec: RunSpec, actors: int, configured: int | None, read_s: float | None = None) -> int:
        if configured:  # data.read_block_size; also read_dataset's second call with execute's block
            return configured
        from medray.data.preprocess import pixel_dtype
        from medray.data.tta import VIEWS

        prep = model_prep(spec.model)
        h, w = prep["size"]
        sample_bytes = h * w * (1 if prep.get("color") == "grey" else 3) * VIEWS[spec.tta] * pixel_dtype(prep).itemsize
        return read_block_size(n, spec.batch_size, actors, sample_bytes, read_s)

    def read_blocks(self, todo: pd.DataFrame, spec: RunSpec, block: int) -> list[pd.DataFrame]:
        return [todo.iloc[i : i + block][["sample_id", "path"]] for i in range(0, len(todo), block)]

    def reader(self, spec: RunSpec):
        # tencrop: the read task cuts the ten crops (decode size and crops in one place).
        return decode_batch, {"prep": model_prep(spec.model), "tta": spec.tta, "on_error": "skip"}

    # -- actor ----------------------------------------------------------------------
    def predict(self, backend: Backend, spec: RunSpec, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from medray.data.preprocess import to_model_input
        from medray.data.tta import views as tta_views

        model = spec.model
        prep = model_prep(model)
        # One view without TTA; tta=tencrop: the ten crops, each a backend call of the same
        # batch shape, probabilities averaged and call times summed (see medray.data.tta).
        views = tta_views(batch["image"], spec.tta)
        probs, batch_ms = 0.0, 0.0
        for view in views:
            logits = backend.infer(to_model_input(view, model.in_chans, prep, backend.inputs))
            batch_ms += backend.last_ms
            # Outputs matched to the dataset's classes by name (and xrv's op_norm) here, before any metric.
            probs = probs + model_probabilities(logits, model)
        n = len(batch["image"])
        return {
            "probs": (probs / len(views)).astype(np.float32),
            "batch_ms": np.full(n, batch_ms, dtype=np.float64),
            "batch_size": np.full(n, n, dtype=np.int32),
        }

    def placeholder(self, n: int, spec: RunSpec) -> dict[str, np.ndarray]:
        return {
            "probs": np.full((n, spec.model.num_classes), np.nan, dtype=np.float32),
            "batch_ms": np.zeros(n, dtype=np.float64),
            "batch_size": np.zeros(n, dtype=np.int32),
        }

    # -- driver, after ----------------------------------------------------------------
    def begin_document(self, cfg: RunConfig, table: SampleTable, samples: pd.DataFrame, results: list[RunResult],
                       validation: RunResult | None = None) -> None:
        """The one operating point of the report: the threshold chosen by ``threshold.*``
        (on the baseline's validation predictions) is the one every decision metric,
        agreement, table, plot and sweep constraint uses."""
        from medray.tasks.classification.clinical import choose_thresholds

        self.thresholds = choose_thresholds(cfg, table, validation)

    def decision_threshold(self, table: SampleTable):
        """The threshold of the decisions: binary the positive class's, multilabel one per label."""
        values = (getattr(self, "thresholds", None) or {}).get("values")
        if not values:
            return 0.5
        if table.task == "multilabel":
            return [values[c] for c in table.classes]
        return next(iter(values.values()))

    def run_metrics(self, result: RunResult, table: SampleTable, samples: pd.DataFrame) -> dict[str, Any]:
        from medray.metrics.classification import classification_metrics

        df = result.predictions
        y = targets(table, samples, df["sample_id"])
        p = stacked_probs(df)
        # A NaN/inf output (fp16 overflow) is a wrong answer, scored as the worst one (named
        # in the report): the run is judged on every sample, as the baseline is.
        ok = finite_rows(p)
        out: dict[str, Any] = {"tta": result.spec.tta}
        if len(p):
            out["metrics"] = classification_metrics(y, worst_case(p, y, table.task, table.positive_index()), table.task,
                                                    table.classes, self.decision_threshold(table), table.positive_index())
        else:
            out["metrics"] = {k: None for k in ("accuracy", "balanced_accuracy", "auc_macro", "f1_macro")} | {
                "auc_per_class": {}, "auc_skipped": list(table.classes), "per_class": []}
        out["nonfinite"] = nonfinite_entry(df, ok)
        out["n_scored"] = int(len(df))
        return out

    def metric_ci(self, result: RunResult, table: SampleTable, samples: pd.DataFrame, entry: dict, metric: str,
                  n_boot: int, confidence: float) -> dict[str, Any]:
        """The run's metric on its scored samples (decisions at its threshold) with a bootstrap
        CI; patients resampled when known."""
        from medray.metrics.statistics import Comparison, metric_ci

        df = result.predictions
        y, p = targets(table, samples, df["sample_id"]), stacked_probs(df)
        ok = finite_rows(p)
        clusters = None
        if "patient_id" in samples.columns:
            pid = samples.set_index(samples["sample_id"].astype(str))["patient_id"].astype(str)
            clusters = pid.loc[df["sample_id"].astype(str)].to_numpy()[ok]
        how = Comparison(n_boot=n_boot, confidence=confidence, positive=table.positive_index(), clusters=clusters,
                         threshold=float((entry.get("metrics") or {}).get("threshold") or 0.5))
        return metric_ci(y[ok], p[ok], table.task, metric, how)

    def compare(self, base: RunResult, cand: RunResult, table: SampleTable, samples: pd.DataFrame,
                base_entry: dict, cand_entry: dict) -> dict[str, Any]:
        from medray.metrics.agreement import agreement, pair_by_id

        bdf, cdf = base.predictions, cand.predictions
        bi, ci = pair_by_id(bdf["sample_id"].to_numpy(), cdf["sample_id"].to_numpy())
        bm, cm = base_entry["metrics"], cand_entry["metrics"]
        bp, cp = stacked_probs(bdf)[bi], stacked_probs(cdf)[ci]
        # Every pair: a NaN/inf on either side is a disagreement (medray.metrics.agreement).
        return {
            "agreement": agreement(bp, cp, table.task, self.decision_threshold(table),
                                   table.positive_index()) if len(bp) else None,
            "metric_deltas": {
                k: (cm[k] - bm[k]) if cm.get(k) is not None and bm.get(k) is not None else None for k in COMPARED_METRICS
            },
        }

    def document_extras(self, cfg: RunConfig, doc: dict, results: list[RunResult], table: SampleTable,
                        samples: pd.DataFrame, validation: RunResult | None = None) -> None:
        from medray.tasks.classification.clinical import add_clinical

        add_clinical(cfg, doc, results, table, samples, getattr(self, "thresholds", None))

    def write_plots(self, out: str, doc: dict, results: list[RunResult], table: SampleTable,
                    samples: pd.DataFrame) -> dict[str, str]:
        from medray.tasks.classification.clinical import scored_rows
        from medray.tasks.classification.plots import write_plots

        rows = [(r.spec.name, *scored_rows(r, table, samples)) for r in results]
        return write_plots(out, doc, rows, table, samples)

    def dataset_section(self, cfg: RunConfig, table: SampleTable, samples: pd.DataFrame,
                        model: ModelSpec | None) -> dict[str, Any]:
        return {"task": table.task, "classes": list(table.classes), "positive_class": table.positive_class,
                "not_scored": list(table.not_scored), "notes": list(table.notes)}

    def runs_columns(self, r: dict) -> dict[str, str]:
        lat = r["latency_ms"]
        return {"Latency p50 / p95 (ms)": f"{lat['per_sample_p50']:.2f} / {lat['per_sample_p95']:.2f}"}

    def render(self, doc: dict) -> list[str]:
        from medray.tasks.classification.markdown import render

        return render(doc)

    def write_predictions(self, out: str, result: RunResult, table: SampleTable, samples: pd.DataFrame) -> None:
        """predictions/<run>.parquet: one row per sample (ids, target, probs, timing, worker)."""
        from medray.tasks.classification.predictions import write

        write(out, result, table, samples)

    def repair_validation(self, cfg: RunConfig, table: SampleTable, evaluated: pd.DataFrame, model: ModelSpec,
                          calibration: pd.DataFrame | None = None):
        from medray.tasks.classification.repair import repair_validation

        return repair_validation(self, cfg, table, evaluated, model, calibration)

    # -- sweep ------------------------------------------------------------------------
    def statistics(self, cfg: RunConfig, table: SampleTable, samples: pd.DataFrame, base: pd.DataFrame,
                   cand: pd.DataFrame) -> dict[str, Any]:
        """AUC (DeLong when binary) and BACC: bootstrap CIs, paired tests, non-inferiority
        at the constraint margins; patients resampled when known."""
        from medray.metrics.statistics import Comparison, aligned, compare_metric

        ids = pd.Index(sorted(set(base["sample_id"].astype(str)) & set(cand["sample_id"].astype(str))))
        sw = cfg.sweep
        out: dict[str, Any] = {"n": int(len(ids))}
        pos = pd.Index(samples["sample_id"].astype(str)).get_indexer(ids)
        y = table.targets(samples.iloc[pos])
        b, k = aligned(base, ids, "probs"), aligned(cand, ids, "probs")
        # Several images of one patient are not independent: resample patients when known.
        clusters = samples["patient_id"].astype(str).to_numpy()[pos] if "patient_id" in samples.columns else None
        for m in self.sweep_metrics:
            how = Comparison(getattr(cfg.constraints, m.constraint), sw.bootstrap_samples, sw.confidence, sw.seed,
                             positive=table.positive_index(), clusters=clusters)
            out[m.key] = compare_metric(y, b, k, table.task, m.key, how)
        return out
