"""task=classification: 2D images, one label (multiclass, binary) or several (multilabel).

Read stage: blocks of about 64 file paths → :func:`decode_batch` (uint8 pixels at the
model's input, small object-store traffic).  Actor: the views of ``tta`` through the
backend, softmax / sigmoid, probabilities averaged over the views.  Driver: exact
metrics over all samples (scikit-learn), agreement paired by sample id.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pandas as pd

from medray.format import pct
from medray.metrics.scores import finite_rows, nonfinite_entry, probabilities, stacked_probs
from medray.tasks.base import Task
from medray.tasks.scores import targets

if TYPE_CHECKING:
    from medray.backends.base import Backend
    from medray.config import EvalConfig
    from medray.data.calibration import CalibrationSource
    from medray.data.table import SampleTable
    from medray.results import RunResult
    from medray.specs import ModelSpec, RunSpec

log = logging.getLogger("medray.classification")

COMPARED_METRICS = ("accuracy", "balanced_accuracy", "auc_macro", "f1_macro")


def decode_batch(batch: dict[str, np.ndarray], prep, tta: str = "none", on_error: str = "fail") -> dict[str, np.ndarray]:
    """CPU task: file paths → the model's uint8 pixels (:func:`medray.data.preprocess.decode_image`):
    ``(N, H, W[, 3])``, or ``(N, 10, H, W[, 3])`` with ``tta=tencrop``.

    ``prep``: the resolved preprocessing (an int = the medray preset at that size).  A file
    that cannot be decoded stops the run (``on_error="fail"``: BadSampleError with its path
    and reason) or becomes a row with a ``skipped_reason`` and blank pixels (``"skip"``,
    what the pipeline uses: the driver then applies data.on_error, where the error keeps
    its path and reason).
    """
    from medray.data.policy import SAMPLE_ERRORS, describe
    from medray.data.preprocess import decode_image, medray_preset
    from medray.errors import BadSampleError
    from medray.monitoring import count_error

    if isinstance(prep, int):
        prep = medray_preset(prep)
    h, w = prep["size"]
    shape = ((10,) if tta == "tencrop" else ()) + (h, w) + ((3,) if prep["color"] == "rgb" else ())
    paths = batch["path"]
    images = np.zeros((len(paths), *shape), dtype=np.uint8)
    reasons = np.full(len(paths), "", dtype=object)
    for i, p in enumerate(paths):
        try:
            # s3://, gs://... paths (data.root on shared storage) are read through pyarrow.fs.
            images[i] = decode_image(str(p), prep, tta)
        except SAMPLE_ERRORS as e:
            count_error("decode")
            if on_error != "skip":
                raise BadSampleError(str(p), describe(e)) from e
            reasons[i] = describe(e)
    return {"sample_id": batch["sample_id"], "image": images, "skipped_reason": reasons}


def model_prep(model: ModelSpec) -> dict:
    """The model's resolved preprocessing (the medray preset at its input size if unset)."""
    from medray.data.preprocess import medray_preset

    return model.preprocess or medray_preset(model.input_size)


# Samples per read task and actor call.  Ray Data costs 15-30 ms per actor call on a
# 2-core VM (measured, docs/benchmarks.md): with 64 samples a call, a fast backend (the
# demo model: 12 ms per 64) spent more time between calls than in them.  A read task
# costs about as much again (~45 ms of scheduling per task, measured with sleeping
# stages): when the read cost is measured, a block holds at least BLOCK_SECONDS of it.
BLOCK_SAMPLES = 256
BLOCK_SECONDS = 0.4
BLOCK_BYTES = 64 * 2**20  # a block's decoded uint8 input, ten crops included


