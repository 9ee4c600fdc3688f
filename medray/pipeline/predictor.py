"""Read/decode tasks and the Predictor actor used with ``Dataset.map_batches``."""

from __future__ import annotations

import json
import logging
import os
import time
import uuid

import numpy as np

from medray.backends import get_backend
from medray.data.preprocess import decode_gray, to_model_input
from medray.data.tta import views as tta_views
from medray.monitoring import PredictorMetrics, count_error, step
from medray.pipeline.faults import SAMPLE_ERRORS, BadSampleError, describe, inject_faults
from medray.specs import RunSpec

log = logging.getLogger("medray.predictor")


def decode_batch(batch: dict[str, np.ndarray], size: int, on_error: str = "fail") -> dict[str, np.ndarray]:
    """CPU task: file paths → uint8 grey images at the model's input size.

    A file that cannot be decoded stops the run (``on_error="fail"``: BadSampleError with
    its path and reason) or becomes a row with a ``skipped_reason`` and a blank image
    (``"skip"``) that the Predictor passes through without inference.
    """
    paths = batch["path"]
    images = np.zeros((len(paths), size, size), dtype=np.uint8)
    reasons = np.full(len(paths), "", dtype=object)
    for i, p in enumerate(paths):
        try:
            # s3://, gs://... paths (data.root on shared storage) are read through pyarrow.fs.
            images[i] = decode_gray(str(p), size)
        except SAMPLE_ERRORS as e:
            count_error("decode")
            if on_error != "skip":
                raise BadSampleError(str(p), describe(e)) from e
            reasons[i] = describe(e)
    return {"sample_id": batch["sample_id"], "image": images, "skipped_reason": reasons}


def probabilities(logits: np.ndarray, task: str) -> np.ndarray:
    """Softmax (multiclass) or sigmoid (multilabel), in float64 for stable metrics."""
    z = logits.astype(np.float64)
    if task == "multilabel":
        return 1.0 / (1.0 + np.exp(-z))
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


class Predictor:
    """Holds one backend session per actor; one call = one timed batch."""

    def __init__(self, spec: RunSpec):
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
        from medray.pipeline.shipping import materialise

        # Checkpoint / artifact built on the driver: use it in place if this node has it
        # (same node, shared mount), else fetch it from the object store (sha256-checked).
        spec = materialise(spec)
        self.spec = spec
        # A heartbeat in the actor's log while it loads (a TensorRT engine build takes minutes).
        with step(f"{spec.name}: load the {spec.backend.name} session", log):
            self.backend = get_backend(spec.backend.name)(spec).load()
        self.uid = uuid.uuid4().hex[:8]
        self.pid = os.getpid()
        try:
            import ray

            # is_initialized first: get_runtime_context() would start a Ray outside one.
            self.node = ray.get_runtime_context().get_node_id() if ray.is_initialized() else "local"
        except Exception:  # outside Ray (unit tests)
            self.node = "local"
        self.n_batches = 0
        # Live metrics (Prometheus / Ray dashboard), tagged run/backend/precision/node.
        self.metrics = PredictorMetrics(spec.name, spec.backend.name, spec.precision, self.node)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            return self._call(batch)
        except Exception:
            self.metrics.error("predict")  # counted, then raised: nothing is dropped
            raise

    def _call(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.spec.options:
            inject_faults(self.spec.options, self.n_batches)
        reasons = batch.pop("skipped_reason", None)
        if reasons is not None and any(reasons):
            return self._skip_rows(batch, reasons)
        out = self._predict(batch)
        # Every block has the same columns (Ray Data unifies block schemas).
        out["skipped_reason"] = np.full(len(out["sample_id"]), "", dtype=object)
        return out

    def _skip_rows(self, batch: dict[str, np.ndarray], reasons: np.ndarray) -> dict[str, np.ndarray]:
        """Predict the good rows; pass skipped rows through with blank outputs.

        A batch with no good row still runs one (blank) image so that its columns have
        the usual shapes; that output is not a prediction and is blanked too.
        """
        ok = np.array([not r for r in reasons], dtype=bool)
        n = len(ok)
        sub = {k: (v[ok] if ok.any() else v[:1]) for k, v in batch.items()}
        out = self._predict(sub)
        full: dict[str, np.ndarray] = {}
        for k, v in out.items():
            kind = v.dtype.kind
            fill, dtype = (np.nan, v.dtype) if kind == "f" else (0, v.dtype) if kind in "iub" else ("", object)
            arr = np.full((n, *v.shape[1:]), fill, dtype=dtype)
            if ok.any():
                arr[ok] = v
            full[k] = arr
        if "batch_size" in full:
            full["batch_size"][~ok] = 0
        if not ok.any() and "effective_precision" in out:  # keep the actor's one-time report
            full["effective_precision"][0] = out["effective_precision"][0]
        full["sample_id"] = batch["sample_id"]
        full["skipped_reason"] = np.asarray(reasons, dtype=object)
        return full

    def _predict(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        t_start = time.time()  # wall clock: comparable across actors for throughput
        model = self.spec.model
        # One view without TTA; tta=tencrop: ten crops, each a backend call of the same
        # batch shape, probabilities averaged and call times summed (see medray.data.tta).
        views = tta_views(batch["image"], model.input_size, self.spec.tta)
        probs, batch_ms = 0.0, 0.0
        for view in views:
            logits = self.backend.infer(to_model_input(view, model.in_chans))
            batch_ms += self.backend.last_ms
            probs = probs + probabilities(logits, model.task)
        n = len(batch["image"])
        self.metrics.batch(n, batch_ms)
        probs = (probs / len(views)).astype(np.float32)
        uid = f"{self.uid}:{self.n_batches}"
        # The precision each session really executes travels back once per actor, on
        # the first row it returns (actors of map_batches cannot be queried otherwise).
        info = np.full(n, "", dtype=object)
        if self.n_batches == 0:
            info[0] = json.dumps(self.backend.effective_precision, default=str)
        self.n_batches += 1
        return {
            "sample_id": batch["sample_id"],
            "probs": probs,
            "batch_ms": np.full(n, batch_ms, dtype=np.float64),
            "batch_size": np.full(n, n, dtype=np.int32),
            "batch_uid": np.full(n, uid),
            "node_id": np.full(n, self.node),
            "worker_pid": np.full(n, self.pid, dtype=np.int64),
            "effective_precision": info,
            "t_start": np.full(n, t_start),
            "t_end": np.full(n, time.time()),
        }
