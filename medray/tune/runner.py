"""The sweep: shared inputs built once on the driver, one Tune trial per configuration.

Driver, before the Tuner starts (nothing here is redone per trial):

1. the dataset, the evaluated subset (``sweep.limit``) and the model, via
   :func:`medray.pipeline.evaluate.prepare`;
2. every distinct ``<backend>-<precision>`` artifact (ONNX, INT8 models, IR...) from the
   content-hash cache — a pair that cannot be prepared here is recorded with its reason
   and its trials fail with it;
3. the baseline, run once with :func:`~medray.pipeline.evaluate.execute` and saved in
   ``output_dir/baseline/`` (a resumed sweep reuses it).

All of it goes to the trials through the object store (``tune.with_parameters``).  A
trial validates its own config (an unsupported pair fails there, with the validation
message), runs the same :func:`~medray.pipeline.evaluate.execute` inside its placement
group, computes its entry with :func:`medray.report.build_metrics` against the shared
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

from medray.config import ConfigError, SweepJobConfig
from medray.data.table import SampleTable
from medray.io import as_dict
from medray.pipeline.prepare import Prepared
from medray.results import PoolPlan, RunResult
from medray.specs import ModelSpec, RunSpec
from medray.tasks.base import Task
from medray.tune import select, space
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


def run_baseline(cfg: SweepJobConfig, task: Task, samples: pd.DataFrame, base_spec: RunSpec, out: Path) -> RunResult:
    """The shared baseline: evaluated once, saved for a resumed sweep."""
    from medray.pipeline.execute import execute

    bcfg = trial_eval_config(cfg, baseline_point(cfg), with_baseline=True)
    result = execute(bcfg, task, samples, [base_spec])[0]
    save_baseline(result, out / "baseline")
    return result


def save_baseline(result: RunResult, folder: Path) -> None:
    from medray.io import write_frame

    folder.mkdir(parents=True, exist_ok=True)
    write_frame(folder / PREDICTIONS, result.predictions)
    if result.skipped is not None and len(result.skipped):
        result.skipped.astype(str).to_parquet(folder / "skipped.parquet", index=False)
    meta = {
        "name": result.spec.name,
        "wall_s": result.wall_s,
        "throughput_sps": result.throughput_sps,
        "inference_sps": result.inference_sps,
        "startup_s": result.startup_s,
        "read_cache": result.read_cache,
        "pool": as_dict(result.pool),
        "effective_precision": result.effective_precision,
        "sample_ids": sorted(map(str, result.predictions["sample_id"])),
    }
    (folder / "result.json").write_text(json.dumps(meta, indent=1, default=str))


def load_baseline(folder: Path, base_spec: RunSpec, samples: pd.DataFrame) -> RunResult | None:
    """The saved baseline, if it was run on exactly these samples (else None)."""
    from medray.io import read_frame

    meta_path = folder / "result.json"
    if not (meta_path.is_file() and (folder / PREDICTIONS).is_file()):
        return None
    meta = json.loads(meta_path.read_text())
    df = read_frame(folder / PREDICTIONS)
    skipped = pd.read_parquet(folder / "skipped.parquet") if (folder / "skipped.parquet").is_file() else None
    evaluated = set(map(str, samples["sample_id"])) - set(map(str, skipped["sample_id"] if skipped is not None else []))
    if meta.get("name") != base_spec.name or set(meta["sample_ids"]) != evaluated:
        raise ConfigError(
            f"sweep.resume=true: {folder} holds a baseline {meta.get('name')} over {len(meta['sample_ids'])} other "
            "samples than this config selects; resume with the same overrides, or use a new output_dir"
        )
    return RunResult(base_spec, df, meta["wall_s"], meta["throughput_sps"], PoolPlan(**meta["pool"]),
                     meta["effective_precision"], skipped, inference_sps=meta.get("inference_sps"),
                     startup_s=meta.get("startup_s"), read_cache=meta.get("read_cache"))


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


def _saved_statuses(exp: Path) -> dict[str, str]:
    """Trial statuses as Tune saved them: on an interruption the state is written before
    Tune stops the running trials, so they read RUNNING/PENDING there (resumable)."""
    from ray import tune

    try:
        return {t.trial_id: t.status for t in tune.ExperimentAnalysis(str(exp)).trials}
    except Exception as e:  # no state written: nothing is known to be finished
        log.warning("could not read the experiment state in %s: %s", exp, e)
        return {}


def _checkpoint_dir(result) -> str | None:
    """The trial's checkpoint folder (the Result may not carry it after an interruption)."""
    if result.checkpoint is not None:
        return result.checkpoint.path
    found = sorted(Path(result.path).glob("checkpoint_*"))
    return str(found[-1]) if found else None


