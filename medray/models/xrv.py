"""``model=xrv``: a torchxrayvision classifier from a local weights file.

``model.arch`` is xrv's weights name (``densenet121-res224-all``, ``-nih``, ``-pc``,
``-chex``, ``-rsna``, ``-mimic_nb``, ``-mimic_ch``, ``resnet50-res512-all``): it gives the
architecture, the 18 output names (``''`` where the weights were not trained for a slot),
the operating thresholds and the input resolution (``xrv.models.model_urls``).
``model.path`` is the weights file, never downloaded: a state dict, or a pickled whole
module (the published DenseNet files).  A pickled module is read with ``weights_only=True``
and an allow-list of xrv's and torch.nn's classes (no code runs); one that pickles other
classes needs ``model.trust_checkpoint=true``.  It is converted once to a state dict in
``cache_dir/models/`` (logged), which is what the actors load.

The backends run xrv's network up to its classifier (logits): no ``fix_resolution`` (the
preprocessing makes the weights' resolution), no print, no data-dependent ``op_norm`` in
the graph.  ``model.operating_points=xrv`` applies ``op_norm`` to the backend's logits
(:func:`medray.metrics.scores.op_norm`), so that ``threshold.value=0.5`` is each label's
operating point; without it the probabilities are the sigmoid (AUCs are the same: op_norm
is monotone per label).  Needs ``pip install -e ".[xrv]"``.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING

from medray.errors import ConfigError

if TYPE_CHECKING:
    from medray.data.table import SampleTable
    from medray.models.config import ModelRequest
    from medray.specs import ModelSpec

log = logging.getLogger("medray.models")

XRV_INSTALL = 'pip install -e ".[xrv]"'
_NN = ("Conv2d", "BatchNorm2d", "ReLU", "MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d", "Linear", "Sequential",
       "Identity", "Dropout")


def _xrv():
    try:
        import torchxrayvision as xrv
    except ImportError:
        raise ConfigError(f"model=xrv needs torchxrayvision: {XRV_INSTALL}") from None
    return xrv


def weights_meta(name: str) -> dict:
    """xrv's record of the weights ``name`` (labels, op_threshs, input_resolution)."""
    urls = _xrv().models.model_urls
    names = [k for k in urls if "-" in k]  # the short aliases ("all", "nih") name the same files
    if name not in names:
        raise ConfigError(f"model.arch={name!r}: not torchxrayvision weights; use one of {', '.join(names)}")
    return urls[name]


def _allowlist() -> list:
    import torch.nn as nn
    import torchvision.models.resnet as tvr

    xrv = _xrv()
    return [xrv.models.DenseNet, xrv.models._DenseBlock, xrv.models._DenseLayer, xrv.models._Transition,
            xrv.models.ResNet, tvr.ResNet, tvr.Bottleneck, tvr.BasicBlock, *(getattr(nn, n) for n in _NN)]


def read_weights(path: str | Path, trust: bool = False) -> tuple[dict, bool]:
    """The state dict in an xrv weights file, and whether the file was a pickled module."""
    import torch

    allowed = _allowlist()
    names = {f"{c.__module__}.{c.__qualname__}" for c in allowed}
    try:
        found = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception as e:  # not a zip / pickle written by torch.save
        raise ConfigError(f"model.path={path}: not a torch.save file ({type(e).__name__}: {str(e)[:200]})") from None
    other = [g for g in found if g not in names]
    if other and not trust:
        raise ConfigError(f"model.path={path}: pickles classes other than xrv's and torch.nn's ({other[:5]}), which could "
                          "run code when loaded; save a state dict (torch.save(model.state_dict(), ...)) or set "
                          "model.trust_checkpoint=true if you trust the file's origin")
    if other:
        log.warning("model.path=%s: unpickling classes %s (model.trust_checkpoint=true)", path, other[:5])
        obj = torch.load(path, map_location="cpu", weights_only=False)
    else:
        with torch.serialization.safe_globals(allowed):  # only these classes are built: no code runs
            obj = torch.load(path, map_location="cpu", weights_only=True)
    module = isinstance(obj, torch.nn.Module)
    if module:
        for mod in obj.modules():  # modules pickled by an old torch (xrv's own loader does the same)
            if not hasattr(mod, "_non_persistent_buffers_set"):
                mod._non_persistent_buffers_set = set()
        obj = obj.state_dict()
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values() if v is not None):
        raise ConfigError(f"model.path={path}: neither a module nor a state dict ({type(obj).__name__})")
    return {k: v for k, v in obj.items() if v is not None}, module


