"""``model=nnunet``: the trained model folder checked against the dataset before Ray starts,
as a :class:`~medray.specs.ModelSpec` of one member per fold."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from medray.errors import ConfigError
from medray.io import file_sha256

if TYPE_CHECKING:
    from medray.data.table import SampleTable
    from medray.models.config import ModelRequest
    from medray.specs import ModelSpec

log = logging.getLogger("medray.models.nnunet")

CHECKPOINT = "checkpoint_final.pth"


def model_labels(dataset_json: dict) -> dict[str, tuple[int, ...]]:
    """dataset.json's labels as ``{name: label values}`` (a region: several), ignore label apart."""
    out = {}
    for name, v in (dataset_json.get("labels") or {}).items():
        if name == "ignore":
            continue
        out[str(name)] = tuple(int(x) for x in v) if isinstance(v, (list, tuple)) else (int(v),)
    return out


def check_dataset(info, table: SampleTable) -> None:
    """The dataset's labels and channels are the model's (names, values, count)."""
    mine = model_labels(info.dataset_json)
    names = list(mine)
    if list(table.classes) != names:
        raise ConfigError(f"model.path={info.folder}: the model's labels {names} (its dataset.json) differ from dataset "
                          f"{table.name}'s {list(table.classes)}; evaluate it on data labelled as it was trained")
    theirs = table.label_values()
    if theirs != mine:
        diff = {k: (mine[k], theirs.get(k)) for k in mine if mine[k] != theirs.get(k)}
        raise ConfigError(f"model.path={info.folder}: label values differ from dataset {table.name}'s (model, data): {diff}")
    if table.channels and len(table.channels) != info.num_input_channels:
        raise ConfigError(f"model.path={info.folder}: the model takes {info.num_input_channels} channel(s) "
                          f"{list(info.dataset_json.get('channel_names', {}).values())}, dataset {table.name} has "
                          f"{len(table.channels)} {table.channels}")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def resolve_nnunet(cfg: ModelRequest, table: SampleTable) -> ModelSpec:
    """The folder's folds, plans and checkpoints checked (each fold's network built with its
    weights once, here), the dataset checked against the model's labels and channels."""
    from medray.models.nnunet.folder import fold_network, managers, read_folder
    from medray.specs import ModelSpec

    m = cfg.model
    info, ckpts = read_folder(m.path, m.folds, m.checkpoint or CHECKPOINT, m.trust_checkpoint)
    check_dataset(info, table)
    if cfg.roi_size and list(cfg.roi_size) != info.patch_size:
        raise ConfigError(f"sliding_window.roi_size={list(cfg.roi_size)}: an nnU-Net model runs at its plan's patch size "
                          f"{info.patch_size}; remove it")
    if len(info.patch_size) != 3:
        log.info("model=nnunet: a 2D configuration (%s) run slice by slice on the volumes", info.configuration)
    net = {"configuration": info.configuration, "trainer": info.trainer, "num_input_channels": info.num_input_channels,
           "num_heads": info.num_heads, "mirror_axes": info.mirror_axes,
           "plans_sha256": _sha(Path(info.folder) / "plans.json"), "dataset_sha256": _sha(Path(info.folder) / "dataset.json")}
    for f, ck, path in zip(info.folds, ckpts, info.checkpoints):  # a checkpoint that does not fit fails here
        fold_network({**net, "folder": info.folder}, ck["network_weights"], f"model.folds: fold {f} ({path})")
    pm, cm, lm, _ = managers(info.folder, info.configuration)
    prep = {"recipe": "nnunet", "configuration": info.configuration, "plans": pm.plans_name, "trainer": info.trainer,
            "folds": info.folds, "spacing": [float(v) for v in cm.spacing], "transpose": list(pm.transpose_forward),
            "normalization": list(cm.normalization_schemes), "patch_size": info.patch_size,
            "regions": info.has_regions, "plans_sha256": net["plans_sha256"]}
    members = [{"name": f"fold_{f}", "checkpoint": p, "checkpoint_sha256": file_sha256(p)}
               for f, p in zip(info.folds, info.checkpoints)]
    log.info("model=nnunet: %s, %s, folds %s, patch %s, %d channel(s) → %d %s, mirroring axes %s", info.folder,
             info.configuration, info.folds, info.patch_size, info.num_input_channels, info.num_heads,
             "regions" if info.has_regions else "classes", info.mirror_axes)
    return ModelSpec(arch="nnunet", num_classes=info.num_heads, in_chans=info.num_input_channels,
                     input_size=info.patch_size[0], checkpoint=None, trust_checkpoint=m.trust_checkpoint,
                     task="segmentation", spatial=tuple(info.patch_size), net=net, source="nnunet", path=info.folder,
                     preprocess=prep, recipe="nnunet", members=members)
