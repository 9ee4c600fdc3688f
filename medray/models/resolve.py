"""Config + dataset → the :class:`ModelSpec` actors load (training the demo if needed)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from medray.backends.base import ModelSpec
from medray.config import ConfigError, EvalConfig
from medray.data.table import SampleTable
from medray.models.factory import CheckpointError, classifier_out_features, file_sha256, read_checkpoint

log = logging.getLogger("medray.models")


def demo_checkpoint_path(cfg: EvalConfig, table: SampleTable) -> Path:
    m = cfg.model
    gen = json.loads((Path(table.root) / "dataset.json").read_text()).get("generator", {})
    tag = f"{table.name}-{m.arch}-{m.in_chans}x{m.input_size}-e{m.train.epochs}-s{m.train.seed}"
    tag += f"-n{gen.get('n_train', 'x')}-g{gen.get('seed', 'x')}"
    return Path(cfg.cache_dir) / "models" / f"demo-{tag}.pt"


def resolve_model(cfg: EvalConfig, table: SampleTable) -> ModelSpec:
    """Check the checkpoint against the dataset's classes; train the demo model if absent."""
    m = cfg.model
    n_classes = len(table.classes)
    task = table.task
    if m.num_classes is not None and m.num_classes != n_classes:
        raise ConfigError(
            f"model.num_classes={m.num_classes} but dataset {table.name} has {n_classes} classes "
            f"{table.classes[:5]}...; set model.num_classes={n_classes} or use a matching dataset"
        )
    checkpoint = m.checkpoint
    if checkpoint is None:  # the demo model (name=demo, enforced by ModelConfig)
        path = demo_checkpoint_path(cfg, table)
        if not path.is_file():
            from medray.models.demo import train_demo

            log.info("demo model not cached: training %s on %s (a few minutes on 2 CPUs)", m.arch, table.name)
            summary = train_demo(
                table,
                arch=m.arch,
                input_size=m.input_size,
                in_chans=m.in_chans,
                out_path=path,
                epochs=m.train.epochs,
                batch_size=m.train.batch_size,
                lr=m.train.lr,
                seed=m.train.seed,
            )
            log.info("demo model trained: %s", {k: v for k, v in summary.items() if not isinstance(v, (list, dict))})
        checkpoint = str(path)
    try:
        sd, meta = read_checkpoint(checkpoint, trust=m.trust_checkpoint)
    except CheckpointError as e:
        raise ConfigError(str(e)) from None
    out = classifier_out_features(m.arch, sd)
    if out is not None and out != n_classes:
        raise ConfigError(
            f"model.checkpoint={checkpoint}: its classifier has {out} outputs but dataset {table.name} "
            f"has {n_classes} classes; use a checkpoint trained on these classes, or the matching data=..."
        )
    if meta.get("classes") and list(meta["classes"]) != list(table.classes):
        raise ConfigError(
            f"model.checkpoint={checkpoint}: trained on classes {meta['classes']} but dataset "
            f"{table.name} has {table.classes}; the class order must match"
        )
    if meta.get("input_size") and meta["input_size"] != m.input_size:
        raise ConfigError(
            f"model.input_size={m.input_size} but the checkpoint was trained at {meta['input_size']} px; "
            f"set model.input_size={meta['input_size']}"
        )
    return ModelSpec(
        arch=m.arch,
        num_classes=n_classes,
        in_chans=m.in_chans,
        input_size=m.input_size,
        checkpoint=checkpoint,
        checkpoint_sha256=file_sha256(checkpoint),
        trust_checkpoint=m.trust_checkpoint,
        task=task,
    )
