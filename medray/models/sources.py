"""Where a model comes from (``model.source``): one registry row per source, the only list
of them, naming (as import paths, so that listing them imports nothing heavy) the loader
that rebuilds its PyTorch module the same way on the driver (checks, ONNX export) and in
the actors (:mod:`medray.models.loaders`), and the resolver that checks it against the
dataset before Ray starts (:mod:`medray.models.resolve`).

* ``timm`` — ``model.arch`` (a timm name, or an architecture of :data:`ARCHS` such as
  ``monai_unet``) + ``model.checkpoint`` (a state dict); the demo models are this.
* ``python`` — ``model.target=<module>:<callable>`` or ``<file.py>:<callable>`` called with
  ``model.kwargs``, returning an ``nn.Module``; ``model.checkpoint`` loaded into it (a
  custom head on a timm backbone, any architecture).
* ``torchscript`` — ``model.path`` to a ``torch.jit`` file.
* ``exported`` — ``model.path`` to a ``torch.export`` program (``.pt2``).
* ``onnx`` — ``model.path`` to an ONNX file (external data beside it): no PyTorch model;
  the ONNX backends and TensorRT run the file itself.
* ``hf`` — ``model.path`` to a local model-hub folder: a transformers image classifier
  (``config.json`` + weights + ``preprocessor_config.json``) or timm's hub format
  (``config.json`` with ``architecture`` and ``pretrained_cfg``); its preprocessing and
  label names come from the folder (:mod:`medray.models.hub`).
* ``xrv`` — a torchxrayvision model: ``model.arch`` (its weights name, e.g.
  ``densenet121-res224-all``) + ``model.path`` (the local weights file); its pipeline, its
  18 output names and, with ``model.operating_points=xrv``, its op_norm (:mod:`medray.models.xrv`).
* ``bundle`` — ``model.path`` to a MONAI bundle folder (``configs/inference.json``,
  ``models/model.pt`` or ``model.ts``): its network, transforms, inferer and inversion
  (:mod:`medray.models.bundle`), run by the recipe of the same name.
* ``nnunet`` — ``model.path`` to the folder ``nnUNetv2_train`` wrote (``model.folds``,
  ``model.checkpoint`` = the file name in each ``fold_<f>/``): one member network per fold
  (:mod:`medray.models.nnunet`), run by the recipe of the same name.

Adding a source = its loader (and resolver, if it is not a plain classifier file), one
row here and one ``conf/model/<name>.yaml`` (README: "Adding a model source").
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from medray.data.sources import IMAGE, VOLUME
from medray.errors import registry_row


def call(target: str, *args, **kwargs):
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)(*args, **kwargs)


@dataclass(frozen=True)
class ModelSource:
    """One way a model comes to medray."""

    # "module:function" (ModelSpec) -> the nn.Module in eval mode; None = no PyTorch model.
    load: str | None
    # "module:function" (ModelRequest, SampleTable) -> ModelSpec, on the driver before Ray.
    resolve: str = "medray.models.resolve:resolve_classifier"
    # model.path is the model file (its weights inside: no model.checkpoint).
    file: bool = False
    # model.path is a model folder: config + weights (no model.checkpoint), or trained folds
    # (``folds``).
    folder: bool = False
    # model.target names a callable that builds the module.
    target: bool = False
    # model.checkpoint is required (but for model=demo, which trains its own).
    checkpoint_required: bool = False
    # The dataset kinds (medray.data.sources) it serves.
    kinds: tuple[str, ...] = (IMAGE,)
    # The values model.operating_points may take (the model's own thresholds, applied after the backend).
    operating_points: tuple[str, ...] = ()
    # The library it needs beyond medray's own dependencies, and how to install it.
    library: tuple[str, str] | None = None
    # The resolver for 3-D datasets of a source that serves both kinds (resolve: images).
    resolve_volume: str | None = None
    # Reading the model runs its own code (a MONAI bundle's $ expressions): refused unless
    # model.trust_checkpoint=true, like a pickled checkpoint.
    runs_code: bool = False
    # The model.weights it offers (a bundle: pt = models/model.pt, ts = models/model.ts).
    weights: tuple[str, ...] = ()
    # model.path holds one folder per trained fold: model.folds picks the members, model.checkpoint
    # names the checkpoint file in each fold_<f>/ (nnU-Net).
    folds: bool = False

    @property
    def torch_model(self) -> bool:
        return self.load is not None


VOLUME_RESOLVE = "medray.models.volume:resolve_volume_model"
SOURCES: dict[str, ModelSource] = {
    "timm": ModelSource("medray.models.factory:load_spec", checkpoint_required=True, kinds=(IMAGE, VOLUME)),
    # Any network (a classifier, or a 3-D segmentation network run by MONAI's sliding window).
    "python": ModelSource("medray.models.loaders:load_python", target=True, kinds=(IMAGE, VOLUME), resolve_volume=VOLUME_RESOLVE),
    "torchscript": ModelSource("medray.models.loaders:load_torchscript", file=True, kinds=(IMAGE, VOLUME),
                               resolve_volume=VOLUME_RESOLVE),
    "exported": ModelSource("medray.models.loaders:load_exported", file=True, kinds=(IMAGE, VOLUME),
                            resolve_volume=VOLUME_RESOLVE),
    "onnx": ModelSource(None, file=True, kinds=(IMAGE, VOLUME), resolve_volume=VOLUME_RESOLVE),
    # Model-hub classifiers: a local Hugging Face folder (transformers or timm format), a
    # torchxrayvision weights file.
    "hf": ModelSource("medray.models.hub:load_hf", "medray.models.hub:resolve_hf", folder=True),
    "xrv": ModelSource("medray.models.xrv:load_xrv", "medray.models.xrv:resolve_xrv", file=True, operating_points=("xrv",)),
    # A folder nnUNetv2_train wrote (pip install -e ".[nnunet]"): one network per fold.
    "nnunet": ModelSource("medray.models.nnunet.folder:load_fold", "medray.models.nnunet.resolve:resolve_nnunet",
                          folder=True, folds=True, kinds=(VOLUME,), library=("nnunetv2", 'pip install -e ".[nnunet]"')),
    # A MONAI bundle folder (configs/inference.json, models/model.pt|ts): its own transforms,
    # inferer and inversion (medray.models.bundle).
    "bundle": ModelSource("medray.models.bundle.network:load_network", "medray.models.bundle.resolve:resolve_bundle",
                          folder=True, kinds=(VOLUME,), runs_code=True, weights=("pt", "ts")),
}


@dataclass(frozen=True)
class Arch:
    """An architecture that is not a timm name: built from ``model.net``, resolved for its kind."""

    build: str  # "module:function" (num_classes, in_chans, **net) -> nn.Module
    resolve: str  # as ModelSource.resolve
    kind: str = IMAGE


ARCHS: dict[str, Arch] = {
    "monai_unet": Arch("medray.models.factory:build_unet", "medray.models.unet:resolve_segmentation_model", VOLUME),
}
# The demo of each dataset kind: trained by medray on first use (model=demo).
DEMOS = {IMAGE: "medray.models.resolve:resolve_classifier", VOLUME: "medray.models.unet:resolve_segmentation_model"}


def source(name: str) -> ModelSource:
    """The registry row of ``model.source=name``; a ConfigError listing them otherwise."""
    return registry_row(SOURCES, name, "model.source", "model=<source> sets it; use one of")
