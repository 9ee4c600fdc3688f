"""Everything a run needs before Ray starts: dataset, evaluated samples, model, run specs
and their artifacts.  Whatever can fail on the config or the inputs fails here."""

from __future__ import annotations

import logging
from typing import Any, NamedTuple

import pandas as pd

from medray.backends import get_backend
from medray.backends.artifacts import ArtifactCache
from medray.config import EvalConfig
from medray.data.load import calibration_samples, load_table, select_samples
from medray.data.table import SampleTable
from medray.monitoring import step
from medray.specs import ModelSpec, RunName, RunSpec
from medray.tasks import Task, make_task

log = logging.getLogger("medray.prepare")


class Prepared(NamedTuple):
    """The inputs of :func:`medray.pipeline.execute.execute` and of the report."""

    table: SampleTable
    samples: pd.DataFrame
    specs: list[RunSpec]
    task: Task


def build_specs(cfg: EvalConfig, model: ModelSpec, batch_size: int | None = None) -> list[RunSpec]:
    """The baseline (if any) then the candidate; one spec if they are the same run."""
    runs: list[tuple[str, Any, str]] = []
    base = cfg.baseline_backend()
    if base is not None:
        runs.append(("baseline", base[0], base[1]))
    if base is None or RunName(base[0].name, base[1]) != RunName(cfg.backend.name, cfg.precision):
        runs.append(("candidate", cfg.backend, cfg.precision))
    return [
        RunSpec(
            name=str(RunName(backend.name, precision)),
            role=role,
            backend=backend,
            precision=precision,
            device=cfg.device,
            batch_size=batch_size or cfg.batch_size,
            streams=cfg.streams,
            model=model,
            warmup_batches=cfg.warmup_batches,
            tta=cfg.tta,
        )
        for role, backend, precision in runs
    ]


# One backend call's inputs may take at most this share of the machine's memory: a batch
# size typed with a few zeros too many (1e9) allocated a 101 TiB warm-up batch in the actor.
MAX_BATCH_MEMORY_SHARE = 0.5


def check_node(cfg: EvalConfig, specs: list[RunSpec]) -> None:
    """Before Ray starts: each run's backend runs its precision on this machine's device
    (the embedded Ray's actors run here; a cluster's nodes are checked by
    :mod:`medray.doctor.cluster`), and one backend call's inputs fit in memory."""
    import math

    from medray.doctor.checks import capability
    from medray.errors import ConfigError
    from medray.machine import machine

    if cfg.ray.address is None:
        for s in specs:
            r = capability(s.backend.name, s.precision, s.device)
            if r.status != "ok":
                key = "baseline" if s.role == "baseline" else "precision"
                raise ConfigError(f"{key}={s.name}: this machine cannot run backend={s.backend.name} precision="
                                  f"{s.precision} on device={s.device} ({r.status}): {r.reason}" + (f"; {r.fix}" if r.fix else ""))
    memory = (machine(versions=False)["memory_gib"] or 0) * 2**30
    for s in specs:
        need = s.batch_size * math.prod(s.model.input_shape) * 4
        if memory and need > MAX_BATCH_MEMORY_SHARE * memory:
            key = "batch_size" if s.model.spatial is None else "sliding_window.sw_batch_size"
            raise ConfigError(f"{key}={s.batch_size}: one backend call's inputs would take {need / 2**30:.1f} GiB, more "
                              f"than half of this machine's {memory / 2**30:.1f} GiB; use a smaller {key}")


def prepare(cfg: EvalConfig) -> Prepared:
    """Dataset, evaluated samples, and run specs with their artifacts built (no Ray)."""
    table = load_table(cfg.data, cfg.data_root)
    task = make_task(cfg, table)
    samples = select_samples(table, cfg.data.split, cfg.data.limit, cfg.data.seed)
    # Unreadable samples the driver can see: fail now (data.on_error=fail) or mark them skipped.
    samples = task.screen(cfg, table, samples)
    # Long steps outside Ray Data (demo training, exports, calibration, engine builds)
    # log their start, a heartbeat every 30 s and their end.
    with step("model: resolve checkpoint (trains the demo model if not cached)", log):
        model = task.resolve_model(cfg, table)
    # Classes the model has no output for (matched by name) are not scored: every metric,
    # clinical section and sweep statistic runs over the scored ones; the report lists the rest.
    table = table.without(list((model.labels or {}).get("not_scored") or []))
    log.info("%s (split %s)", task.describe(table, samples, model), cfg.data.split)
    specs = build_specs(cfg, model, task.backend_batch(cfg))
    check_node(cfg, specs)
    cache = ArtifactCache(cfg.cache_dir)
    # quantization: options of INT8 builds that are not a backend's own (NNCF max_drop).
    context: dict[str, Any] = {"table": table, "evaluated": samples, "quantization": cfg.quantization}
    if any(s.precision == "int8" for s in specs):
        calib = calibration_samples(table, cfg.calibration.split, cfg.calibration.num_samples, cfg.calibration.seed, samples)
        context["calibration"] = task.calibration(cfg, table, calib, model)
        if cfg.quantization.repair:  # the INT8 repair's validation samples and the task's metric
            context["repair"] = task.repair_validation(cfg, table, samples, model, calib)
            if context["repair"] is None:
                from medray.errors import fail

                fail("quantization.repair", True, f"task={task.name} has no validation metric to judge a repair; remove it")
    for spec in specs:
        with step(f"{spec.name}: prepare artifact", log):
            spec.artifact = get_backend(spec.backend.name).prepare_model(spec, cache, context)
    return Prepared(table, samples, specs, task)


def train(cfg: EvalConfig) -> dict:
    """``jobs/train.py``: make sure the demo model of ``cfg.data`` is trained and cached,
    through the same resolve path an evaluation takes (``retrain=true``: trained again)."""
    from pathlib import Path

    from medray.errors import ConfigError

    if cfg.model.checkpoint is not None:
        raise ConfigError(
            f"model.checkpoint={cfg.model.checkpoint}: jobs/train.py trains the demo model only; "
            "drop model.checkpoint (your own model is trained by your own code)"
        )
    table = load_table(cfg.data, cfg.data_root)
    task = make_task(cfg, table)
    spec = task.resolve_model(cfg, table)  # trains if absent
    if getattr(cfg, "retrain", False):
        Path(spec.checkpoint).unlink()
        log.info("retrain=true: removed %s, training again", spec.checkpoint)
        spec = task.resolve_model(cfg, table)
    return {"checkpoint": spec.checkpoint, "message": f"demo model for {table.name}: {spec.checkpoint}"}
