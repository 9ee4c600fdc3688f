"""Structured configs (dataclasses in Hydra's ConfigStore) and every validation rule.

YAML under ``conf/`` only sets values; the schemas and checks live here.  Validation
runs in ``__post_init__`` when the composed config is turned into objects
(:func:`to_config`), which the entry points do before Ray starts.  Every message names
the key, the bad value and the fix.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

from omegaconf import MISSING

PRECISIONS = ("fp32", "tf32", "fp16", "bf16", "int8")
DEVICES = ("cpu", "cuda")
TASKS = ("classification", "segmentation")


class ConfigError(ValueError):
    """A configuration value is invalid; the message says which key and how to fix it."""


def _fail(key: str, value: Any, fix: str) -> None:
    raise ConfigError(f"{key}={value!r}: {fix}")


def default_cache_dir() -> str:
    return os.environ.get("MEDRAY_CACHE", str(Path("~/.cache/medray").expanduser()))


# --------------------------------------------------------------------------- backends


@dataclass
class BackendConfig:
    """Options common to every backend; one subclass per backend adds its own.

    ``SUPPORTED`` is the backend × device × precision matrix of DESIGN.md: a pair that
    is not listed is a config error naming the supported ones.
    """

    name: str = "torch"
    # Intra-op threads per stream; null = the node's cores divided by `streams`.
    threads: int | None = None

    SUPPORTED: ClassVar[dict[str, tuple[str, ...]]] = {}

    def __post_init__(self) -> None:
        if self.threads is not None and self.threads < 1:
            _fail("backend.threads", self.threads, "use a positive thread count or null (automatic)")

    def check_pair(self, device: str, precision: str, key: str = "precision") -> None:
        """Raise ConfigError unless ``device``/``precision`` is supported by this backend."""
        if device not in self.SUPPORTED:
            _fail(
                "device",
                device,
                f"backend={self.name} runs on {sorted(self.SUPPORTED)}; choose one of those or another backend",
            )
        if precision not in self.SUPPORTED[device]:
            pairs = "; ".join(f"{d}: {', '.join(p)}" for d, p in self.SUPPORTED.items())
            _fail(
                key,
                precision,
                f"backend={self.name} on device={device} supports {list(self.SUPPORTED[device])} "
                f"(all devices — {pairs})",
            )


@dataclass
class TorchConfig(BackendConfig):
    """PyTorch eager: the baseline."""

    name: str = "torch"
    channels_last: bool = False

    SUPPORTED: ClassVar[dict[str, tuple[str, ...]]] = {
        "cpu": ("fp32", "bf16"),
        "cuda": ("fp32", "tf32", "fp16", "bf16"),
    }


@dataclass
class OnnxRuntimeConfig(BackendConfig):
    """ONNX Runtime on the execution provider that matches ``device`` — never another."""

    name: str = "onnxruntime"
    opset: int = 17
    # ORT graph optimisation level: disable | basic | extended | all
    graph_optimization: str = "all"

    SUPPORTED: ClassVar[dict[str, tuple[str, ...]]] = {
        "cpu": ("fp32",),
        "cuda": ("fp32",),
    }

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.graph_optimization not in ("disable", "basic", "extended", "all"):
            _fail(
                "backend.graph_optimization",
                self.graph_optimization,
                "use one of disable, basic, extended, all",
            )
        if not 13 <= self.opset <= 23:
            _fail("backend.opset", self.opset, "use an ONNX opset between 13 and 23 (17 is a safe default)")


BACKEND_CONFIGS: dict[str, type[BackendConfig]] = {
    "torch": TorchConfig,
    "onnxruntime": OnnxRuntimeConfig,
}


def backend_config(name: str) -> BackendConfig:
    """Default config object of backend ``name`` (used for the baseline)."""
    if name not in BACKEND_CONFIGS:
        _fail("backend", name, f"available backends: {', '.join(sorted(BACKEND_CONFIGS))}")
    return BACKEND_CONFIGS[name]()


# --------------------------------------------------------------------------- data / model


SOURCES = ("synthetic", "synthetic_multilabel")


@dataclass
class DataConfig:
    """Which dataset, where, and which part of it is evaluated."""

    name: str = "synthetic"
    # Folder (or URI) of the dataset; null = medray's cache for the synthetic sets.
    root: str | None = None
    split: str = "test"
    # Evaluate a deterministic random subset of this many samples (null = all).
    limit: int | None = None
    seed: int = 0
    # Synthetic generator only.
    n_train: int = 2000
    n_calibration: int = 300
    n_test: int = 1000
    image_size: int = 256
    # Samples per block handed to the decode tasks (multiple of batch_size is best).
    read_block_size: int | None = None

    def __post_init__(self) -> None:
        if self.name not in SOURCES:
            _fail("data", self.name, f"available datasets: {', '.join(SOURCES)}")
        if self.limit is not None and self.limit < 1:
            _fail("data.limit", self.limit, "use a positive number of samples, or null for the whole split")
        for k in ("n_train", "n_calibration", "n_test", "image_size"):
            if getattr(self, k) < 1:
                _fail(f"data.{k}", getattr(self, k), "must be a positive integer")
        if self.read_block_size is not None and self.read_block_size < 1:
            _fail("data.read_block_size", self.read_block_size, "use a positive number or null (automatic)")


@dataclass
class TrainConfig:
    """How the demo model is trained when its checkpoint is not cached."""

    epochs: int = 8
    batch_size: int = 64
    lr: float = 3e-3
    seed: int = 0


@dataclass
class ModelConfig:
    """A timm architecture plus a checkpoint (state dict), or the cached demo model."""

    name: str = "demo"
    arch: str = "resnet10t"
    # Path to a state dict / medray checkpoint; null with name=demo = train or reuse the demo.
    checkpoint: str | None = None
    # null = the dataset's class count.
    num_classes: int | None = None
    in_chans: int = 3
    input_size: int = 128
    trust_checkpoint: bool = False
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        if self.checkpoint is None and self.name != "demo":
            _fail("model.checkpoint", None, f"model={self.name} needs model.checkpoint=<path to its state dict>")
        if self.checkpoint is not None:
            p = Path(self.checkpoint).expanduser()
            if not p.is_file():
                _fail(
                    "model.checkpoint",
                    self.checkpoint,
                    "file not found; give the path of the trained state dict (.pt/.pth/.safetensors)",
                )
            self.checkpoint = str(p.resolve())
        if self.in_chans not in (1, 3):
            _fail("model.in_chans", self.in_chans, "use 1 (grey) or 3 (grey repeated to RGB)")
        if self.input_size < 16:
            _fail("model.input_size", self.input_size, "use the model's input size in pixels (>= 16)")
        if self.num_classes is not None and self.num_classes < 1:
            _fail("model.num_classes", self.num_classes, "use a positive class count or null (from the dataset)")


@dataclass
class CalibrationConfig:
    """INT8 calibration samples: drawn from a split disjoint from the evaluated one."""

    split: str = "calibration"
    num_samples: int = 300
    seed: int = 0

    def __post_init__(self) -> None:
        if self.num_samples < 1:
            _fail("calibration.num_samples", self.num_samples, "use a positive number of samples")


@dataclass
class RayConfig:
    """Where to run: null address = start an embedded local Ray."""

    address: str | None = None
    # Embedded Ray only: CPUs/GPUs to advertise (null = what the machine has).
    num_cpus: int | None = None
    num_gpus: int | None = None
    # CPUs the actor pool must leave free for the read/decode tasks (never 0: it hangs).
    reserve_cpus_for_reading: float = 1.0
    include_dashboard: bool | None = None

    def __post_init__(self) -> None:
        if self.reserve_cpus_for_reading <= 0:
            _fail(
                "ray.reserve_cpus_for_reading",
                self.reserve_cpus_for_reading,
                "must be > 0: an actor pool that takes every CPU starves the read tasks and hangs",
            )


# --------------------------------------------------------------------------- root


def parse_run_name(value: str, key: str = "baseline") -> tuple[str, str]:
    """``"torch-fp32"`` → ``("torch", "fp32")``."""
    parts = value.split("-")
    if len(parts) != 2 or not all(parts):
        _fail(key, value, "use <backend>-<precision>, e.g. torch-fp32, or null to skip the baseline")
    return parts[0], parts[1]


@dataclass
class EvalConfig:
    """Root config of ``jobs/evaluate.py``."""

    # A BackendConfig subclass chosen by the `backend` config group (backend=torch ...).
    backend: Any = MISSING
    precision: str = "fp32"
    device: str = "cpu"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    task: str = "classification"
    batch_size: int = 32
    streams: int = 1
    # <backend>-<precision> evaluated on the same samples for comparison; null = none.
    baseline: str | None = "torch-fp32"
    output_dir: str = "outputs/${now:%Y-%m-%d_%H-%M-%S}"
    cache_dir: str = field(default_factory=default_cache_dir)
    # Batches run before timing starts (per actor, not counted).
    warmup_batches: int = 2
    log_level: str = "INFO"

    def __post_init__(self) -> None:
        if not isinstance(self.backend, BackendConfig):
            _fail("backend", self.backend, f"available backends: {', '.join(sorted(BACKEND_CONFIGS))}")
        if self.precision not in PRECISIONS:
            _fail("precision", self.precision, f"use one of {', '.join(PRECISIONS)}")
        if self.device not in DEVICES:
            _fail("device", self.device, f"use one of {', '.join(DEVICES)}")
        if self.task not in TASKS:
            _fail("task", self.task, f"use one of {', '.join(TASKS)}")
        self.backend.check_pair(self.device, self.precision)
        if self.batch_size < 1:
            _fail("batch_size", self.batch_size, "use a positive batch size (e.g. 16 or 32)")
        if self.streams < 1:
            _fail("streams", self.streams, "use a positive number of concurrent streams (actors)")
        if self.warmup_batches < 0:
            _fail("warmup_batches", self.warmup_batches, "use 0 or more")
        if self.baseline is not None:
            name, precision = parse_run_name(self.baseline)
            if precision not in PRECISIONS:
                _fail("baseline", self.baseline, f"precision must be one of {', '.join(PRECISIONS)}")
            backend_config(name).check_pair(self.device, precision, key="baseline")
        self.cache_dir = str(Path(self.cache_dir).expanduser().resolve())

    # Runs ---------------------------------------------------------------------------
    @property
    def run_name(self) -> str:
        return f"{self.backend.name}-{self.precision}"

    def baseline_backend(self) -> tuple[BackendConfig, str] | None:
        if self.baseline is None:
            return None
        name, precision = parse_run_name(self.baseline)
        return backend_config(name), precision

    @property
    def data_root(self) -> str:
        if self.data.root is not None:
            return self.data.root
        return str(Path(self.cache_dir) / "data" / self.data.name)


# --------------------------------------------------------------------------- Hydra glue


def register_configs() -> None:
    """Register the schemas in Hydra's ConfigStore (YAML files under conf/ extend them)."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    # Schemas live under schema/ so that `backend=...` lists only the real options;
    # each YAML pulls its schema in with `- /schema/<group>/<name>@_here_`.
    cs.store(name="evaluate_schema", node=EvalConfig)
    for name, cls in BACKEND_CONFIGS.items():
        cs.store(group="schema/backend", name=name, node=cls)
    cs.store(group="schema/data", name="data", node=DataConfig)
    cs.store(group="schema/model", name="model", node=ModelConfig)
    cs.store(group="schema/ray", name="ray", node=RayConfig)


def to_config(cfg: Any, schema: type = EvalConfig):
    """Composed DictConfig → validated dataclass tree (runs every ``__post_init__``).

    OmegaConf's own type errors (a string where an int belongs, an unknown key) are
    re-raised as ConfigError with the key named.
    """
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        if not OmegaConf.is_config(cfg):
            cfg = OmegaConf.merge(OmegaConf.structured(schema), cfg)
        obj = OmegaConf.to_object(cfg)
    except ConfigError:
        raise
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "?"
        raise ConfigError(f"{key}: {e.msg if hasattr(e, 'msg') else e}") from None
    if not isinstance(obj, schema):  # a plain dict merged without a schema
        obj = schema(**obj)
    return obj


def as_dict(obj: Any) -> Any:
    """A dataclass tree as plain dicts (for config.yaml / metrics.json)."""
    if hasattr(obj, "__dataclass_fields__"):
        return {f.name: as_dict(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [as_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: as_dict(v) for k, v in obj.items()}
    return obj
