"""One evaluation, any task: baseline and candidate over the same samples, exact
metrics, report.

``run(cfg)`` is what ``jobs/evaluate.py`` calls with a validated :class:`EvalConfig`:
prepare (no Ray) → execute (Ray) → metrics document → outputs.  Everything that can fail
on the config or the inputs (dataset, checkpoint, artifacts) happens before Ray starts.
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path

from medray import io as medray_io
from medray.config import EvalConfig
from medray.io import as_dict
from medray.pipeline.cluster import preflight, require_cluster_gpu, start_ray, wait_for_gpus
from medray.pipeline.execute import execute
from medray.pipeline.prepare import prepare
from medray.pipeline.resume import ResumeState

log = logging.getLogger("medray.evaluate")


def run(cfg: EvalConfig) -> dict:
    """Evaluate ``cfg`` end to end; returns the metrics document (also written to disk)."""
    # output_dir: a local path, or a URI on shared storage (s3://, gs://, file://) — on a
    # cluster the job's working directory is a temporary folder on the head node.
    out = medray_io.normalize(cfg.output_dir)
    medray_io.makedirs(out)
    log.info("medray %s from %s; outputs to %s", _version(), Path(__file__).resolve().parents[1], out)
    t0 = time.perf_counter()
    preflight(cfg)
    # Resume parts are local files: beside the outputs, or on the driver's disk when the
    # outputs go to a remote URI (resume then works from the same head node).  The folder
    # is claimed before anything is built: one run at a time, never over another's outputs.
    state = ResumeState.claim(_resume_dir(cfg, out), cfg, out)
    try:
        return _run(cfg, out, state, t0)
    finally:
        state.release()


def _run(cfg: EvalConfig, out: str, state: ResumeState, t0: float) -> dict:
    """Prepare (no Ray) → execute (Ray) → metrics document → outputs, in a claimed folder."""
    import ray

    from medray.report.document import build_metrics
    from medray.report.writers import write_outputs

    started = False
    try:
        if cfg.device == "cuda" and (cfg.ray.address is not None or ray.is_initialized()):
            started = start_ray(cfg)
            if cfg.ray.min_gpus:  # GPU workers scaling from zero: wait before checking
                wait_for_gpus(cfg.ray.min_gpus, cfg.ray.scale_timeout_s)
            require_cluster_gpu(cfg)  # before building any artifact
        prepared = prepare(cfg)
        state.check(cfg, prepared.samples, prepared.specs)  # resume=true: refuses a different config
        val = prepared.task.validation_samples(cfg, prepared.table, prepared.samples)
        started = start_ray(cfg) or started
        if cfg.ray.address is not None and cfg.ray.check_nodes:
            from medray.doctor.cluster import check_nodes

            check_nodes([(s.backend.name, s.precision, s.device) for s in prepared.specs])
        results = execute(cfg, prepared.task, prepared.samples, prepared.specs, state)
        validation = _validation_run(cfg, prepared, val)
    finally:
        if started:
            ray.shutdown()
    table, samples = prepared.table, prepared.samples
    doc = build_metrics(cfg, table, samples, results, prepared.task, validation)
    doc["wall_s"] = time.perf_counter() - t0
    doc["output_dir"] = str(out)
    config = as_dict(cfg)
    write_outputs(out, config, doc, results, table, samples, prepared.task)
    log.info("outputs in %s", out)
    if cfg.tracking.backend == "mlflow":
        from medray.tracking.mlflow import log_evaluation

        doc["tracking"] = {"mlflow_run_id": log_evaluation(cfg.tracking, config, doc, out),
                           "uri": cfg.tracking.resolved_uri(), "experiment": cfg.tracking.experiment}
    return doc


def _validation_run(cfg: EvalConfig, prepared, samples):
    """The baseline (or, without one, the candidate) on the validation samples: the
    threshold is chosen on them, never on the evaluated split."""
    from dataclasses import replace

    if samples is None:
        return None
    spec = replace(prepared.specs[0], role="validation")
    log.info("%s: scoring %d validation samples (threshold.method=%s)", spec.name, len(samples), cfg.threshold.method)
    return execute(cfg, prepared.task, samples, [spec])[0]


def _resume_dir(cfg: EvalConfig, out: str) -> str:
    if medray_io.is_local(out):
        return out
    return str(Path(cfg.cache_dir) / "resume" / hashlib.sha256(out.encode()).hexdigest()[:16])


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("medray")
    except Exception:
        return "?"
