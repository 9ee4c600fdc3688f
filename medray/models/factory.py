"""timm model factory and checkpoint files (data, never code).

A medray checkpoint is ``{"state_dict": {...}, "meta": {...}}`` saved with ``torch.save``;
``meta`` holds plain values (arch, classes, in_chans, input_size, task) so the file loads
with ``weights_only=True``.  A bare state dict (what most training scripts save) is
accepted too; its class count is read off the classifier weight.
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger("medray.models")


class CheckpointError(ValueError):
    """A checkpoint cannot be used with the configured model."""


def build_model(arch: str, num_classes: int, in_chans: int, net: dict | None = None):
    """A timm model with random weights (no download: ``pretrained=False``), or an
    architecture of :data:`medray.models.sources.ARCHS` (e.g. ``monai_unet``) built from
    ``net`` (channels, strides, ...)."""
    from medray.models.sources import ARCHS

    if arch in ARCHS:
        if not net:
            raise CheckpointError(f"model.arch={arch} needs its settings (model.net or the checkpoint's meta)")
        module, _, name = ARCHS[arch].build.partition(":")
        return getattr(importlib.import_module(module), name)(num_classes, in_chans, **net)
    import timm

    return timm.create_model(arch, pretrained=False, num_classes=num_classes, in_chans=in_chans)


_NET_KEYS = ("channels", "strides", "num_res_units", "norm", "dropout", "kernel_size", "up_kernel_size", "act")


def build_unet(num_classes: int, in_chans: int, channels, strides, num_res_units: int = 2, **kw):
    """``monai.networks.nets.UNet`` (3D): ``in_chans`` → ``num_classes`` logits, background included."""
    from monai.networks.nets import UNet

    unknown = sorted(set(kw) - set(_NET_KEYS))
    if unknown:
        raise ValueError(f"model.net: unknown MONAI UNet arguments {unknown}; known: {list(_NET_KEYS)}")
    if len(strides) != len(channels) - 1:
        raise ValueError(f"model.net: a UNet needs len(strides) == len(channels) - 1, got channels={channels} strides={strides}")
    return UNet(spatial_dims=3, in_channels=in_chans, out_channels=num_classes, channels=tuple(channels),
                strides=tuple(strides), num_res_units=num_res_units, **kw)


def save_checkpoint(model, path: str | Path, meta: dict[str, Any]) -> Path:
    """Write ``{"state_dict", "meta"}`` atomically (a killed trainer leaves no half file)."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    sd = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save({"state_dict": sd, "meta": meta}, tmp)
    tmp.replace(path)
    return path


def read_checkpoint(path: str | Path, trust: bool = False) -> tuple[dict, dict]:
    """Load ``(state_dict, meta)``; tensors only unless ``trust`` (pickled code)."""
    import torch

    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path)), {}
    try:
        obj = torch.load(path, map_location="cpu", weights_only=not trust)
    except Exception as e:  # torch raises UnpicklingError / RuntimeError variants
        if not trust and "weights_only" in str(e):
            raise CheckpointError(
                f"model.checkpoint={path}: the file contains pickled Python objects, not "
                "just tensors, and is refused (loading it could run arbitrary code). Save a "
                "state_dict instead, or set model.trust_checkpoint=true if you trust its "
                "origin."
            ) from e
        raise CheckpointError(f"model.checkpoint={path}: cannot be read ({e})") from e
    if hasattr(obj, "state_dict") and callable(obj.state_dict):  # full pickled model
        return obj.state_dict(), {}
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        return obj["state_dict"], dict(obj.get("meta") or {})
    if isinstance(obj, dict):
        return obj, {}
    raise CheckpointError(f"model.checkpoint={path}: expected a state dict, got {type(obj).__name__}")


def load_weights(model, path: str | Path, trust: bool, key: str, fits: str):
    """``path``'s state dict loaded into ``model``, every key matching; a CheckpointError
    ``"<key>=<path> does not fit <fits>: ..."`` otherwise."""
    sd, _ = read_checkpoint(path, trust=trust)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{key}={path} does not fit {fits}: missing keys {missing[:5]}, "
                              f"unexpected keys {unexpected[:5]}")
    return model


def classifier_out_features(arch: str, state_dict: dict) -> int | None:
    """Number of outputs of the classifier weight for a timm ``arch`` (None if unknown)."""
    import timm

    try:
        cfg = timm.get_pretrained_cfg(arch)
        names = cfg.classifier if cfg is not None else None
    except Exception:
        names = None
    names = [names] if isinstance(names, str) else list(names or [])
    for n in names + ["fc", "head.fc", "classifier", "head"]:
        w = state_dict.get(f"{n}.weight")
        if w is not None:
            return int(w.shape[0])
    return None


def load_model(arch: str, num_classes: int, in_chans: int, checkpoint: str | None, trust: bool = False, net: dict | None = None):
    """Build ``arch`` and load ``checkpoint`` strictly; eval mode.

    ``net``: constructor arguments of MONAI architectures; empty = the checkpoint's meta.
    """
    sd = meta = None
    if checkpoint:
        sd, meta = read_checkpoint(checkpoint, trust=trust)
    if not net:
        net = (meta or {}).get("net")
    model = build_model(arch, num_classes, in_chans, net=net)
    if checkpoint:
        missing, unexpected = model.load_state_dict(sd, strict=False)
        if missing or unexpected:
            raise CheckpointError(
                f"model.checkpoint={checkpoint} does not fit model.arch={arch}: "
                f"missing keys {missing[:5]}, unexpected keys {unexpected[:5]}. Set model.arch "
                "to the architecture the checkpoint was trained with."
            )
    return model.eval()


def load_spec(m):
    """``model=timm``: the architecture of a :class:`~medray.specs.ModelSpec` with its checkpoint."""
    return load_model(m.arch, m.out_features or m.num_classes, m.in_chans, m.checkpoint, trust=m.trust_checkpoint, net=m.net)
