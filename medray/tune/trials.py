"""What a sweep trial is: its evaluate config, its record, how many a sweep has.

Shared by the runner (which runs trials) and the report (which rebuilds the recommended
trial's config for its reproduce command), so neither imports the other.
"""

from __future__ import annotations

from dataclasses import fields, replace
from typing import Any

from medray.backends import REGISTRY, config_class
from medray.config import ConfigError, EvalConfig
from medray.specs import RunName
from medray.tasks import task_class
from medray.tune import space
from medray.tune.config import SweepJobConfig, cell_precision

EXPERIMENT = "tune"  # output_dir/tune: the Tune experiment (trial dirs, checkpoints, state)
PREDICTIONS = "predictions.parquet"  # in each trial's checkpoint
RECORD = "record.json"  # in each trial's checkpoint: the trial's record, to report it again on a restore


def trial_eval_config(cfg: SweepJobConfig, config: dict, with_baseline: bool = False) -> EvalConfig:
    """The evaluate config of one trial (validated: an unsupported pair raises here).

    It is the sweep's root config with the trial's backend, precision, batch size and
    streams, and ``data.limit = sweep.limit``; the same object the reproduce command
    must rebuild.
    """
    name, cell = RunName.parse(config["run"], key="run")
    precision, repair = cell_precision(cell)
    if name not in REGISTRY:
        raise ConfigError(f"run={config['run']!r}: available backends: {', '.join(sorted(REGISTRY))}")
    opts = dict(cfg.sweep.backend_options.get(name) or {})
    if name == cfg.backend.name and not opts:
        backend = replace(cfg.backend)  # the root's backend group options (e.g. backend.threads=)
    else:
        backend = config_class(name)(**opts)
    values: dict[str, Any] = {f.name: getattr(cfg, f.name) for f in fields(EvalConfig) if f.init}
    limit = cfg.sweep.limit if cfg.sweep.limit is not None else cfg.data.limit
    values.update(
        backend=backend,
        precision=precision,
        batch_size=int(config["batch_size"]),
        streams=int(config["streams"]),
        data=replace(cfg.data, limit=limit),
        baseline=cfg.baseline if with_baseline else None,
        resume=False,
    )
    if repair:
        values["quantization"] = repair_quantization(cfg)
    values.update(task_class(cfg.task).trial_values(cfg, config))
    return EvalConfig(**values)


def repair_quantization(cfg: SweepJobConfig):
    """An ``int8+repair`` cell's quantization options: the repair, its limits the sweep's
    constraints on the task's metrics (and subgroups), so the repaired model is chosen
    under the constraints it is ranked by."""
    task = task_class(cfg.task)
    c = cfg.constraints
    limits = {m.key: float(getattr(c, m.constraint)) for m in task.sweep_metrics
              if m.constraint and getattr(c, m.constraint) is not None}
    sub = c.max_subgroup_auc_drop if task.subgroup_delta else None
    return replace(cfg.quantization, repair=True, max_drop=None, limits=limits, max_subgroup_drop=sub)


def baseline_point(cfg: SweepJobConfig) -> dict:
    """The shared baseline's point: the root's batch (a backend call's inputs: the task says)."""
    return {"run": cfg.baseline, "batch_size": task_class(cfg.task).backend_batch(cfg), "streams": cfg.streams}


def trial_record(config: dict) -> dict:
    backend, precision = RunName.parse(config["run"], key="run")
    rec = {"label": space.trial_label(config), "backend": backend, "precision": precision}
    rec.update({k: config[k] for k in ("batch_size", "streams", "overlap", "sw_batch_size", "mirroring") if k in config})
    return rec


def expected_trials(cfg: SweepJobConfig) -> int:
    """Trials a complete sweep has (Tune creates them lazily, so the grid says)."""
    n = cfg.sweep.num_samples
    return n * len(space.grid_points(cfg)) if cfg.sweep.search == "grid" else n
