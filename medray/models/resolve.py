"""Config + dataset → the :class:`ModelSpec` actors load (training the demo if needed)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from medray.config import ConfigError, EvalConfig
from medray.data.table import SampleTable
from medray.io import file_sha256
from medray.models.factory import CheckpointError, classifier_out_features, read_checkpoint
from medray.specs import ModelSpec

log = logging.getLogger("medray.models")


def demo_checkpoint_path(cfg: EvalConfig, table: SampleTable) -> Path:
    m = cfg.model
    from medray import io as medray_io

    # table.root may be a URI (a synthetic set uploaded to s3://...).
    gen = json.loads(medray_io.read_text(medray_io.join(table.root, "dataset.json"))).get("generator", {})
    tag = f"{table.name}-{m.arch}-{m.in_chans}x{m.input_size}-e{m.train.epochs}-s{m.train.seed}"
    # The generator version is part of the tag: a demo trained on other images is another model.
    tag += f"-n{gen.get('n_train', 'x')}-g{gen.get('seed', 'x')}-v{gen.get('version', 'x')}"
    return Path(cfg.cache_dir) / "models" / f"demo-{tag}.pt"


# The synthetic sets the demo models are trained on, with the values of
# conf/data/synthetic*.yaml: a real dataset's demo is then the very checkpoint that
# `data=synthetic` / `data=synthetic_multilabel` runs train and cache.
DEMO_DATA = {
    "binary": {"name": "synthetic", "n_train": 2000, "n_calibration": 300, "n_test": 1000, "image_size": 256},
    "multilabel": {"name": "synthetic_multilabel", "n_train": 2000, "n_calibration": 300, "n_test": 1000, "image_size": 256},
}


def demo_source(cfg: EvalConfig, table: SampleTable) -> SampleTable:
    """The dataset the demo model for ``table`` is trained on.

    Synthetic sets train their own; a real dataset gets the demo of its task and class
    count — the binary demo for a two-class folder, the 14-label demo for ChestX-ray14 —
    whose outputs are read as the dataset's classes by index.
    """
    from medray.config import DataConfig
    from medray.data.chestxray14 import LABELS as CHESTXRAY14_CLASSES
    from medray.data.sources import load_table

    if table.name in ("synthetic", "synthetic_multilabel"):
        return table
    if table.task == "multiclass" and len(table.classes) == 2:
        kind = "binary"
    elif table.task == "multilabel" and list(table.classes) == list(CHESTXRAY14_CLASSES):
        kind = "multilabel"
    else:
        raise ConfigError(
            f"model=demo: the demo models are a two-class classifier and a 14-label ChestX-ray14 classifier; "
            f"dataset {table.name} is {table.task} with {len(table.classes)} classes {table.classes[:5]}. "
            "Pass your model: model.name=<name> model.arch=<timm arch> model.checkpoint=<state dict>"
        )
    data = DataConfig(**DEMO_DATA[kind])
    return load_table(data, str(Path(cfg.cache_dir) / "data" / data.name))


def log_index_mapping(source: SampleTable, table: SampleTable) -> None:
    """Say, once, how the demo's outputs are read as the dataset's classes."""
    pairs = ", ".join(
        f"{i}: {a}" + ("" if a == b else f" -> {b}") for i, (a, b) in enumerate(zip(source.classes, table.classes))
    )
    log.warning(
        "model=demo: %s has no demo of its own; using the demo trained on the %s set (a synthetic stand-in, "
        "not a clinical model). Its outputs are read as %s's classes by index [%s]",
        table.name, source.name, table.name, pairs,
    )


def resolve_model(cfg: EvalConfig, table: SampleTable) -> ModelSpec:
    """Check the checkpoint against the dataset's classes; train the demo model if absent."""
    if table.task == "segmentation":  # 3D UNet: ROI shape, net settings, its own demo
        from medray.models.unet import resolve_segmentation_model

        return resolve_segmentation_model(cfg, table)
    m = cfg.model
    n_classes = len(table.classes)
    task = table.task
    if m.num_classes is not None and m.num_classes != n_classes:
        raise ConfigError(
            f"model.num_classes={m.num_classes} but dataset {table.name} has {n_classes} classes "
            f"{table.classes[:5]}...; set model.num_classes={n_classes} or use a matching dataset"
        )
    checkpoint = m.checkpoint
    by_index = False
    if checkpoint is None:  # the demo model (name=demo, enforced by ModelConfig)
        source = demo_source(cfg, table)
        by_index = source is not table
        path = demo_checkpoint_path(cfg, source)
        if not path.is_file():
            from medray.models.demo import train_demo

            log.info("demo model not cached: training %s on %s (a few minutes on 2 CPUs)", m.arch, source.name)
            summary = train_demo(
                source,
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
    if meta.get("task") and meta["task"] != task:
        raise ConfigError(
            f"model.checkpoint={checkpoint}: trained for a {meta['task']} task but dataset {table.name} is {task}; "
            "use a checkpoint trained for this task"
        )
    if by_index:
        log_index_mapping(source, table)
    elif meta.get("classes") and list(meta["classes"]) != list(table.classes):
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


def train_job(cfg) -> dict:
    """``jobs/train.py``: make sure the demo model of ``cfg.data`` is trained and cached.

    With ``retrain=true`` the cached demo checkpoint is deleted and trained again.
    """
    from medray.data.sources import load_table

    if cfg.model.checkpoint is not None:
        raise ConfigError(
            f"model.checkpoint={cfg.model.checkpoint}: jobs/train.py trains the demo model only; "
            "drop model.checkpoint (your own model is trained by your own code)"
        )
    table = load_table(cfg.data, cfg.data_root)
    spec = resolve_model(cfg, table)  # trains if absent
    if getattr(cfg, "retrain", False):
        Path(spec.checkpoint).unlink()
        log.info("retrain=true: removed %s, training again", spec.checkpoint)
        spec = resolve_model(cfg, table)
    print(f"medray: demo model for {table.name}: {spec.checkpoint}")
    return {"checkpoint": spec.checkpoint}
