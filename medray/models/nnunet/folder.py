"""The folder ``nnUNetv2_train`` writes — ``plans.json``, ``dataset.json``,
``fold_<f>/<checkpoint>`` — read and checked, and each fold's network built as nnU-Net
builds it (the trainer named in the checkpoint, from the plans)."""

from __future__ import annotations

import functools
import inspect
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medray.errors import ConfigError

if TYPE_CHECKING:
    from medray.specs import ModelSpec

log = logging.getLogger("medray.models.nnunet")

FOLDER_HINT = ("point model.path at the folder nnUNetv2_train wrote, <Trainer>__<Plans>__<configuration>/ "
               "with plans.json, dataset.json and fold_<f>/checkpoint_final.pth")


@dataclass
class FolderInfo:
    """What a trained model folder holds, checked (no network built)."""

    folder: str
    folds: list[str]
    checkpoints: list[str]
    configuration: str
    trainer: str
    mirror_axes: list[int] | None
    num_input_channels: int
    num_heads: int
    patch_size: list[int]
    has_regions: bool
    dataset_json: dict


def available_folds(folder: Path, checkpoint: str) -> list[str]:
    """The ``fold_<f>`` folders holding ``checkpoint``."""
    return [d.name[len("fold_"):] for d in sorted(folder.glob("fold_*")) if (d / checkpoint).is_file()]


def choose_folds(folder: Path, folds: list | None, checkpoint: str) -> list[str]:
    """``model.folds``, or nnU-Net's auto-detection (every integer fold, else ``all``)."""
    have = available_folds(folder, checkpoint)
    if folds is None:
        chosen = [f for f in have if f.isdigit()] or [f for f in have if f == "all"]
        if not chosen:
            raise ConfigError(f"model.path={folder}: no fold_*/{checkpoint}; {FOLDER_HINT}")
        return chosen
    chosen = [str(f) for f in folds]
    for f in chosen:
        if f not in have:
            raise ConfigError(f"model.folds={list(folds)}: {folder / f'fold_{f}' / checkpoint} not found "
                              f"(folds with {checkpoint}: {have or 'none'}); choose among them or fix model.checkpoint")
    if len(set(chosen)) != len(chosen):
        raise ConfigError(f"model.folds={list(folds)}: each fold once")
    return chosen


def load_checkpoint(path: str, trusted: bool = False) -> dict:
    """An nnU-Net checkpoint with ``torch.load(weights_only=True)``: nnU-Net's logging holds
    numpy scalars, so numpy's scalar and dtype types are allow-listed (data, not code);
    ``trusted`` unpickles everything, as nnUNetPredictor does."""
    import numpy as np
    import torch

    if trusted:
        return torch.load(path, map_location="cpu", weights_only=False)
    core = getattr(np, "_core", None) or np.core
    allowed = [np.dtype, core.multiarray.scalar] + [getattr(np.dtypes, n) for n in dir(np.dtypes) if n.endswith("DType")]
    try:
        with torch.serialization.safe_globals(allowed):
            ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ConfigError(f"model.checkpoint: {path} cannot be read as tensors and plain values "
                          f"({type(e).__name__}: {str(e)[:200]}); set model.trust_checkpoint=true only for a checkpoint "
                          "from a trusted source") from None
    if not isinstance(ck, dict) or "network_weights" not in ck or "init_args" not in ck:
        raise ConfigError(f"model.checkpoint: {path} is not an nnU-Net v2 checkpoint (no network_weights / init_args)")
    return ck


@functools.lru_cache(maxsize=8)
def managers(folder: str, configuration: str):
    """nnunetv2's ``(PlansManager, ConfigurationManager, LabelManager, dataset_json)`` of a
    folder (cached per process: the read tasks and actors ask for every case)."""
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    pm = PlansManager(load_json(str(Path(folder) / "plans.json")))
    dj = load_json(str(Path(folder) / "dataset.json"))
    return pm, pm.get_configuration(configuration), pm.get_label_manager(dj), dj