def _collect(grid, statuses: dict[str, str]) -> list[dict]:
    """Trial records from Tune's results (failures and unfinished trials included)."""
    records = []
    for r in grid:
        m = r.metrics or {}
        # Trial folders are "<label>_<trial id>" (labels have no "_"; ids do: "7d263_00004").
        tid = m.get("trial_id") or Path(r.path).name.split("_", 1)[-1]
        saved = statuses.get(tid, "PENDING")
        if m.get("final") and m.get("record"):
            rec = json.loads(m["record"])
            rec["checkpoint"] = _checkpoint_dir(r)
        else:
            rec = trial_record(r.config)
            rec["trial_id"] = tid
            if r.error is not None:  # the trial's process died (OOM kill, node loss...)
                rec.update(status="failed", error=f"{type(r.error).__name__}: {r.error}".strip()[:2000])
            elif saved == "TERMINATED":  # ended without its final report: the scheduler stopped it
                rec.update(status="stopped", error="stopped early by the scheduler",
                           throughput_sps=m.get("throughput_sps"))
            else:
                rec.update(status="unfinished", error=None)
        rec["path"] = r.path
        records.append(rec)
    return records


def _check_output_dir(cfg: SweepJobConfig, out: Path) -> None:
    """A fresh sweep needs a fresh output_dir; a resumed one the same config."""
    saved = out / "sweep_config.json"
    if not cfg.sweep.resume:
        if saved.exists() or (out / EXPERIMENT).exists():
            raise ConfigError(
                f"output_dir={str(out)!r} already holds a sweep; add sweep.resume=true to continue it, "
                "or choose a new output_dir"
            )
        return
    if not saved.is_file():
        raise ConfigError(
            f"sweep.resume=true: output_dir={str(out)!r} holds no sweep (no sweep_config.json); "
            "point output_dir at the interrupted sweep's folder"
        )
    before = select._flatten(json.loads(saved.read_text()))
    now = select._flatten(json.loads(json.dumps(_comparable(cfg), default=str)))
    changed = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
    if changed:
        raise ConfigError(
            f"sweep.resume=true: the config differs from the interrupted sweep's in {changed[:6]}; "
            "resume with the same overrides, or start a new sweep in a new output_dir"
        )


def _comparable(cfg: SweepJobConfig) -> dict:
    """The config keys that define a sweep's trials (constraints, objective and
    concurrency may change on resume: they do not change what a trial measures)."""
    d = as_dict(cfg)
    for k in ("output_dir", "log_level", "constraints"):
        d.pop(k, None)
    for k in ("resume", "objective", "max_concurrent_trials", "bootstrap_samples", "confidence"):
        d["sweep"].pop(k, None)
    return d


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
    _check_output_dir(cfg, out)
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
        (out / "sweep_config.json").write_text(json.dumps(_comparable(cfg), indent=1, default=str))
    started = start_ray(base_cfg)
    parent = None
    try:
        callbacks = []
        if cfg.tracking.backend == "mlflow":  # a parent run; Tune's callback makes one child per trial
            from medray.tracking import start_sweep

            parent, cb = start_sweep(cfg.tracking, as_dict(cfg))
            callbacks.append(cb)
        baseline = load_baseline(out / "baseline", base_spec, samples) if cfg.sweep.resume else None
        if baseline is None:
            baseline = run_baseline(cfg, task, samples, base_spec, out)
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
        records = _collect(grid, _saved_statuses(exp))
        n_done = sum(1 for t in records if t["status"] != "unfinished")
        interrupted = n_done < expected_trials(cfg)
    finally:
        if started:
            ray.shutdown()
    doc = finish(cfg, out, task, table, samples, baseline, records, prep_errors, interrupted,
                 time.perf_counter() - t0, choices)
    if parent is not None:
        from medray.tracking import finish_sweep

        finish_sweep(cfg.tracking, parent, doc, str(out))
        doc["tracking"] = {"mlflow_run_id": parent, "uri": cfg.tracking.resolved_uri()}
    return doc


def _trial_name(trial) -> str:
    return f"{space.trial_label(trial.config)}_{trial.trial_id}"
