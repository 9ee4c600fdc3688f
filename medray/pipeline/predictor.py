"""The Predictor actor of ``Dataset.map_batches``: one backend session, every task.

The actor owns what is the same for every task: the spec's files (shipped or local),
the backend session (a context manager, closed when Ray shuts the actor down), the
live metrics, fault injection, rows that could not be read, the precision report and
the batch clocks.  What happens around the backend call is the task's
(:meth:`medray.tasks.base.Task.predict`).
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid

import numpy as np

from medray.backends import get_backend
from medray.monitoring import PredictorMetrics, step
from medray.pipeline.faults import inject_faults
from medray.specs import RunSpec
from medray.tasks.base import Task

log = logging.getLogger("medray.predictor")


class Predictor:
    """Holds one backend session per actor; one call = one timed batch of read samples."""

    def __init__(self, spec: RunSpec, task: Task):
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
        from medray.pipeline.shipping import materialise

        # Checkpoint / artifact built on the driver: use it in place if this node has it
        # (same node, shared mount), else fetch it from the object store (sha256-checked).
        spec = materialise(spec)
        self.spec, self.task = spec, task
        # A heartbeat in the actor's log while it loads (a TensorRT engine build takes minutes).
        with step(f"{spec.name}: load the {spec.backend.name} session", log):
            self.backend = get_backend(spec.backend.name)(spec).__enter__()
        task.open(spec)
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

    def close(self) -> None:
        """Close the backend session (idempotent)."""
        backend = getattr(self, "backend", None)
        if backend is not None:
            self.backend = None
            backend.__exit__(None, None, None)
            getattr(self, "metrics", None) and self.metrics.idle()  # the actor is done: its rate is 0, not the last value seen

    def __del__(self):  # Ray Data deletes the UDF when it shuts the actor down gracefully
        self.close()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            # One actor call carries a read block of several backend batches: Ray Data's
            # per-call cost is paid once per block.  Each backend batch keeps its own clocks
            # and batch_uid, so latency, throughput and retry accounting are per batch.
            size = self.task.split_batch(self.spec)
            n = len(batch["sample_id"])
            if not size or n <= size:
                return self._call(batch)
            parts = [self._call({k: v[i : i + size] for k, v in batch.items()}) for i in range(0, n, size)]
            return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        except Exception:
            self.metrics.error("predict")  # counted, then raised: nothing is dropped
            raise

    def _call(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.spec.options:
            inject_faults(self.spec.options, self.n_batches)
        t_start = time.time()  # wall clock: comparable across actors for throughput
        reasons = batch.pop("skipped_reason", None)
        t_read0, t_read, read_pid = (batch.pop(k, None) for k in ("t_read0", "t_read", "read_pid"))
        n = len(batch["sample_id"])
        if reasons is None:
            reasons = np.full(n, "", dtype=object)
        ok = np.array([not r for r in reasons], dtype=bool)
        if ok.all():
            out = self.task.predict(self.backend, self.spec, batch)
        else:
            out = self._with_skipped(batch, ok)
        batch_ms = float(np.max(out["batch_ms"])) if ok.any() else 0.0
        if ok.any():
            self.metrics.batch(int(ok.sum()), batch_ms)
        # The precision each session really executes travels back once per actor, on
        # the first row it returns (actors of map_batches cannot be queried otherwise).
        info = np.full(n, "", dtype=object)
        if self.n_batches == 0 and n:
            info[0] = json.dumps(self.backend.effective_precision, default=str)
        out.update(
            sample_id=batch["sample_id"],
            batch_uid=np.full(n, f"{self.uid}:{self.n_batches}"),
            node_id=np.full(n, self.node),
            worker_pid=np.full(n, self.pid, dtype=np.int64),
            effective_precision=info,
            # Read clocks pass through (fed without a read stage: an instant read at the call).
            t_read0=np.full(n, t_start) if t_read0 is None else np.asarray(t_read0, dtype=np.float64),
            t_read=np.full(n, t_start) if t_read is None else np.asarray(t_read, dtype=np.float64),
            read_pid=np.full(n, self.pid, dtype=np.int64) if read_pid is None else np.asarray(read_pid, dtype=np.int64),
            t_start=np.full(n, t_start),
            t_end=np.full(n, time.time()),
            # Every block has the same columns (Ray Data unifies block schemas).
            skipped_reason=np.asarray(reasons, dtype=object),
        )
        self.n_batches += 1
        return out

    def _with_skipped(self, batch: dict[str, np.ndarray], ok: np.ndarray) -> dict[str, np.ndarray]:
        """Predict the readable rows; unreadable rows get the task's blank outputs."""
        full = self.task.placeholder(len(ok), self.spec)
        if ok.any():
            good = self.task.predict(self.backend, self.spec, {k: v[ok] for k, v in batch.items()})
            for k, v in good.items():
                full[k][ok] = v
        return full
