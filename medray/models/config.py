"""The model axis' options (``model.*``): which model, where its weights are, what it returns.

Source-specific rules come from the source's registry row (:mod:`medray.models.sources`).
:class:`ModelRequest` is what a model source is resolved from: these options plus the
other axes' keys a source may read (the preprocessing, the 3-D volume settings, the
sliding-window ROI), gathered by the task.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medray.data.config import VolumeConfig
from medray.data.preprocess.config import PreprocessConfig
from medray.errors import fail as _fail
from medray.models.sources import source


@dataclass
class TrainConfig:
    """How the demo model is trained when its checkpoint is not cached."""

    # Measured on 2 CPUs (medray/models/demo.py): 6 epochs of batch 32 at 96 px.
    epochs: int = 6
    batch_size: int = 32
    lr: float = 3e-3
    seed: int = 0


@dataclass
class ModelConfig:
    """The model evaluated: the cached demo, or yours from one of ``model.source``'s kinds
    (medray.models.sources): a timm architecture + state dict, a Python callable, a
    TorchScript / ``torch.export`` / ONNX file."""

    name: str = "demo"
    # timm | python | torchscript | exported | onnx (the model= group sets it).
    source: str = "timm"
    arch: str = "resnet10t"
    # Path to a state dict / medray checkpoint; null with name=demo = train or reuse the demo.
    checkpoint: str | None = None
    # torchscript / exported / onnx: the model file.
    path: str | None = None
    # python: "<module>:<callable>" or "<file.py>:<callable>" returning an nn.Module, and its kwargs.
    target: str | None = None
    # Typed Any, default null: Hydra then takes `model.kwargs='{hidden: 512}'` as a new
    # value (a dict-typed field would merge into {} and refuse the new keys as "not in struct").
    kwargs: Any = None
    # What the model returns: logits (softmax / sigmoid applied by task) or probs.
    output: str = "logits"
    # model=onnx with several graph outputs: the one that holds the class scores (the others
    # are dropped from the graph every backend runs).  null = the graph's only output.
    output_name: str | None = None
    # null = the dataset's class count.
    num_classes: int | None = None
    in_chans: int = 3
    # The input size of the demo and of preprocess.size=null.
    input_size: int = 96
    trust_checkpoint: bool = False
    train: TrainConfig = field(default_factory=TrainConfig)
    # Constructor arguments of non-timm architectures (arch=monai_unet: channels, strides,
    # num_res_units); empty = from the checkpoint's meta (medray checkpoints carry them).
    net: dict[str, Any] = field(default_factory=dict)
    # The name of each output, in output order, for any source (null = the names the model's
    # format carries: id2label, label_names, xrv's pathologies, a medray checkpoint's
    # classes; none = output i is the dataset's class i). Outputs are matched to the
    # dataset's classes by name (case and separators ignored): medray.models.labels.
    classes: list[str] | None = None
    # Synonyms: {model output name: dataset class}, e.g. {Pleural Effusion: Effusion}; typed
    # Any, default null, for the reason kwargs is.
    class_map: Any = None
    # The model's own operating thresholds applied after the backend (model=xrv: xrv, its
    # op_norm: threshold.value=0.5 is then each label's operating point); null = none.
    operating_points: str | None = None
    # model=nnunet: the folds evaluated ([0, 1, 2, 3, 4], [all]; null = every fold_<int>
    # with model.checkpoint, else fold_all) and mirroring test-time augmentation over the
    # model's inference_allowed_mirroring_axes (null = on where the model allows it).
    folds: list[str] | None = None
    mirroring: bool | None = None
    # model=bundle: pt (models/model.pt through the bundle's CheckpointLoader, default) or ts
    # (models/model.ts, the TorchScript export).
    weights: str | None = None
    # The metrics the model was published with (e.g. {dice_mean: 0.961} or {auc_macro: 0.843};
    # a bundle's metadata.json eval_metrics are read too): the report says first whether the
    # baseline reproduces them (within the bootstrap CI of its metric on the evaluated set).
    expected: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kwargs is None:
            self.kwargs = {}
        if not isinstance(self.kwargs, dict):
            _fail("model.kwargs", self.kwargs, "give the callable's keyword arguments as a mapping, e.g. "
                  "model.kwargs='{hidden: 512}'")
        src = source(self.source)
        if src.library is not None:
            import importlib.util

            if importlib.util.find_spec(src.library[0]) is None:
                _fail("model", self.source, f"model={self.source} needs {src.library[0]}, which is not installed: {src.library[1]}")
        self._check_published(src)
        if src.folder:
            self._check_folder(src)
            return
        if self.folds is not None:
            _fail("model.folds", self.folds, f"folds are for a trained model folder (model=nnunet), not model={self.source}")
        if src.checkpoint_required and self.checkpoint is None and self.name != "demo":
            _fail("model.checkpoint", None, f"model={self.name} needs model.checkpoint=<path to its state dict>")
        if src.target and not self.target:
            _fail("model.target", self.target, f"model={self.source} needs model.target=<module>:<callable> (or <file.py>:<callable>)")
        if src.file:
            self._resolve_path(folder=False)
            if self.checkpoint is not None:
                _fail("model.checkpoint", self.checkpoint, f"model={self.source} carries its weights in model.path; remove model.checkpoint")
        if self.checkpoint is not None:
            p = Path(self.checkpoint).expanduser()
            if not p.is_file():
                _fail(
                    "model.checkpoint",
                    self.checkpoint,
                    "file not found; give the path of the trained state dict (.pt/.pth/.safetensors)",
                )
            self.checkpoint = str(p.resolve())
        self._check_common(src)

    def _check_published(self, src) -> None:
        """What a model as published declares: its code (trusted or refused), its weights file,
        its published metrics."""
        if src.runs_code and not self.trust_checkpoint:
            _fail("model.trust_checkpoint", False, f"reading a model={self.source} runs its code (a MONAI bundle's $ "
                  "expressions and _target_ imports), like unpickling a checkpoint; set model.trust_checkpoint=true "
                  "if you trust its origin")
        if self.weights is not None and self.weights not in src.weights:
            _fail("model.weights", self.weights, f"use one of {', '.join(src.weights)}" if src.weights
                  else f"model={self.source} has one weights file; remove model.weights")
        if src.weights and (self.checkpoint is not None or self.folds is not None):
            key = "model.checkpoint" if self.checkpoint is not None else "model.folds"
            _fail(key, self.checkpoint if self.folds is None else self.folds, f"model={self.source} loads the weights its "
                  "CheckpointLoader names (models/model.pt), or models/model.ts with model.weights=ts; remove it")
        bad = {k: v for k, v in (self.expected or {}).items() if not isinstance(v, (int, float)) or isinstance(v, bool)
               or not math.isfinite(v)}
        if bad:
            _fail("model.expected", dict(self.expected), f"give the published value of each metric as a number "
                  f"(e.g. {{dice_mean: 0.961}} or {{auc_macro: 0.843}}); not numbers: {bad}")
        self.expected = {str(k): float(v) for k, v in (self.expected or {}).items()}

    def _check_folder(self, src) -> None:
        """model.path is a folder; model.checkpoint the file name inside each member's folder
        (a folder of folds), else the folder carries its weights."""
        self._resolve_path(folder=True)
        if not src.folds:
            if self.checkpoint is not None:
                _fail("model.checkpoint", self.checkpoint, f"model={self.source} carries its weights in model.path; remove model.checkpoint")
            if self.folds is not None:
                _fail("model.folds", self.folds, f"folds are for a trained model folder (model=nnunet), not model={self.source}")
        if self.checkpoint is not None and (Path(self.checkpoint).name != self.checkpoint or not self.checkpoint):
            _fail("model.checkpoint", self.checkpoint, "the checkpoint's file name in each fold_<f>/ folder, e.g. checkpoint_final.pth")
        if self.folds is not None:
            self.folds = [str(f) for f in self.folds]
            if not self.folds:
                _fail("model.folds", self.folds, "list the folds, e.g. [0, 1, 2, 3, 4] or [all], or null for all of them")
        self._check_common(src)

    def _resolve_path(self, folder: bool) -> None:
        """model.path made absolute: an existing model file, or (``folder``) a trained model folder."""
        what = "the model folder" if folder else "the model file"
        if not self.path:
            _fail("model.path", self.path, f"model={self.source} needs model.path=<{what}>")
        p = Path(self.path).expanduser()
        if not (p.is_dir() if folder else p.is_file()):
            _fail("model.path", self.path, f"{'not a directory' if folder else 'file not found'}; give the path of "
                  f"{what} (model={self.source})")
        self.path = str(p.resolve())

    def _check_common(self, src) -> None:
        if self.output not in ("logits", "probs"):
            _fail("model.output", self.output, "use logits (softmax/sigmoid applied) or probs (the model's own)")
        if self.in_chans not in (1, 3):
            _fail("model.in_chans", self.in_chans, "use 1 (grey) or 3 (grey repeated to RGB)")
        if self.input_size < 16:
            _fail("model.input_size", self.input_size, "use the model's input size in pixels (>= 16)")
        if self.num_classes is not None and self.num_classes < 1:
            _fail("model.num_classes", self.num_classes, "use a positive class count or null (from the dataset)")
        self._check_labels(src.operating_points)

    def _check_labels(self, operating_points: tuple[str, ...]) -> None:
        if self.classes is not None:
            names = [str(c) for c in self.classes]
            if not names or len(set(names)) != len(names):
                _fail("model.classes", self.classes, "give each output's name once, in output order")
            self.classes = names
        if self.class_map is None:
            self.class_map = {}
        if not isinstance(self.class_map, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                           for k, v in self.class_map.items()):
            _fail("model.class_map", self.class_map, "use {<model output name>: <dataset class>}, e.g. "
                  "model.class_map='{Pleural Effusion: Effusion}'")
        if self.operating_points is not None and self.operating_points not in operating_points:
            _fail("model.operating_points", self.operating_points,
                  f"model={self.source} has {'only ' + ', '.join(operating_points) if operating_points else 'no operating points of its own'}; "
                  "remove it (or use null)")


@dataclass
class ModelRequest:
    """What :func:`medray.models.resolve.resolve_model` resolves a model from."""

    model: ModelConfig
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    cache_dir: str = ""
    # 3-D models: the volume preprocessing and the sliding window's ROI (null = the model's).
    volume: VolumeConfig | None = None
    roi_size: list[int] | None = None