def build(name: str, state_dict: dict, where: str = "model.path"):
    """xrv's network for the weights ``name`` with ``state_dict``, returning logits."""
    import torch
    import torch.nn.functional as F
    import torchvision

    xrv, meta = _xrv(), weights_meta(name)
    sd = dict(state_dict)
    sd.pop("op_threshs", None)  # the thresholds are xrv's record's (checked by the resolver)
    n = len(meta["labels"])
    if name.startswith("densenet"):
        net = xrv.models.DenseNet(num_classes=n, in_channels=1, **xrv.models.get_densenet_params(name.split("-")[0]))
        target = net
    else:  # xrv's ResNet constructor always downloads its file: the same module, built here
        net = torchvision.models.resnet50(num_classes=n, weights=None)
        net.conv1 = torch.nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
        target, sd = net, {k.removeprefix("model."): v for k, v in sd.items()}
    try:
        target.load_state_dict(sd)
    except RuntimeError as e:
        raise ConfigError(f"{where}: the weights do not fit {name}: {str(e).splitlines()[0]} ...") from None

    class XrvLogits(torch.nn.Module):
        """xrv's forward up to the classifier: no fix_resolution, no print, no sigmoid / op_norm."""

        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            if isinstance(self.net, torchvision.models.ResNet):
                return self.net(x)
            f = F.relu(self.net.features(x))
            return self.net.classifier(F.adaptive_avg_pool2d(f, (1, 1)).flatten(1))

    return XrvLogits(net).eval()


def load_xrv(m: ModelSpec):
    """``model=xrv``: the network of ``m.arch`` with the state dict at ``m.path`` (logits)."""
    import torch

    return build(m.arch, torch.load(m.path, map_location="cpu", weights_only=True), f"model.path={m.path}")


def _state_dict_file(cfg: ModelRequest, sd: dict) -> str:
    """A pickled module's weights saved once as a state dict in ``cache_dir/models/``."""
    import torch

    from medray.io import file_sha256

    src = cfg.model.path
    out = Path(cfg.cache_dir) / "models" / f"xrv-{cfg.model.arch}-{file_sha256(src)[:16]}.state.pt"
    if not out.is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp")
        torch.save({k: v.detach().cpu().contiguous() for k, v in sd.items()}, tmp)
        tmp.replace(out)
        log.info("model.path=%s: a pickled module; its weights converted to the state dict %s (what the actors load)",
                 src, out)
    else:
        log.info("model.path=%s: a pickled module; using its state dict converted before, %s", src, out)
    return str(out)


def resolve_xrv(cfg: ModelRequest, table: SampleTable) -> ModelSpec:
    """``model=xrv``: the weights read (and converted), xrv's preprocessing at their
    resolution, the 18 outputs matched by name, op_norm's thresholds when asked for."""
    import torch

    from medray.data.preprocess.derive import as_overrides, xrv_keys
    from medray.models.resolve import Stated, resolve_classifier

    m = cfg.model
    meta = weights_meta(m.arch)
    sd, pickled = read_weights(m.path, trust=m.trust_checkpoint)
    thresholds = [None if t is None or math.isnan(t) else float(t) for t in meta["op_threshs"]]
    file_thresholds = sd.get("op_threshs")
    if file_thresholds is not None:
        want = torch.tensor([math.nan if t is None else t for t in thresholds], dtype=torch.float32)
        if not torch.allclose(file_thresholds.float(), want, equal_nan=True):
            raise ConfigError(f"model.path={m.path}: its op_threshs differ from torchxrayvision's for {m.arch}; "
                              "is model.arch the weights this file holds?")
    path = _state_dict_file(cfg, sd) if pickled else m.path
    keys = xrv_keys(int(meta["input_resolution"]))
    log.info("model=xrv %s: its preprocessing (%s), as keys: %s; operating points: %s", m.arch, keys["reference"],
             as_overrides(keys), "op_norm (0.5 = each label's threshold)" if m.operating_points else "none (sigmoid)")
    stated = Stated(labels=list(meta["labels"]), where=f"model.arch={m.arch} (xrv's pathologies)", activation="sigmoid",
                    preprocess=keys, in_chans=1, arch=m.arch, path=path,
                    op_threshs=thresholds if m.operating_points else None)
    return resolve_classifier(cfg, table, stated)
