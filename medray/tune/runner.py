"""The sweep: shared inputs built once on the driver, one Tune trial per configuration.

Driver, before the Tuner starts (nothing here is redone per trial):

1. the dataset, the evaluated subset (``sweep.limit``) and the model, via
   :func:`medray.pipeline.prepare.prepare`;
2. every distinct ``<backend>-<precision>`` artifact (ONNX, INT8 models, IR...) from the
   content-hash cache — a pair that cannot be prepared here is recorded with its reason
   and its trials fail with it;
3. the baseline, run once with :func:`~medray.pipeline.execute.execute` and saved in
   ``output_dir/baseline/`` (a resumed sweep reuses it).

All of it goes to the trials through the object store (``tune.with_parameters``).  A
trial validates its own config (an unsupported pair fails there, with the validation
message), runs the same :func:`~medray.pipeline.execute.execute` inside its placement
group, computes its entry with :func:`medray.report.document.build_metrics` against the shared
baseline, and reports it; its per-sample probabilities go into its Tune checkpoint.
A trial that raises is reported as failed with the reason; the sweep goes on.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path

import pandas as pd

from medray.config import ConfigError
from medray.data.table import SampleTable
from medray.io import as_dict
from medray.pipeline.prepare import Prepared
from medray.results import PoolPlan, RunResult
from medray.specs import ModelSpec, RunSpec
from medray.tasks.base import Task
from medray.tune import select, space, state
from medray.tune.config import SweepJobConfig
from medray.tune.trials import (
    EXPERIMENT,
    PREDICTIONS,
    RECORD,
    baseline_point,
    expected_trials,
    trial_eval_config,
    trial_record,
)

log = logging.getLogger("medray.tune")

RATE_OBJECTIVES = ("throughput", "capacity")  # higher samples/s is better; the others are latencies


# --------------------------------------------------------------------------- shared inputs


@dataclass
class Shared:
    """Everything the trials share; built once on the driver, read from the object store."""

    cfg: SweepJobConfig
    table: SampleTable
    samples: pd.DataFrame
    model: ModelSpec
    baseline: RunResult
    task: Task
    # <backend>-<precision> → the prepared spec's artifact and options (shipments).
    prepared: dict[str, dict] = field(default_factory=dict)
    prep_errors: dict[str, str] = field(default_factory=dict)
    plans: dict[tuple, PoolPlan] = field(default_factory=dict)
    plan_errors: dict[tuple, str] = field(default_factory=dict)


def prepare_pairs(cfg: SweepJobConfig) -> tuple[Prepared, dict[str, dict], dict[str, str]]:
    """Dataset, samples and baseline spec (``Prepared.specs[0]``), and every grid pair's
    artifact, built once."""
    from medray.pipeline.prepare import prepare

    base = prepare(trial_eval_config(cfg, baseline_point(cfg), with_baseline=True))
    prepared: dict[str, dict] = {}
    errors: dict[str, str] = {}
    for pair in cfg.sweep.pairs():
        point = {"run": pair, "batch_size": cfg.sweep.batch_sizes[0], "streams": cfg.sweep.streams[0]}
        try:
            pspec = prepare(trial_eval_config(cfg, point)).specs[0]
            prepared[pair] = {"artifact": pspec.artifact, "options": dict(pspec.options or {})}
        except Exception as e:  # recorded; the pair's trials fail with this reason
            errors[pair] = f"{type(e).__name__}: {e}"
            log.warning("%s: cannot be prepared on this machine, its trials will fail: %s", pair, errors[pair])
    return base, prepared, errors


def ship_prepared(cfg: SweepJobConfig, base_spec: RunSpec, prepared: dict[str, dict]) -> None:
    """Multi-node clusters: put checkpoint and artifacts in the object store once (the
    trials' actors materialise them; see :mod:`medray.pipeline.shipping`)."""
    import ray

    from medray.pipeline.shipping import ship, should_ship

    alive = sum(1 for n in ray.nodes() if n.get("Alive"))
    if not should_ship(cfg.ray.ship_artifacts, cfg.ray.address, alive):
        return
    shipped: dict = {}
    for pair, p in prepared.items():
        spec = replace(base_spec, name=pair, artifact=p["artifact"], options=p["options"])
        p["options"] = dict(ship(spec, shipped).options or {})


# --------------------------------------------------------------------------- baseline


# --------------------------------------------------------------------------- trial


def _limit_ray_data(plan: PoolPlan, reserve_cpus: float) -> None:
    """This trial's Ray Data budget: its actors plus its decode CPUs, not the cluster.

    The actors go into the trial's placement group (evaluate's ``_actor_placement``);
    the limit keeps the decode tasks of concurrent trials from taking each other's
    CPUs.  The DataContext is this trial process's own: nothing else is affected.
    """
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # one bar per trial, interleaved, is noise; Tune reports
    d = space.demand(plan, reserve_cpus)
    ctx.execution_options.resource_limits = ray.data.ExecutionResources.for_limits(cpu=d["CPU"], gpu=d["GPU"])


def _summary(entry: dict) -> dict:
    """The numbers of a run entry a sweep compares (plain floats)."""
    metrics = {k: v for k, v in (entry.get("metrics") or {}).items() if isinstance(v, (int, float)) or v is None}
    return {
        "throughput_sps": entry.get("throughput_sps"),
        "inference_sps": entry.get("inference_sps"),
        "startup_s": entry.get("startup_s"),
        "read_cache": entry.get("read_cache"),
        "latency_ms": entry.get("latency_ms"),
        "metrics": metrics,
        "deltas": entry.get("metric_deltas") or {},
        "agreement": entry.get("agreement"),
        # The group whose AUC dropped most (constraints.max_subgroup_auc_drop).
        "worst_subgroup": entry.get("worst_subgroup"),
        # Samples with NaN/inf outputs (constraints.max_nonfinite).
        "nonfinite": (entry.get("nonfinite") or {}).get("n", 0),
        "speedup": entry.get("speedup"),
        "effective_precision": (entry.get("effective_precision") or {}).get("executed"),
        "n_samples": entry.get("n_samples"),
        "n_skipped": entry.get("n_skipped"),
        "wall_s": entry.get("wall_s"),
        "pool": entry.get("pool"),
        "artifact": entry.get("artifact"),
        "warnings": [],
    }


def score(record: dict, cfg: SweepJobConfig) -> float:
    """The value Tune's searcher/scheduler maximise: the objective if the trial meets the
    constraints, else 0 (throughput) / a very poor value (latency)."""
    value = select.objective_value(record, cfg.sweep.objective)
    if value is None or select.violations(record, cfg.constraints, cfg.task):
        return _worst(cfg)
    return float(value)


def _worst(cfg: SweepJobConfig) -> float:
    """The score of a trial that cannot be recommended (failed or over a constraint)."""
    return 0.0 if cfg.sweep.objective in RATE_OBJECTIVES else -1e9


def run_trial(config: dict, shared: Shared) -> None:
    """Tune function trainable: evaluate one configuration, report it (never raises)."""
    import tempfile

    from ray import tune

    from medray.io import write_frame
    from medray.pipeline.execute import execute
    from medray.pipeline.prepare import build_specs
    from medray.report.document import build_metrics

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    cfg = shared.cfg
    saved = tune.get_checkpoint()
    done = _saved_record(saved) if saved is not None else None
    if done is not None:
        # Interrupted between its final report and its end: Tune restores the trial from
        # that report's checkpoint; the finished evaluation is reported again, not redone.
        log.info("trial %s: already evaluated (run %s), reporting its saved result", done["label"], done["run_uid"])
        tune.report(_final_metrics(done, cfg), checkpoint=saved)
        return
    t0 = time.perf_counter()
    rec = trial_record(config)
    rec.update(trial_id=tune.get_context().get_trial_id(), run_uid=uuid.uuid4().hex, status="failed", error=None)
    tmp = Path(tempfile.mkdtemp(prefix="medray-trial-"))  # the final report's checkpoint
    try:
        tcfg = trial_eval_config(cfg, config)  # unsupported pair / batch → ConfigError here
        pair = config["run"]
        if pair in shared.prep_errors:
            raise RuntimeError(f"preparing {pair} on the driver failed: {shared.prep_errors[pair]}")
        key = space.plan_key(config)
        if key in shared.plan_errors:
            raise ConfigError(shared.plan_errors[key])
        plan = shared.plans[key]
        _limit_ray_data(plan, cfg.ray.reserve_cpus_for_reading)
        p = shared.prepared[pair]
        task = shared.task
        spec = build_specs(tcfg, shared.model, task.backend_batch(tcfg))[0]
        spec = replace(spec, role="candidate", artifact=p["artifact"], options={**(spec.options or {}), **p["options"]})
        # The driver shipped what had to travel; the trial must not read the files again.
        tcfg = replace(tcfg, ray=replace(tcfg.ray, ship_artifacts=False, min_gpus=0))
        progress = _reporter(cfg, rec) if cfg.sweep.scheduler != "fifo" else None
        result = execute(tcfg, task, shared.samples, [spec], pool=plan, progress=progress)[0]
        doc = build_metrics(tcfg, shared.table, shared.samples, [shared.baseline, result], task)
        entry = doc["runs"][1]
        rec.update(_summary(entry))
        rec["warnings"] = [w for w in doc.get("warnings", []) if w.startswith(spec.name)]
        # The per-sample outputs the sweep's statistics pair with the baseline (masks stay out).
        write_frame(tmp / PREDICTIONS, result.predictions.drop(columns=["mask"], errors="ignore"))
        (tmp / "entry.json").write_text(json.dumps(entry, indent=1, default=str))
        rec["status"] = "ok"  # only once its predictions are saved: the statistics read them
    except Exception as e:  # recorded with its reason; the sweep goes on
        rec["error"] = f"{type(e).__name__}: {e}"
        log.warning("trial %s failed: %s", rec["label"], rec["error"])
    rec["trial_s"] = time.perf_counter() - t0
    (tmp / RECORD).write_text(json.dumps(rec, default=str))
    tune.report(_final_metrics(rec, cfg), checkpoint=tune.Checkpoint.from_directory(str(tmp)))


def _saved_record(checkpoint) -> dict | None:
    """The record in a restored trial's checkpoint (None for one written without it)."""
    with checkpoint.as_directory() as d:
        path = Path(d) / RECORD
        return json.loads(path.read_text()) if path.is_file() else None


def _final_metrics(rec: dict, cfg: SweepJobConfig) -> dict:
    """A trial's final Tune report (its record travels whole, as JSON)."""
    ok = rec["status"] == "ok"
    return {
        "final": True,
        "ok": ok,
        "score": score(rec, cfg) if ok else _worst(cfg),
        "throughput_sps": rec.get("throughput_sps") or 0.0,
        "record": json.dumps(rec, default=str),
    }


def _reporter(cfg: SweepJobConfig, rec: dict):
    """Intermediate reports for the scheduler: running throughput every N batches."""
    from ray import tune

    state = {"batches": 0, "samples": 0, "t0": None}

    def progress(batch: dict) -> None:
        now = time.perf_counter()
        if state["t0"] is None:  # from the first result on, as the steady throughput
            state["t0"] = now
            return
        state["batches"] += 1
        state["samples"] += len(batch["sample_id"])
        if state["batches"] % cfg.sweep.report_every == 0:
            tput = state["samples"] / max(now - state["t0"], 1e-9)
            value = tput if cfg.sweep.objective in RATE_OBJECTIVES else -1e3 / tput
            tune.report({"final": False, "ok": True, "score": value, "throughput_sps": tput, "record": ""})

    return progress


# --------------------------------------------------------------------------- driver


def run(cfg: SweepJobConfig, choices: dict[str, str] | None = None) -> dict:
    """Run (or resume) the sweep of ``cfg``; write sweep.json, sweep.md and the plot."""
    import ray
    from ray import tune

    from medray import io as medray_io
    from medray.pipeline.cluster import preflight, start_ray
    from medray.tune.report import finish

    if not medray_io.is_local(cfg.output_dir):
        raise ConfigError(f"output_dir={cfg.output_dir!r}: a sweep writes to a local path (or a shared mount)")
    space.search_algorithm(cfg, 1)  # an unavailable search library fails now, not after the baseline
    out = Path(medray_io.local_path(cfg.output_dir))
    state.check_output_dir(cfg, out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    base_cfg = trial_eval_config(cfg, baseline_point(cfg), with_baseline=True)
    preflight(base_cfg)
    points = space.grid_points(cfg)
    log.info("sweep: %d configurations (%s) × %s; %s search, %s scheduler", len(points),
             ", ".join(cfg.sweep.pairs()), space.axes(cfg), cfg.sweep.search, cfg.sweep.scheduler)
    base, prepared, prep_errors = prepare_pairs(cfg)
    table, samples, base_spec, task = base.table, base.samples, base.specs[0], base.task
    if not cfg.sweep.resume:
        (out / "sweep_config.json").write_text(json.dumps(state.comparable(cfg), indent=1, default=str))
    started = start_ray(base_cfg)
    parent = None
    try:
        callbacks = []
        if cfg.tracking.backend == "mlflow":  # a parent run; Tune's callback makes one child per trial
            from medray.tracking.mlflow import start_sweep

            parent, cb = start_sweep(cfg.tracking, as_dict(cfg))
            callbacks.append(cb)
        baseline = state.load_baseline(out / "baseline", base_spec, samples) if cfg.sweep.resume else None
        if baseline is None:
            baseline = state.run_baseline(cfg, task, samples, base_spec, out)
        else:
            log.info("baseline %s: reusing the interrupted sweep's run (%d samples)", base_spec.name, len(baseline.predictions))
        ship_prepared(cfg, base_spec, prepared)
        shape = space.ClusterShape.current()
        plans, plan_errors = space.plan_all(cfg, shape)
        groups = {k: space.bundles(p) for k, p in plans.items()}
        demands = {k: space.demand(p, cfg.ray.reserve_cpus_for_reading) for k, p in plans.items()}
        concurrent = space.max_concurrent(cfg, list(demands.values()), shape)
        log.info("trials (placement group of their actors + free decode CPUs): %s; %d at a time on %g CPU / %g GPU",
                 {f"{b}×{s}": f"{plans[(b, s)].describe()} + {cfg.ray.reserve_cpus_for_reading:g} CPU"
                  for (b, s) in plans}, concurrent, shape.total_cpus, shape.total_gpus)
        shared = Shared(cfg, table, samples, base_spec.model, baseline, task, prepared, prep_errors, plans, plan_errors)
        trainable = tune.with_resources(tune.with_parameters(run_trial, shared=shared), space.TrialResources(groups))
        exp = out / EXPERIMENT
        if cfg.sweep.resume and tune.Tuner.can_restore(str(exp)):
            log.info("resuming the Tune experiment in %s (finished trials are kept)", exp)
            tuner = tune.Tuner.restore(str(exp), trainable, resume_unfinished=True, resume_errored=False,
                                       restart_errored=False)
        else:
            if exp.exists():  # interrupted before its first state was written
                shutil.rmtree(exp)
            tuner = tune.Tuner(
                trainable,
                param_space=space.param_space(cfg),
                tune_config=tune.TuneConfig(
                    metric=space.METRIC,
                    mode=space.MODE,
                    search_alg=space.search_algorithm(cfg, concurrent),
                    scheduler=space.scheduler(cfg),
                    num_samples=cfg.sweep.num_samples,
                    # A trial's process (imports, Ray Data driver) is reused when the next
                    # trial asks for the same placement group.
                    reuse_actors=True,
                    trial_name_creator=_trial_name,
                    trial_dirname_creator=_trial_name,
                ),
                run_config=tune.RunConfig(
                    name=EXPERIMENT,
                    storage_path=str(out),
                    failure_config=tune.FailureConfig(max_failures=0, fail_fast=False),
                    verbose=1,
                    callbacks=callbacks,
                ),
            )
        grid = tuner.fit()
        records = state.collect(grid, state.saved_statuses(exp))
        n_done = sum(1 for t in records if t["status"] != "unfinished")
        interrupted = n_done < expected_trials(cfg)
    finally:
        if started:
            ray.shutdown()
    doc = finish(shared, out, records, interrupted, time.perf_counter() - t0, choices)
    if parent is not None:
        from medray.tracking.mlflow import finish_sweep

        finish_sweep(cfg.tracking, parent, doc, str(out))
        doc["tracking"] = {"mlflow_run_id": parent, "uri": cfg.tracking.resolved_uri()}
    return doc


def _trial_name(trial) -> str:
    return f"{space.trial_label(trial.config)}_{trial.trial_id}"