def read_block_size(n: int, batch_size: int, actors: int, sample_bytes: int = 0, read_s: float | None = None) -> int:
    """Samples per read task (= per actor call): a multiple of the batch size (no ragged
    backend batches), about :data:`BLOCK_SAMPLES` (or :data:`BLOCK_SECONDS` of reading
    when one sample's ``read_s`` is known and cheaper) and at most :data:`BLOCK_BYTES` of
    input, but small enough that every actor gets several blocks (read and predict overlap)."""
    per_actor = math.ceil(n / (actors * 4 * batch_size))
    by_bytes = BLOCK_BYTES // max(1, sample_bytes * batch_size)
    target = max(BLOCK_SAMPLES, int(BLOCK_SECONDS / read_s)) if read_s else BLOCK_SAMPLES
    return batch_size * max(1, min(max(1, target // batch_size), by_bytes, per_actor))


@dataclass
class ClassificationTask(Task):
    """Multiclass / multilabel image classification (the kind is the model spec's ``task``)."""

    name: ClassVar[str] = "classification"
    unit: ClassVar[str] = "image"
    identity_columns: ClassVar[tuple[str, ...]] = ("probs",)

    # -- driver, before Ray ---------------------------------------------------------
    def screen(self, cfg: EvalConfig, table: SampleTable, samples: pd.DataFrame) -> pd.DataFrame:
        from medray.data.policy import apply_policy

        if cfg.data.check_patient_overlap:  # a patient in both splits would leak into calibration
            from medray.data.sources import check_patient_overlap, resolve_calibration_split

            cal_split = resolve_calibration_split(table, cfg.calibration.split, cfg.data.split)
            check_patient_overlap(table, cfg.data.split, cal_split)
        from medray.tasks.clinical import check_threshold, subgroup_columns

        check_threshold(cfg, table)
        subgroup_columns(cfg, table)
        # Missing files / unknown labels: fail now (data.on_error=fail) or mark them skipped.
        return apply_policy(samples, cfg.data.on_error)

    def validation_samples(self, cfg: EvalConfig, table: SampleTable, samples: pd.DataFrame) -> pd.DataFrame | None:
        from medray.data.policy import apply_policy
        from medray.tasks.clinical import validation_samples

        val = validation_samples(cfg, table, samples)
        return None if val is None else apply_policy(val, cfg.data.on_error)

    def resolve_model(self, cfg: EvalConfig, table: SampleTable) -> ModelSpec:
        from medray.models.resolve import resolve_model

        return resolve_model(cfg, table)

    def calibration(self, cfg: EvalConfig, table: SampleTable, samples: pd.DataFrame, model: ModelSpec) -> CalibrationSource:
        from medray.data.calibration import CalibrationSource, load_calibration

        return CalibrationSource(samples, partial(load_calibration, prep=model_prep(model), in_chans=model.in_chans))

    # -- read stage -----------------------------------------------------------------
    def block_size(self, n: int, spec: RunSpec, actors: int, configured: int | None, read_s: float | None = None) -> int:
        if configured:  # data.read_block_size; also read_dataset's second call with execute's block
            return configured
        from medray.data.tta import VIEWS

        prep = model_prep(spec.model)
        h, w = prep["size"]
        sample_bytes = h * w * (1 if prep.get("color") == "grey" else 3) * VIEWS[spec.tta]
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
            probs = probs + probabilities(logits, model.task, model.output, model.positive_index)
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
    def run_metrics(self, result: RunResult, table: SampleTable, samples: pd.DataFrame) -> dict[str, Any]:
        from medray.metrics.classification import classification_metrics

        df = result.predictions
        y = targets(table, samples, df["sample_id"])
        p = stacked_probs(df)
        # A NaN/inf output (fp16 overflow) is one sample the model failed on, named in the
        # report; the metrics are those of the samples with finite outputs.
        ok = finite_rows(p)
        out: dict[str, Any] = {"tta": result.spec.tta}
        if ok.any():
            out["metrics"] = classification_metrics(y[ok], p[ok], table.task, table.classes, positive=table.positive_index())
        else:
            out["metrics"] = {k: None for k in ("accuracy", "balanced_accuracy", "auc_macro", "f1_macro")} | {
                "auc_per_class": {}, "auc_skipped": list(table.classes), "per_class": []}
        out["nonfinite"] = nonfinite_entry(df, ok)
        out["n_scored"] = int(ok.sum())
        return out

    def compare(self, base: RunResult, cand: RunResult, table: SampleTable, samples: pd.DataFrame,
                base_entry: dict, cand_entry: dict) -> dict[str, Any]:
        from medray.metrics.agreement import agreement, pair_by_id

        bdf, cdf = base.predictions, cand.predictions
        bi, ci = pair_by_id(bdf["sample_id"].to_numpy(), cdf["sample_id"].to_numpy())
        bm, cm = base_entry["metrics"], cand_entry["metrics"]
        bp, cp = stacked_probs(bdf)[bi], stacked_probs(cdf)[ci]
        ok = finite_rows(bp) & finite_rows(cp)  # agreement of the pairs both runs scored
        return {
            "agreement": agreement(bp[ok], cp[ok], table.task, positive=table.positive_index()) if ok.any() else None,
            "metric_deltas": {
                k: (cm[k] - bm[k]) if cm.get(k) is not None and bm.get(k) is not None else None for k in COMPARED_METRICS
            },
        }

    def document_extras(self, cfg: EvalConfig, doc: dict, results: list[RunResult], table: SampleTable,
                        samples: pd.DataFrame, validation: RunResult | None = None) -> None:
        from medray.tasks.clinical import add_clinical

        add_clinical(cfg, doc, results, table, samples, validation)

    def write_plots(self, out: str, doc: dict, results: list[RunResult], table: SampleTable,
                    samples: pd.DataFrame) -> dict[str, str]:
        from medray.report.plots import write_plots
        from medray.tasks.clinical import scored_rows

        rows = [(r.spec.name, *scored_rows(r, table, samples)) for r in results]
        return write_plots(out, doc, rows, table, samples)

    def dataset_section(self, cfg: EvalConfig, table: SampleTable, samples: pd.DataFrame) -> dict[str, Any]:
        return {"task": table.task, "classes": list(table.classes), "positive_class": table.positive_class,
                "notes": list(table.notes)}

    def render(self, doc: dict) -> list[str]:
        ds = doc["dataset"]
        lines = [
            f"# medray evaluation — {ds['name']}",
            "",
            f"{ds['n_samples']} samples of split `{ds['split']}`, task {ds['task']}, "
            f"{len(ds['classes'])} {'labels' if ds['task'] == 'multilabel' else 'classes'}"
            + (f"; {len(doc['skipped'])} of them skipped as unreadable (listed below)." if doc.get("skipped") else "."),
            "Latency = backend compute time per sample (batch time / batch size, warm-up excluded); "
            "throughput = end to end, the rate of the slower of reading and inference while both run "
            "(start-up apart; the inference stage's capacity is in the runs table). Percentages below.",
            *_tta_note(doc),
            "",
            "| Dataset | Model | Latency (ms) | Speed-up | Accuracy | BACC | mAUC | Throughput (img/s) | Agreement |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in doc["runs"]:
            m, sp, ag = r["metrics"], r.get("speedup"), r.get("agreement")
            speed = "–" if not sp or sp["factor"] is None else f"{sp['latency_reduction_pct']:.1f}% ({sp['factor']:.2f}×)"
            model = f"{'Baseline' if r['role'] == 'baseline' else 'Candidate'} {r['name']} (b{r['batch_size']}×{r['streams']})"
            lines.append(
                f"| {ds['name']} | {model} | {r['latency_ms']['per_sample_mean']:.2f} | {speed} | "
                f"{pct(m['accuracy'])} | {pct(m['balanced_accuracy'])} | {pct(m['auc_macro'])} | "
                f"{r['throughput_sps']:.1f} | {pct(ag['top1']) if ag else '–'} |"
            )
        lines += ["", "## Agreement with the baseline", ""]
        for r in doc["runs"]:
            if r.get("agreement"):
                a = r["agreement"]
                lines.append(
                    f"- {r['name']}: top-1 {pct(a['top1'])}%, max |Δprob| {a['max_abs_prob_diff']:.2e}, "
                    f"mean |Δprob| {a['mean_abs_prob_diff']:.2e} over {a['n']} paired samples"
                )
        lines += ["", "## Per-class AUC", "", "| Class | " + " | ".join(r["name"] for r in doc["runs"]) + " |"]
        lines.append("|---" * (len(doc["runs"]) + 1) + "|")
        for c in ds["classes"]:
            cells = [pct(r["metrics"]["auc_per_class"].get(c)) for r in doc["runs"]]
            lines.append(f"| {c} | " + " | ".join(cells) + " |")
        for r in doc["runs"]:
            if r["metrics"].get("auc_skipped"):
                lines.append(f"\n{r['name']}: AUC skipped (one outcome only) for {', '.join(r['metrics']['auc_skipped'])}")
        for r in doc["runs"]:
            if r["metrics"].get("f1_skipped"):
                lines.append(f"\n{r['name']}: F1 macro over the classes present; no F1 for "
                             f"{len(r['metrics']['f1_skipped'])} absent: {', '.join(r['metrics']['f1_skipped'][:20])}")
        if any("sensitivity" in r["metrics"] for r in doc["runs"]):
            lines += ["", "## Operating point", "",
                      f"Positive class **{ds.get('positive_class')}**; decision: its probability ≥ threshold.", "",
                      "| Run | Threshold | Sensitivity | Specificity | PPV | NPV | F1 (positive) |", "|---|---|---|---|---|---|---|"]
            for r in doc["runs"]:
                m = r["metrics"]
                lines.append(
                    f"| {r['name']} | {m.get('threshold', 0.5):g} | {pct(m['sensitivity'])} | {pct(m['specificity'])} | "
                    f"{pct(m.get('ppv'))} | {pct(m.get('npv'))} | {pct(m.get('f1_positive'))} |"
                )
        from medray.tasks.clinical import render_clinical

        lines += render_clinical(doc)
        return lines

    def runs_columns(self, r: dict) -> dict[str, str]:
        lat = r["latency_ms"]
        return {"Latency p50 / p95 (ms)": f"{lat['per_sample_p50']:.2f} / {lat['per_sample_p95']:.2f}"}

    def write_predictions(self, out: str, result: RunResult, table: SampleTable, samples: pd.DataFrame) -> None:
        """predictions/<run>.parquet: one row per sample (ids, target, probs, timing, worker)."""
        import pyarrow as pa

        from medray import io as medray_io

        df = result.predictions
        t = targets(table, samples, df["sample_id"])
        probs = np.stack(df["probs"].to_numpy()).astype(np.float32)
        cols = {
            "sample_id": pa.array(df["sample_id"].astype(str)),
            "target": pa.array(t.tolist()),
            "probs": pa.FixedSizeListArray.from_arrays(pa.array(probs.ravel()), probs.shape[1]),
            "batch_uid": pa.array(df["batch_uid"].astype(str)),
            "batch_ms": pa.array(df["batch_ms"].astype(float)),
            "batch_size": pa.array(df["batch_size"].astype(int)),
            "node_id": pa.array(df["node_id"].astype(str)),
            "worker_pid": pa.array(df["worker_pid"].astype(int)),
        }
        medray_io.write_parquet(pa.table(cols), medray_io.join(out, "predictions", f"{result.spec.name}.parquet"))


def _tta_note(doc: dict) -> list[str]:
    tta = sorted({r.get("tta", "none") for r in doc["runs"]} - {"none"})
    if not tta:
        return []
    return [
        f"Test-time augmentation: {', '.join(tta)} — probabilities averaged over the views of each image; "
        "latency is the sum of the backend calls over all views (the cost of one TTA prediction)."
    ]
