"""``tracking=mlflow``: evaluations and sweeps as MLflow runs, where teams compare them.

An evaluation is one run: params (backend, precision, batch, streams, preprocessing,
model and dataset hashes, library versions), metrics (every numeric metric of the baseline
and the candidate, their deltas, latency, throughput, speed-up, calibration, the worst
subgroup), tags (role, machine, GPU) and artifacts (report.md/html, metrics.json,
config.yaml, plots).  A sweep is a parent run with one child per trial — created by Ray
Tune's ``MLflowLoggerCallback`` — and the recommendation as the parent's tags.

Everything goes through ``MlflowClient`` with an explicit tracking URI: nothing depends on
(or changes) the process's global MLflow state.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from medray.tracking.config import TrackingConfig

log = logging.getLogger("medray.tracking")
ARTIFACTS = ("report.md", "report.html", "metrics.json", "config.yaml", "sweep.md", "sweep.json", "pareto.png")
# MLflow params are at most 6000 characters (older servers: 500); ours are short values.
_MAX_PARAM = 500


def client(t: TrackingConfig):
    from mlflow import MlflowClient

    uri = t.resolved_uri()
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    return MlflowClient(tracking_uri=uri)


def experiment_id(c, t: TrackingConfig) -> str:
    """The experiment named ``t.experiment`` (created beside the store when new)."""
    exp = c.get_experiment_by_name(t.experiment)
    if exp is not None:
        return exp.experiment_id
    uri = t.resolved_uri()
    location = None
    if uri.startswith("sqlite:///"):  # artifacts next to the database, not in the cwd
        location = (Path(uri[len("sqlite:///"):]).parent / "artifacts").as_uri()
    return c.create_experiment(t.experiment, artifact_location=location)


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(flatten(v, f"{prefix}{k}."))
    else:
        out[prefix[:-1]] = d
    return out


def _numbers(d: dict, prefix: str) -> dict[str, float]:
    return {f"{prefix}{k}": float(v) for k, v in d.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v}


def run_metrics(doc: dict) -> dict[str, float]:
    """Every numeric figure of the metrics document, keyed ``<role>.<name>`` (baseline,
    candidate) and ``delta.<metric>`` / ``speedup.<factor>`` for the candidate."""
    out: dict[str, float] = {}
    for r in doc["runs"]:
        role = r["role"]
        out.update(_numbers(r.get("metrics") or {}, f"{role}."))
        out.update(_numbers(r.get("latency_ms") or {}, f"{role}.latency_ms."))
        out.update(_numbers({k: r.get(k) for k in ("throughput_sps", "inference_sps", "startup_s", "wall_s",
                                                      "n_samples", "n_skipped")}, f"{role}."))
        cal = r.get("calibration") or {}
        out.update(_numbers({k: cal.get(k) for k in ("ece", "ece_equal_mass", "brier")}, f"{role}.calibration."))
        if role != "candidate":
            continue
        out.update(_numbers(r.get("metric_deltas") or {}, "delta."))
        out.update(_numbers(r.get("speedup") or {}, "speedup."))
        out.update(_numbers(r.get("agreement") or {}, "agreement."))
        w = r.get("worst_subgroup") or {}
        if w.get("delta_auc") is not None:
            out["worst_subgroup.delta_auc"] = float(w["delta_auc"])
        if r.get("flips"):
            out["flips.n"] = float(r["flips"]["n"])
    return out


def run_params(config: dict, doc: dict) -> dict[str, str]:
    """What was evaluated: the run's choices, the model and data identity, versions."""
    from medray.machine import machine

    m = doc.get("model") or {}
    ds = doc["dataset"]
    params: dict[str, Any] = {
        "backend": config.get("backend", {}).get("name"), "precision": config.get("precision"),
        "device": config.get("device"), "batch_size": config.get("batch_size"), "streams": config.get("streams"),
        "baseline": config.get("baseline"), "tta": config.get("tta"), "task": config.get("task"),
        "dataset": ds.get("name"), "split": ds.get("split"), "n_samples": ds.get("n_samples"),
        "model.source": m.get("source"), "model.arch": m.get("arch"), "model.checkpoint_sha256": m.get("checkpoint_sha256"),
        "model.path_sha256": m.get("path_sha256"), "model.output": m.get("output"),
        "threshold.method": (config.get("threshold") or {}).get("method"),
    }
    params.update({f"preprocess.{k}": v for k, v in (m.get("preprocessing") or {}).items()})
    params["dataset.samples_sha256"] = doc.get("dataset", {}).get("samples_sha256")
    from medray.backends import library_modules

    modules = ["torch", "ray", *library_modules()]
    mach = machine(modules=modules)
    params.update({f"version.{k}": mach[k] for k in ("python", *dict.fromkeys(modules)) if k in mach})
    params["version.medray"] = _version()
    return {k: str(v)[:_MAX_PARAM] for k, v in params.items() if v is not None}


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("medray")
    except Exception:
        return "?"


def _tags(role: str) -> dict[str, str]:
    from medray.machine import machine

    mach = machine()
    tags = {"medray.role": role, "medray.machine": f"{mach['cpu']}, {mach['cores']} cores",
            "medray.cpu_flags": " ".join(mach["cpu_flags"])}
    try:
        import torch

        if torch.cuda.is_available():
            tags["medray.gpu"] = torch.cuda.get_device_name(0)
    except Exception:
        pass
    return tags