def read_folder(path: str, folds: list | None, checkpoint: str, trusted: bool = False) -> tuple[FolderInfo, list[dict]]:
    """Check ``path`` is a trained nnU-Net v2 model folder with ``folds`` (null = nnU-Net's
    choice) of ``checkpoint``, all of one configuration and trainer; returns its
    description and the loaded checkpoints."""
    from medray.models.nnunet import require_nnunet

    require_nnunet()
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels

    folder = Path(path).expanduser().resolve()
    if not folder.is_dir():
        raise ConfigError(f"model.path={path}: not a directory; {FOLDER_HINT}")
    missing = [f for f in ("plans.json", "dataset.json") if not (folder / f).is_file()]
    if missing:
        raise ConfigError(f"model.path={folder}: not an nnU-Net v2 model folder (no {', '.join(missing)}); {FOLDER_HINT}")
    chosen = choose_folds(folder, folds, checkpoint)
    ckpts = [load_checkpoint(str(folder / f"fold_{f}" / checkpoint), trusted) for f in chosen]
    configs = {ck["init_args"].get("configuration") for ck in ckpts}
    trainers = {ck.get("trainer_name") for ck in ckpts}
    if len(configs) > 1 or len(trainers) > 1:
        raise ConfigError(f"model.folds={chosen}: the folds were trained differently (configurations {sorted(configs)}, "
                          f"trainers {sorted(trainers)}); choose folds of one training")
    configuration, trainer = configs.pop(), trainers.pop()
    try:
        pm, cm, lm, dj = managers(str(folder), configuration)
    except (KeyError, RuntimeError, ValueError) as e:
        raise ConfigError(f"model.path={folder}: the checkpoints are of configuration {configuration!r}, which "
                          f"plans.json does not describe ({e}); use the plans.json the folds were trained with") from None
    name = folder.name.split("__")
    if len(name) == 3 and name[2] != configuration:
        raise ConfigError(f"model.path={folder}: the folder is named for configuration {name[2]!r} but its checkpoints "
                          f"are of {configuration!r}; a checkpoint of another configuration was copied in")
    if cm.previous_stage_name is not None:
        raise ConfigError(f"model.path={folder}: {configuration!r} is a cascade stage (it needs the segmentation of "
                          f"{cm.previous_stage_name!r} as input channels); evaluate the 3d_fullres or 3d_lowres model")
    mirror = ckpts[0].get("inference_allowed_mirroring_axes")
    info = FolderInfo(str(folder), chosen, [str(folder / f"fold_{f}" / checkpoint) for f in chosen], configuration,
                      trainer, [int(a) for a in mirror] if mirror is not None else None,
                      int(determine_num_input_channels(pm, cm, dj)), int(lm.num_segmentation_heads),
                      [int(v) for v in cm.patch_size], bool(lm.has_regions), dj)
    return info, ckpts


def trainer_class(name: str):
    """The trainer class named in a checkpoint: it builds the network (as in nnUNetPredictor)."""
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    try:
        return recursive_find_trainer_class_by_name(name)
    except RuntimeError:
        raise ConfigError(f"model.path: the checkpoints name the trainer class {name!r}, which is not importable; install "
                          "the package that defines it, or point the nnUNet_extTrainer environment variable at its folder "
                          "(nnU-Net needs it to build the network, as nnUNetPredictor does)") from None


def build_network(folder: str, configuration: str, trainer: str, n_in: int, n_out: int):
    """The network of one fold, untrained, as nnUNetPredictor builds it (deep supervision off)."""
    pm, cm, _, _ = managers(folder, configuration)
    cls = trainer_class(trainer)
    if "plans_manager" in inspect.signature(cls.build_network_architecture).parameters:
        return cls.build_network_architecture(pm, cm, n_in, n_out, enable_deep_supervision=False)
    return cls.build_network_architecture(cm.network_arch_class_name, cm.network_arch_init_kwargs,
                                          cm.network_arch_init_kwargs_req_import, n_in, n_out,
                                          enable_deep_supervision=False)


def fold_network(info: Any, weights: dict, where: str):
    """A fold's network with its weights (eval mode); ConfigError when they do not fit."""
    net = build_network(info["folder"], info["configuration"], info["trainer"], info["num_input_channels"],
                        info["num_heads"])
    try:
        net.load_state_dict(weights)
    except RuntimeError as e:
        raise ConfigError(f"{where}: the weights do not fit the network plans.json describes for "
                          f"{info['configuration']!r}: {str(e)[:300]}") from None
    return net.eval()


def load_fold(m: ModelSpec):
    """``model=nnunet``'s loader: the network of the spec's fold (a member of the model)."""
    if m.members:
        raise ConfigError("model=nnunet: a model of several folds has one network per fold; load a member")
    ck = load_checkpoint(m.checkpoint, m.trust_checkpoint)
    return fold_network({**m.net, "folder": m.path}, ck["network_weights"], f"model.checkpoint={m.checkpoint}")
