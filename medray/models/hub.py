"""``model=hf model.path=<folder>``: a classifier as it ships from a model hub, read from a
local snapshot folder (medray never downloads).  The format comes from ``config.json``:

* **transformers** (``architectures``: ``*ForImageClassification``, ``id2label``; weights;
  ``preprocessor_config.json``): built with ``AutoModelForImageClassification`` and wrapped
  to return the logits tensor (it then exports to ONNX and runs on every backend); its image
  processor is the preprocessing contract, its ``problem_type`` the activation
  (``pipeline("image-classification")``'s rule).  Needs ``pip install -e ".[hf]"``.
* **timm's hub format** (``architecture``, ``num_classes``, ``pretrained_cfg``,
  ``label_names``, ``model_args``; ``model.safetensors``): ``timm.create_model`` with the
  checkpoint's own ``pretrained_cfg`` (not timm's registry default for the architecture) and
  the top-level ``num_classes`` (the file's ``pretrained_cfg`` may keep the registry's 1000,
  and timm then silently drops the classifier it loads).  ``model.safetensors`` is preferred;
  ``pytorch_model.bin`` is read with ``weights_only=True`` unless ``model.trust_checkpoint``.

The preprocessing is derived as medray keys (:mod:`medray.data.preprocess.derive`) and
logged as the overrides that would set them; the output names are matched to the
dataset's classes (:mod:`medray.models.labels`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from medray.errors import ConfigError

if TYPE_CHECKING:
    from medray.data.table import SampleTable
    from medray.models.config import ModelRequest
    from medray.specs import ModelSpec

log = logging.getLogger("medray.models")

# In the order medray prefers them (safetensors: data, never code).
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
SHARDED = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
HF_INSTALL = 'pip install -e ".[hf]"'


@dataclass
class HubFolder:
    """What a model folder says, before anything is built."""

    format: str  # transformers | timm
    path: Path
    config: dict
    labels: list[str] | None  # output i's name; None when the folder names none (LABEL_0...)
    weights: Path
    arch: str  # transformers: the class name; timm: the architecture
    processor: dict = field(default_factory=dict)  # transformers: preprocessor_config.json

    @property
    def in_chans(self) -> int:
        if self.format == "transformers":
            return int(self.config.get("num_channels", 3))
        args = self.config.get("model_args") or {}
        return int(args.get("in_chans") or (self.config["pretrained_cfg"].get("input_size") or (3,))[0])

    @property
    def activation(self) -> str | None:
        """transformers' pipeline rule: sigmoid for multi-label or one-output models, else
        softmax; timm's format does not say (the dataset's task decides)."""
        if self.format != "transformers":
            return None
        problem = self.config.get("problem_type")
        if problem == "regression":
            raise ConfigError(f"model.path={self.path}: problem_type=regression is not a classifier")
        n = len(self.config.get("id2label") or {}) or int(self.config.get("num_labels", 2))
        return "sigmoid" if problem == "multi_label_classification" or n == 1 else "softmax"


def _read_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path}: cannot read the {what} ({type(e).__name__}: {e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the {what} is not a JSON object")
    return data


def _weights(root: Path, files: list[str]) -> Path:
    found = next((root / f for f in WEIGHT_FILES if f in files), None)
    if found is None:
        sharded = [f for f in SHARDED if f in files]
        why = f"sharded weights ({sharded[0]}) are not supported: save the model unsharded" if sharded else \
            f"no weights ({' / '.join(WEIGHT_FILES)})"
        raise ConfigError(f"model.path={root}: {why}; the folder holds {files[:12]}")
    return found


def _transformers_labels(config: dict) -> list[str] | None:
    id2label = {int(k): str(v) for k, v in (config.get("id2label") or {}).items()}
    if sorted(id2label) != list(range(len(id2label))) or not id2label:
        return None
    labels = [id2label[i] for i in range(len(id2label))]
    # transformers' placeholder names: the folder names no classes
    return None if all(n == f"LABEL_{i}" for i, n in enumerate(labels)) else labels


def _timm_labels(root: Path, config: dict) -> list[str] | None:
    n, names = config.get("num_classes"), config.get("label_names")
    if isinstance(names, dict):  # timm allows {index: name} when some outputs have none
        names = [str(names.get(str(i), names.get(i, ""))) for i in range(int(n or 0))]
    if names is not None and n is not None and len(names) != int(n):
        raise ConfigError(f"model.path={root}: config.json has {len(names)} label_names but num_classes={n}")
    return [str(x) for x in names] if names else None


def read_folder(path: str | Path) -> HubFolder:
    """The folder's format, labels, weights and preprocessing description (nothing built)."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise ConfigError(f"model.path={path}: not a folder (model=hf reads a local model folder: config.json + weights)")
    files = sorted(p.name for p in root.iterdir())
    if "config.json" not in files:
        raise ConfigError(f"model.path={root}: no config.json, so not a transformers or timm hub folder (it holds {files[:12]})")
    config = _read_json(root / "config.json", "model config")
    if isinstance(config.get("architectures"), list) and config["architectures"]:
        arch = str(config["architectures"][0])
        if not arch.endswith("ForImageClassification"):
            raise ConfigError(f"model.path={root}: {arch} is not an image classifier (*ForImageClassification)")
        if "auto_map" in config:
            raise ConfigError(f"model.path={root}: a model with its own code (auto_map) is not run; medray never "
                              "executes a folder's code (trust_remote_code)")
        if "preprocessor_config.json" not in files:
            raise ConfigError(f"model.path={root}: no preprocessor_config.json, so the model's preprocessing is unknown; "
                              "add the image processor the model was trained with (save_pretrained writes it)")
        processor = _read_json(root / "preprocessor_config.json", "image processor config")
        return HubFolder("transformers", root, config, _transformers_labels(config), _weights(root, files), arch, processor)
    if isinstance(config.get("architecture"), str):
        if not isinstance(config.get("pretrained_cfg"), dict) or not config.get("num_classes"):
            raise ConfigError(f"model.path={root}: timm's hub format needs pretrained_cfg (input size, crop, mean/std) "
                              "and num_classes in config.json (timm.models.save_for_hf writes them)")
        return HubFolder("timm", root, config, _timm_labels(root, config), _weights(root, files), config["architecture"])
    raise ConfigError(f"model.path={root}: config.json has neither 'architectures' (a transformers model) nor "
                      f"'architecture' (timm's hub format); its keys: {sorted(config)[:12]}")


