"""The composition root: the run configs the jobs validate, composed of the axes' own.

Each axis owns its options and their checks (``medray/<axis>/config.py``, registered
with Hydra's ConfigStore by :func:`register_configs`); YAML under ``conf/`` only sets
values.  What is left here is composition: :class:`EvalConfig` (``jobs/evaluate.py``)
holds one config per axis, and its rules that span axes (a task and its dataset, a
backend and its precision, a model source and its backend, the baseline) are asked of
the axes' registries — no dataset, task, model source or backend is named here.
Validation runs in ``__post_init__`` when :func:`to_config` turns the composed config
into objects, before Ray starts; every message names the key, the bad value and the fix.
The sweep's root config is :class:`medray.tune.config.SweepJobConfig`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import MISSING

from medray.backends import REGISTRY, config_class
from medray.backends.config import DEVICES, PRECISIONS, BackendConfig, QuantizationConfig
from medray.data.config import CalibrationConfig, DataConfig
from medray.data.preprocess.config import PreprocessConfig
from medray.data.sources import source as data_source
from medray.errors import ConfigError
from medray.errors import fail as _fail
from medray.models.config import ModelConfig
from medray.models.sources import source as model_source
from medray.report.config import ReportConfig
from medray.specs import RunName
from medray.tasks import task_class, task_for_kind
from medray.tasks.classification.config import TTA_MODES, ThresholdConfig
from medray.tasks.segmentation.config import SlidingWindowConfig
from medray.tracking.config import TrackingConfig


def default_cache_dir() -> str:
    return os.environ.get("MEDRAY_CACHE", str(Path("~/.cache/medray").expanduser()))


CONF_SHARE = ("share", "medray", "conf")  # where an installed medray's conf/ goes (pyproject data-files)


def conf_dir() -> Path:
    """The ``conf/`` folder of the Hydra config groups, found the same way from a checkout
    (``<repo>/conf``, beside the package) or installed (``<prefix>/share/medray/conf``);
    ``$MEDRAY_CONF`` overrides both."""
    import sysconfig

    candidates = [os.environ.get("MEDRAY_CONF"), Path(__file__).resolve().parents[1] / "conf",
                  Path(sysconfig.get_path("data")).joinpath(*CONF_SHARE)]
    for c in candidates:
        if c and (Path(c) / "evaluate.yaml").is_file():
            return Path(c)
    raise ConfigError(f"conf/: no evaluate.yaml in {[str(c) for c in candidates if c]}; reinstall medray or set MEDRAY_CONF")


def backend_config(name: str) -> BackendConfig:
    """Default config object of backend ``name`` (used for the baseline)."""
    if name not in REGISTRY:
        _fail("backend", name, f"available backends: {', '.join(sorted(REGISTRY))}")
    return config_class(name)()


def default_baseline(model: ModelConfig) -> str:
    """``baseline=auto``: the reference backend (:func:`medray.backends.reference`) for the
    model's source, at fp32."""
    from medray.backends import reference

    return str(RunName(reference(model_source(model.source).torch_model), "fp32"))


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
    # A Predictor actor that dies (crash, node loss) is restarted and its batch retried at
    # most this many times; then the run fails with the cause (Ray Data's default: forever).
    max_retries: int = 3
    # Ship the checkpoint and driver-built artifacts to the actors through the object
    # store (medray.pipeline.shipping): null = when actors may run on another node
    # (ray.address set, or several nodes); false = cache_dir is on a mount every node sees.
    ship_artifacts: bool | None = None
    # Autoscaling clusters: ask the autoscaler for this many GPUs and wait for them before
    # sizing the actor pool (the pool is sized on the GPUs present when the run starts).
    min_gpus: int = 0
    scale_timeout_s: float = 900.0
    # On a cluster (ray.address set): before any work, every node that could host the
    # actors checks it can run the requested backend × precision × device
    # (medray.doctor.cluster); a node that cannot fails the job, named with the fix.
    check_nodes: bool = True

    def __post_init__(self) -> None:
        if self.min_gpus < 0:
            _fail("ray.min_gpus", self.min_gpus, "use 0 (use the GPUs present) or the number of GPUs to wait for")
        if self.scale_timeout_s <= 0:
            _fail("ray.scale_timeout_s", self.scale_timeout_s, "use a positive number of seconds (e.g. 900)")
        if self.reserve_cpus_for_reading <= 0:
            _fail(
                "ray.reserve_cpus_for_reading",
                self.reserve_cpus_for_reading,
                "must be > 0: an actor pool that takes every CPU starves the read tasks and hangs",
            )
        if self.max_retries < 0:
            _fail("ray.max_retries", self.max_retries, "use 0 (no retry) or a small positive number such as 3")