def _log_artifacts(c, run_id: str, out: str) -> None:
    from medray import io as medray_io

    if not medray_io.is_local(out):
        log.info("tracking: output_dir %s is remote; artifacts are not copied into MLflow (the run has its URI)", out)
        return
    root = Path(medray_io.local_path(out))
    for name in ARTIFACTS:
        if (root / name).is_file():
            c.log_artifact(run_id, str(root / name))
    if (root / "plots").is_dir():
        c.log_artifacts(run_id, str(root / "plots"), artifact_path="plots")


def _batch(c, run_id: str, params: dict[str, str], metrics: dict[str, float], tags: dict[str, str]) -> None:
    import time

    from mlflow.entities import Metric, Param, RunTag

    now = int(time.time() * 1000)
    c.log_batch(run_id, metrics=[Metric(k, v, now, 0) for k, v in metrics.items()],
                params=[Param(k, v) for k, v in params.items()], tags=[RunTag(k, v) for k, v in tags.items()])


def log_evaluation(t: TrackingConfig, config: dict, doc: dict, out: str) -> str:
    """One MLflow run for an evaluation; returns its run id."""
    c = client(t)
    eid = experiment_id(c, t)
    name = next((r["name"] for r in doc["runs"] if r["role"] == "candidate"), doc["runs"][0]["name"])
    run = c.create_run(eid, run_name=name, tags=_tags("evaluation"))
    rid = run.info.run_id
    try:
        tags = {"medray.output_dir": str(out), "medray.runs": ", ".join(r["name"] for r in doc["runs"])}
        for w in (doc.get("warnings") or [])[:10]:
            tags[f"medray.warning.{len([k for k in tags if k.startswith('medray.warning')])}"] = w[:_MAX_PARAM]
        _batch(c, rid, run_params(config, doc), run_metrics(doc), tags)
        if t.artifacts:
            _log_artifacts(c, rid, out)
        c.set_terminated(rid, "FINISHED")
    except Exception:
        c.set_terminated(rid, "FAILED")
        raise
    log.info("tracking: MLflow run %s in experiment %r (%s)", rid, t.experiment, t.resolved_uri())
    return rid


# --------------------------------------------------------------------------- sweeps


def start_sweep(t: TrackingConfig, config: dict) -> tuple[str, Any]:
    """The sweep's parent run and Tune's MLflow callback, whose trial runs are its children."""
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    c = client(t)
    eid = experiment_id(c, t)
    parent = c.create_run(eid, run_name="sweep", tags=_tags("sweep")).info.run_id
    params = {f"sweep.{k}": str(v)[:_MAX_PARAM] for k, v in flatten(config.get("sweep") or {}).items() if v is not None}
    params.update({f"constraints.{k}": str(v) for k, v in (config.get("constraints") or {}).items() if v is not None})
    params.update({"baseline": str(config.get("baseline")), "dataset": str((config.get("data") or {}).get("name"))})
    _batch(c, parent, params, {}, {})
    callback = MLflowLoggerCallback(tracking_uri=t.resolved_uri(), experiment_name=t.experiment,
                                    tags={"mlflow.parentRunId": parent, "medray.role": "trial"})
    return parent, callback


def finish_sweep(t: TrackingConfig, parent: str, doc: dict, out: str) -> None:
    """The recommendation as the parent's tags, each trial's medray figures on its child run."""
    c = client(t)
    rec = doc.get("recommended")  # the recommended trial's record, or None
    best = rec.get("trial_id") if rec else None
    tags = {"medray.status": str(doc.get("status")), "medray.recommended": str(best)}
    if rec:
        tags["medray.recommended.label"] = str(rec.get("label"))
        tags["medray.recommended.command"] = str((rec.get("reproduce") or {}).get("command", ""))[:_MAX_PARAM]
    else:
        tags["medray.recommended.reason"] = str((doc.get("selection") or {}).get("reason"))
    metrics = {}
    if rec:
        metrics.update(_numbers({k: rec.get(k) for k in ("throughput_sps", "inference_sps")}, "recommended."))
        metrics.update(_numbers(rec.get("deltas") or {}, "recommended.delta."))
    _batch(c, parent, {}, metrics, tags)
    eid = c.get_run(parent).info.experiment_id
    children = c.search_runs([eid], filter_string=f"tags.mlflow.parentRunId = '{parent}'", max_results=10000)
    by_trial = {r.data.tags.get("trial_name", ""): r.info.run_id for r in children}
    for x in doc.get("trials", []):
        rid = next((v for k, v in by_trial.items() if x.get("trial_id") and k.endswith(str(x["trial_id"]))), None)
        if rid is None:
            continue
        m = _numbers({k: x.get(k) for k in ("throughput_sps", "inference_sps")}, "")
        m.update(_numbers(x.get("metrics") or {}, "candidate."))
        m.update(_numbers(x.get("deltas") or {}, "delta."))
        ttags = {"medray.label": str(x.get("label")), "medray.status": str(x.get("status")),
                 "medray.feasible": str(x.get("feasible")), "medray.recommended": str(x.get("trial_id") == best)}
        if x.get("violations"):
            ttags["medray.violations"] = "; ".join(x["violations"])[:_MAX_PARAM]
        _batch(c, rid, {}, m, ttags)
    if t.artifacts:
        _log_artifacts(c, parent, out)
    c.set_terminated(parent, "FINISHED" if doc.get("status") == "complete" else "KILLED")
    log.info("tracking: MLflow sweep run %s with %d trial runs (%s)", parent, len(children), t.resolved_uri())