def derive_preprocess(hub: HubFolder) -> dict:
    """The folder's preprocessing as medray keys (the PIL backend of a transformers processor)."""
    from medray.data.preprocess.derive import processor_keys, timm_keys

    if hub.format == "transformers":
        _require("transformers")
        return processor_keys(hub.processor, hub.in_chans)
    return timm_keys(hub.config["pretrained_cfg"])


def _require(module: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise ConfigError(f"model=hf: this folder is a {module} model; install it with {HF_INSTALL}")


# ------------------------------------------------------------------ building the model


def _logits_class():
    import torch

    class HfLogits(torch.nn.Module):
        """``model(pixel_values=x).logits`` as a plain tensor (exportable to ONNX)."""

        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, x):
            return self.model(pixel_values=x).logits

    return HfLogits


def build(hub: HubFolder, trust: bool = False):
    """The folder's model in eval mode, returning logits ``(batch, outputs)``."""
    if hub.format == "transformers":
        _require("transformers")
        from transformers import AutoModelForImageClassification
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # one bar per actor and per load otherwise

        # transformers reads a pytorch_model.bin with weights_only=True unless told otherwise
        extra = {"weights_only": False} if trust and hub.weights.suffix == ".bin" else {}
        try:
            model = AutoModelForImageClassification.from_pretrained(str(hub.path), local_files_only=True, **extra)
        except Exception as e:  # transformers raises many kinds; the message says which
            raise ConfigError(f"model.path={hub.path}: transformers cannot load it ({type(e).__name__}: {str(e)[:300]})") from None
        return _logits_class()(model.eval()).eval()
    import timm

    from medray.models.factory import CheckpointError, load_weights

    if not timm.is_model(hub.arch):
        raise ConfigError(f"model.path={hub.path}: timm {timm.__version__} has no architecture {hub.arch!r}")
    cfg = hub.config
    n = int(cfg["num_classes"])  # the file's pretrained_cfg may keep the registry's num_classes (1000)
    model = timm.create_model(hub.arch, pretrained=False, num_classes=n,
                              pretrained_cfg_overlay=dict(cfg["pretrained_cfg"], num_classes=n),
                              **dict(cfg.get("model_args") or {}))
    try:
        return load_weights(model, hub.weights, trust, "model.path", f"timm {hub.arch} with model_args "
                            f"{cfg.get('model_args')} and num_classes={n}").eval()
    except CheckpointError as e:  # pickled code refused, or weights of another model
        raise ConfigError(str(e).replace("model.checkpoint=", "model.path: ")) from None


def load_hf(m: ModelSpec):
    """``model=hf``: the folder's model, returning logits (the same on the driver and in the actors)."""
    return build(read_folder(m.path), trust=m.trust_checkpoint)


# ------------------------------------------------------------------ resolving against the dataset


def resolve_hf(cfg: ModelRequest, table: SampleTable) -> ModelSpec:
    """``model=hf``: the folder read, its preprocessing derived (and logged as keys), its
    outputs matched to the dataset's classes by name."""
    from medray.data.preprocess.derive import as_overrides
    from medray.io import path_sha256
    from medray.models.resolve import Stated, resolve_classifier

    hub = read_folder(cfg.model.path)
    keys = derive_preprocess(hub)
    log.info("model=hf %s: %s format, %s; its preprocessing (%s), as keys: %s", hub.path, hub.format, hub.arch,
             keys["reference"], as_overrides(keys))
    where = f"model.path={hub.path} ({'id2label' if hub.format == 'transformers' else 'label_names'})"
    stated = Stated(labels=hub.labels, where=where, activation=hub.activation, preprocess=keys, in_chans=hub.in_chans,
                    arch=f"{hub.format}:{hub.arch}", path_sha256=path_sha256(hub.path))
    return resolve_classifier(cfg, table, stated)
