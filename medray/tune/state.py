"""What a sweep keeps in its ``output_dir``: the shared baseline run (saved once, reused by
a resumed sweep), the guard that a folder holds this sweep or none, and the trial records
read back from Tune's experiment (finished, failed, stopped or unfinished)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd

from medray.errors import ConfigError
from medray.io import as_dict
from medray.results import PoolPlan, RunResult
from medray.specs import RunSpec
from medray.tasks.base import Task
from medray.tune import select
from medray.tune.config import SweepJobConfig
from medray.tune.trials import EXPERIMENT, PREDICTIONS, baseline_point, trial_eval_config, trial_record

log = logging.getLogger("medray.tune")


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


def saved_statuses(exp: Path) -> dict[str, str]:
    """Trial statuses as Tune saved them: on an interruption the state is written before
    Tune stops the running trials, so they read RUNNING/PENDING there (resumable)."""
    from ray import tune

    try:
        return {t.trial_id: t.status for t in tune.ExperimentAnalysis(str(exp)).trials}
    except Exception as e:  # no state written: nothing is known to be finished
        log.warning("could not read the experiment state in %s: %s", exp, e)
        return {}


def checkpoint_dir(result) -> str | None:
    """The trial's checkpoint folder (the Result may not carry it after an interruption)."""
    if result.checkpoint is not None:
        return result.checkpoint.path
    found = sorted(Path(result.path).glob("checkpoint_*"))
    return str(found[-1]) if found else None


def collect(grid, statuses: dict[str, str]) -> list[dict]:
    """Trial records from Tune's results (failures and unfinished trials included)."""
    records = []
    for r in grid:
        m = r.metrics or {}
        # Trial folders are "<label>_<trial id>" (labels have no "_"; ids do: "7d263_00004").
        tid = m.get("trial_id") or Path(r.path).name.split("_", 1)[-1]
        saved = statuses.get(tid, "PENDING")
        if m.get("final") and m.get("record"):
            rec = json.loads(m["record"])
            rec["checkpoint"] = checkpoint_dir(r)
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


def check_output_dir(cfg: SweepJobConfig, out: Path) -> None:
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
    now = select._flatten(json.loads(json.dumps(comparable(cfg), default=str)))
    changed = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
    if changed:
        raise ConfigError(
            f"sweep.resume=true: the config differs from the interrupted sweep's in {changed[:6]}; "
            "resume with the same overrides, or start a new sweep in a new output_dir"
        )


def comparable(cfg: SweepJobConfig) -> dict:
    """The config keys that define a sweep's trials (constraints, objective and
    concurrency may change on resume: they do not change what a trial measures)."""
    d = as_dict(cfg)
    for k in ("output_dir", "log_level", "constraints"):
        d.pop(k, None)
    for k in ("resume", "objective", "max_concurrent_trials", "bootstrap_samples", "confidence"):
        d["sweep"].pop(k, None)
    return d