@dataclass
class EvalConfig:
    """Root config of ``jobs/evaluate.py``."""

    # A BackendConfig subclass chosen by the `backend` config group (backend=torch ...).
    backend: Any = MISSING
    precision: str = "fp32"
    # null = the backend's device (cuda for trt, cpu for the others).
    device: str | None = None
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    # How the model's pixels are made (the preprocess= group): part of the model's contract.
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    quantization: QuantizationConfig = field(default_factory=QuantizationConfig)
    task: str = "classification"
    batch_size: int = 32
    streams: int = 1
    # <backend>-<precision> evaluated on the same samples for comparison; null = none;
    # auto = torch-fp32, or onnxruntime-fp32 for model=onnx (there is no PyTorch model).
    baseline: str | None = "auto"
    output_dir: str = "outputs/${now:%Y-%m-%d_%H-%M-%S}"
    cache_dir: str = field(default_factory=default_cache_dir)
    # Batches run before timing starts (per actor, not counted).
    warmup_batches: int = 2
    log_level: str = "INFO"
    # Continue the interrupted run in output_dir: samples already written there (its
    # predictions/<run>.parts/) are not evaluated again. Refused if the config differs.
    resume: bool = False
    # Test-time augmentation (classification): none | tencrop (seed 002's 10-crop average;
    # 10 backend calls per batch, all inside the timed latency).
    tta: str = "none"
    # task=segmentation only.
    sliding_window: SlidingWindowConfig = field(default_factory=SlidingWindowConfig)
    threshold: ThresholdConfig = field(default_factory=ThresholdConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def __post_init__(self) -> None:
        if not isinstance(self.backend, BackendConfig):
            _fail("backend", self.backend, f"available backends: {', '.join(sorted(REGISTRY))}")
        if self.precision not in PRECISIONS:
            _fail("precision", self.precision, f"use one of {', '.join(PRECISIONS)}")
        if self.device is None:
            self.device = self.backend.DEFAULT_DEVICE
        if self.device not in DEVICES:
            _fail("device", self.device, f"use one of {', '.join(DEVICES)}")
        task = task_class(self.task)
        self._check_task_data(task)
        self._check_source()
        self.backend.check_pair(self.device, self.precision)
        self.quantization.check_run(self.backend, self.precision, *("|".join(n for n in REGISTRY if getattr(
            config_class(n), flag)) for flag in ("REPAIR", "ACCURACY_CONTROL")))
        if self.batch_size < 1:
            _fail("batch_size", self.batch_size, "use a positive batch size (e.g. 16 or 32)")
        self.backend.check_run(self.device, self.precision, task.backend_batch(self))
        if self.streams < 1:
            _fail("streams", self.streams, "use a positive number of concurrent streams (actors)")
        if self.warmup_batches < 0:
            _fail("warmup_batches", self.warmup_batches, "use 0 or more")
        if self.tta not in TTA_MODES:
            _fail("tta", self.tta, f"use one of {', '.join(TTA_MODES)}")
        task.check_config(self)
        task.check_repair(self)
        task.check_expected(self)
        if self.baseline is not None:
            name, precision = RunName.parse(self.baseline)
            if precision not in PRECISIONS:
                _fail("baseline", self.baseline, f"precision must be one of {', '.join(PRECISIONS)}")
            backend_config(name).check_pair(self.device, precision, key="baseline")
        self.cache_dir = str(Path(self.cache_dir).expanduser().resolve())

    def _check_source(self) -> None:
        """A model without a PyTorch module (a model file) runs only on backends that take
        the file; its baseline is the first of them."""
        if self.baseline == "auto":
            self.baseline = default_baseline(self.model)
        if model_source(self.model.source).torch_model:
            return
        others = "|".join(n for n in REGISTRY if not config_class(n).NEEDS_TORCH_MODEL)
        if self.backend.NEEDS_TORCH_MODEL:
            _fail("backend", self.backend.name, f"model={self.model.source} is a model file with no PyTorch model "
                  f"behind it; use backend={others}")
        if self.baseline is not None and config_class(RunName.parse(self.baseline).backend).NEEDS_TORCH_MODEL:
            _fail("baseline", self.baseline, f"model={self.model.source} has no PyTorch model; use "
                  f"baseline={default_baseline(self.model)} (the default) or null")

    def _check_task_data(self, task) -> None:
        """The task evaluates the dataset's kind of samples (asked of both registries)."""
        kind = data_source(self.data.name).kind
        if kind in task.data_kinds:
            return
        other = task_for_kind(kind)
        # The default task with another kind of data: the dataset names the task to add.
        if other is None or self.task != EvalConfig.__dataclass_fields__["task"].default:
            from medray.data.sources import of_kind

            _fail("task", self.task, f"data={self.data.name} is a {other.name if other else kind} dataset; {self.task} "
                  f"needs a {self.task} dataset: use data={of_kind(task.data_kinds[0])[0]}{task.data_hint}")
        _fail("data", self.data.name, f"this is a {other.name} dataset ({other.data_description}); add task={other.name}")

    # Runs ---------------------------------------------------------------------------
    @property
    def run_name(self) -> str:
        from medray.specs import RunName

        return str(RunName(self.backend.name, self.precision))

    def baseline_backend(self) -> tuple[BackendConfig, str] | None:
        if self.baseline is None:
            return None
        name, precision = RunName.parse(self.baseline)
        return backend_config(name), precision

    @property
    def data_root(self) -> str:
        if self.data.root is not None:
            return self.data.root
        return str(Path(self.cache_dir) / "data" / self.data.name)


@dataclass
class TrainJobConfig(EvalConfig):
    """Root config of ``jobs/train.py``: the evaluate config plus ``retrain``."""

    retrain: bool = False


def register_configs() -> None:
    """Register the evaluate / train schemas and every axis' group schema in Hydra's
    ConfigStore (YAML files under conf/ extend them); :func:`medray.cli.register_configs`
    adds the sweep's."""
    from hydra.core.config_store import ConfigStore

    from medray.io import register_resolvers

    register_resolvers()  # ${medray_hydra_dir:...} in conf/ (Hydra's run dir for URI outputs)
    cs = ConfigStore.instance()
    # Schemas live under schema/ so that `backend=...` lists only the real options;
    # each YAML pulls its schema in with `- /schema/<group>/<name>@_here_`.
    cs.store(name="evaluate_schema", node=EvalConfig)
    cs.store(name="train_schema", node=TrainJobConfig)
    for name in REGISTRY:
        cs.store(group="schema/backend", name=name, node=config_class(name))
    for group, node in (("data", DataConfig), ("model", ModelConfig), ("preprocess", PreprocessConfig),
                        ("ray", RayConfig), ("tracking", TrackingConfig)):
        cs.store(group=f"schema/{group}", name=group, node=node)


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
