"""Structured configs (dataclasses in Hydra's ConfigStore) and every validation rule.

YAML under ``conf/`` only sets values; the schemas and checks live here.  Validation
runs in ``__post_init__`` when the composed config is turned into objects
(:func:`to_config`), which the entry points do before Ray starts.  Every message names
the key, the bad value and the fix.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import MISSING

from medray.backends import REGISTRY, config_class
from medray.backends.config import BackendConfig
from medray.data.preprocess import PreprocessConfig
from medray.errors import ConfigError  # noqa: F401  (medray.config.ConfigError is public)
from medray.errors import fail as _fail

PRECISIONS = ("fp32", "tf32", "fp16", "bf16", "int8")
DEVICES = ("cpu", "cuda")
TASKS = ("classification", "segmentation")
TTA_MODES = ("none", "tencrop")


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


# --------------------------------------------------------------------------- backends


# name -> options class, from the one registry (medray.backends.REGISTRY).
BACKEND_CONFIGS: dict[str, type[BackendConfig]] = {name: config_class(name) for name in REGISTRY}


def backend_config(name: str) -> BackendConfig:
    """Default config object of backend ``name`` (used for the baseline)."""
    if name not in BACKEND_CONFIGS:
        _fail("backend", name, f"available backends: {', '.join(sorted(BACKEND_CONFIGS))}")
    return BACKEND_CONFIGS[name]()


# --------------------------------------------------------------------------- data / model


SOURCES = ("synthetic", "synthetic_multilabel", "imagefolder", "chestxray14", "msd")
# Sources whose samples are 3D volumes with voxel labels (task=segmentation only).
SEGMENTATION_SOURCES = ("msd",)
INTENSITY_MODES = ("auto", "window", "zscore", "none")
BLEND_MODES = ("constant", "gaussian")
_AXIS_CODES = ("LR", "AP", "SI")


@dataclass
class VolumeConfig:
    """3D volume preprocessing (segmentation sources); training and evaluation use the same.

    Defaults are the abdominal CT window of MONAI's spleen tutorial.
    """

    # auto = `window` for CT (dataset.json "modality"), `zscore` for anything else (MR...).
    intensity: str = "auto"
    # window: HU range [a_min, a_max] mapped linearly to [b_min, b_max] (clipped if clip).
    a_min: float = -175.0
    a_max: float = 250.0
    b_min: float = 0.0
    b_max: float = 1.0
    clip: bool = True
    # Resample to this voxel spacing in mm (one per axis); null = keep each file's spacing.
    spacing: list[float] | None = None
    # Reorient to these axis codes (e.g. RAS); null = keep the file's orientation.
    orientation: str | None = "RAS"

    def __post_init__(self) -> None:
        if self.intensity not in INTENSITY_MODES:
            _fail("data.volume.intensity", self.intensity, f"use one of {', '.join(INTENSITY_MODES)}")
        if not self.a_max > self.a_min:
            _fail("data.volume.a_max", self.a_max, f"must be greater than data.volume.a_min={self.a_min}")
        if self.spacing is not None:
            self.spacing = [float(v) for v in self.spacing]
            if len(self.spacing) != 3 or min(self.spacing) <= 0:
                _fail("data.volume.spacing", self.spacing, "use three positive spacings in mm, e.g. [1.5, 1.5, 2.0], or null")
        if self.orientation is not None:
            o = str(self.orientation).upper()
            axes = sorted(next((i for i, a in enumerate(_AXIS_CODES) if c in a), -1) for c in o)
            if axes != [0, 1, 2]:
                _fail("data.volume.orientation", self.orientation, "use three axis codes, one of L/R, A/P, S/I each (e.g. RAS), or null")
            self.orientation = o
# Sources that read a user's folder as published (no generator, no cache default).
FOLDER_SOURCES = ("imagefolder", "chestxray14")


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
    # Samples per read task and per actor call (the actor runs it as backend batches of
    # batch_size; a multiple of batch_size avoids ragged batches). null = about 256 samples,
    # at most 64 MiB of decoded input, several blocks per actor (classification).
    read_block_size: int | None = None
    # Decode once (medray.data.cache): the read stage's outputs cached in cache_dir/decoded
    # and read back by later runs (baseline, candidate, sweep trials). auto = images yes,
    # 3D volumes no (preprocessed float volumes are large); on / off force it.
    cache: str = "auto"
    # A sample that cannot be read (missing/truncated/undecodable file, NaN pixels, unknown
    # label): fail = stop with its path and reason; skip = evaluate the rest and list it.
    on_error: str = "fail"
    # imagefolder: class names in model-output order (null = sorted folder names);
    # chestxray14: the labels evaluated, in model-output order (null = the 14 in CheXNet order).
    classes: list[str] | None = None
    # Two-class datasets: the class whose sensitivity / specificity / PPV / F1 are reported
    # (null = the dataset's declared one, else the class that is not NORMAL/negative/benign...).
    positive_class: str | None = None
    # A CSV with a sample_id column and metadata columns (sex, age, site, scanner...) joined
    # onto the samples: subgroups (report.subgroups); a patient_id column makes the
    # bootstrap resample patients.
    metadata: str | None = None
    # chestxray14: fail if a patient has images in both the calibration and evaluated split.
    check_patient_overlap: bool = False
    # 3D sources (data=msd): intensity normalisation, resampling, orientation.
    volume: VolumeConfig = field(default_factory=VolumeConfig)

    def __post_init__(self) -> None:
        if self.name not in SOURCES:
            _fail("data", self.name, f"available datasets: {', '.join(SOURCES)}")
        if self.root is not None:
            from medray.io import is_local, local_path

            if is_local(self.root):
                self.root = local_path(self.root)  # file:///x is /x
            elif self.name in FOLDER_SOURCES or self.name in SEGMENTATION_SOURCES:
                _fail(
                    "data.root",
                    self.root,
                    f"data={self.name} reads a folder on a local disk or a shared mount (the same path on every "
                    "node); s3://, gs:// roots work with medray's manifest layout (dataset.json + manifest.csv, "
                    "e.g. an uploaded data=synthetic set)",
                )
        if self.name in FOLDER_SOURCES:
            if self.root is None:
                _fail("data.root", None, f"data={self.name} reads your copy of the dataset; set data.root=<its folder>")
            self.root = str(Path(self.root).expanduser().resolve())
            if not Path(self.root).is_dir():
                _fail("data.root", self.root, f"not a directory; point it at the unpacked {self.name} dataset")
        if self.classes is not None:
            if self.name not in FOLDER_SOURCES:
                _fail("data.classes", self.classes, f"data={self.name} has fixed classes; remove data.classes")
            dup = sorted({c for c in self.classes if list(self.classes).count(c) > 1})
            if not self.classes or dup:
                _fail("data.classes", self.classes, f"give each class name once ({'duplicates: ' + ', '.join(dup) if dup else 'empty list'})")
        if self.metadata is not None:
            from medray.io import is_local, local_path

            if is_local(self.metadata):
                self.metadata = str(Path(local_path(self.metadata)).expanduser().resolve())
                if not Path(self.metadata).is_file():
                    _fail("data.metadata", self.metadata, "no such file; give a CSV with a sample_id column and metadata columns")
        if self.check_patient_overlap and self.name != "chestxray14":
            _fail(
                "data.check_patient_overlap",
                True,
                f"data={self.name} has no patient IDs; the check exists for data=chestxray14 only",
            )
        if self.limit is not None and self.limit < 1:
            _fail("data.limit", self.limit, "use a positive number of samples, or null for the whole split")
        for k in ("n_train", "n_calibration", "n_test", "image_size"):
            if getattr(self, k) < 1:
                _fail(f"data.{k}", getattr(self, k), "must be a positive integer")
        if self.read_block_size is not None and self.read_block_size < 1:
            _fail("data.read_block_size", self.read_block_size, "use a positive number or null (automatic)")
        if self.cache not in ("auto", "on", "off"):
            _fail("data.cache", self.cache, "use auto (cache decoded images, not volumes), on or off")
        if self.on_error not in ("fail", "skip"):
            _fail("data.on_error", self.on_error, "use fail (stop at the first bad sample) or skip (list and exclude it)")


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
    kwargs: dict[str, Any] = field(default_factory=dict)
    # What the model returns: logits (softmax / sigmoid applied by task) or probs.
    output: str = "logits"
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

    def __post_init__(self) -> None:
        from medray.models.sources import FILE_SOURCES, SOURCES

        if self.source not in SOURCES:
            _fail("model.source", self.source, f"use one of {', '.join(SOURCES)} (model=<source> sets it)")
        if self.source == "timm" and self.checkpoint is None and self.name != "demo":
            _fail("model.checkpoint", None, f"model={self.name} needs model.checkpoint=<path to its state dict>")
        if self.source == "python" and not self.target:
            _fail("model.target", self.target, "model=python needs model.target=<module>:<callable> (or <file.py>:<callable>)")
        if self.source in FILE_SOURCES:
            if not self.path:
                _fail("model.path", self.path, f"model={self.source} needs model.path=<the model file>")
            p = Path(self.path).expanduser()
            if not p.is_file():
                _fail("model.path", self.path, f"file not found; give the path of the {self.source} model file")
            self.path = str(p.resolve())
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
        if self.output not in ("logits", "probs"):
            _fail("model.output", self.output, "use logits (softmax/sigmoid applied) or probs (the model's own)")
        if self.in_chans not in (1, 3):
            _fail("model.in_chans", self.in_chans, "use 1 (grey) or 3 (grey repeated to RGB)")
        if self.input_size < 16:
            _fail("model.input_size", self.input_size, "use the model's input size in pixels (>= 16)")
        if self.num_classes is not None and self.num_classes < 1:
            _fail("model.num_classes", self.num_classes, "use a positive class count or null (from the dataset)")


@dataclass
class CalibrationConfig:
    """INT8 calibration samples: drawn from a split disjoint from the evaluated one."""

    # null = the dataset's own calibration split, never the evaluated one: synthetic
    # `calibration`, imagefolder `train` (else `val`), chestxray14 `train_val`.
    split: str | None = None
    num_samples: int = 300
    seed: int = 0

    def __post_init__(self) -> None:
        if self.num_samples < 1:
            _fail("calibration.num_samples", self.num_samples, "use a positive number of samples")


@dataclass
class QuantizationConfig:
    """INT8 options that are not one backend's own."""

    # backend=openvino: NNCF accuracy-controlled quantization. Layers are reverted to
    # fp32 until the macro-AUC on the calibration split drops by at most this much
    # (absolute) from the fp32 model's. null = plain post-training quantization.
    max_drop: float | None = None

    def __post_init__(self) -> None:
        if self.max_drop is not None and not 0 < self.max_drop < 1:
            _fail("quantization.max_drop", self.max_drop, "use an absolute metric drop in (0, 1), e.g. 0.01, or null")


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


# --------------------------------------------------------------------------- root


def parse_run_name(value: str, key: str = "baseline") -> tuple[str, str]:
    """``"torch-fp32"`` → ``("torch", "fp32")`` (see :class:`medray.specs.RunName`)."""
    from medray.specs import RunName

    return RunName.parse(value, key)


@dataclass
class SlidingWindowConfig:
    """task=segmentation: MONAI ``sliding_window_inference`` around the backend's session."""

    # Window (model input) size in voxels; null = the ROI the model was trained on
    # (checkpoint meta). The exported artifacts (ONNX, engines) are built for this shape.
    roi_size: list[int] | None = None
    # Fraction of overlap between neighbouring windows, per axis.
    overlap: float = 0.25
    # Windows per backend call (the batch of a segmentation run).
    sw_batch_size: int = 4
    # Blending of overlapping windows: constant (mean) or gaussian (centre-weighted).
    mode: str = "constant"
    sigma_scale: float = 0.125

    def __post_init__(self) -> None:
        if self.roi_size is not None:
            self.roi_size = [int(v) for v in self.roi_size]
            if len(self.roi_size) != 3 or min(self.roi_size) < 1:
                _fail("sliding_window.roi_size", self.roi_size, "use three positive window sizes in voxels, e.g. [96, 96, 96], or null")
        if not 0 <= self.overlap < 1:
            _fail("sliding_window.overlap", self.overlap, "use a fraction in [0, 1), e.g. 0.25 or 0.5")
        if self.sw_batch_size < 1:
            _fail("sliding_window.sw_batch_size", self.sw_batch_size, "use a positive number of windows per backend call")
        if self.mode not in BLEND_MODES:
            _fail("sliding_window.mode", self.mode, f"use one of {', '.join(BLEND_MODES)}")
        if not self.sigma_scale > 0:
            _fail("sliding_window.sigma_scale", self.sigma_scale, "use a positive fraction of the window (0.125 is MONAI's default)")


THRESHOLD_METHODS = ("fixed", "youden", "sensitivity", "specificity")
TRACKERS = ("none", "mlflow")


@dataclass
class TrackingConfig:
    """Experiment tracking (the ``tracking=`` group): every evaluation an MLflow run, a sweep
    a parent run with one child per trial (medray.tracking)."""

    backend: str = "none"
    # null = sqlite:///<cwd>/mlruns/mlflow.db (MLflow 3 refuses its legacy file store);
    # any MLflow tracking URI (http://server:5000, sqlite:///..., databricks).
    uri: str | None = None
    experiment: str = "medray"
    # Log report.md/html, metrics.json, config.yaml and the plots as run artifacts.
    artifacts: bool = True

    def __post_init__(self) -> None:
        if self.backend not in TRACKERS:
            _fail("tracking.backend", self.backend, f"use one of {', '.join(TRACKERS)} (tracking=mlflow)")
        if self.backend == "mlflow":
            try:
                import mlflow  # noqa: F401
            except ImportError:
                _fail("tracking", "mlflow", "mlflow is not installed: pip install -e '.[tracking]' (or pip install mlflow)")
        if not self.experiment:
            _fail("tracking.experiment", self.experiment, "name the MLflow experiment, e.g. tracking.experiment=medray")

    def resolved_uri(self) -> str:
        if self.uri:
            return self.uri
        return f"sqlite:///{Path.cwd() / 'mlruns' / 'mlflow.db'}"


@dataclass
class ThresholdConfig:
    """The operating threshold (binary: the positive class's probability; multilabel: each
    label's), chosen on the baseline's predictions of a validation split and applied
    unchanged to baseline and candidate on the evaluated split."""

    # fixed = ``value``; youden = max sensitivity + specificity − 1; sensitivity /
    # specificity = the threshold reaching ``target`` on the validation split.
    method: str = "fixed"
    target: float | None = None
    value: float = 0.5
    # Where the threshold is chosen; null = calibration.split (never the evaluated split).
    split: str | None = None
    # Validation samples the baseline scores for it (a deterministic subset; null = all).
    num_samples: int | None = 2000

    def __post_init__(self) -> None:
        if self.method not in THRESHOLD_METHODS:
            _fail("threshold.method", self.method, f"use one of {', '.join(THRESHOLD_METHODS)}")
        if self.method in ("sensitivity", "specificity"):
            if self.target is None or not 0 < self.target <= 1:
                _fail("threshold.target", self.target, f"threshold.method={self.method} needs the {self.method} to reach, "
                      "a fraction in (0, 1], e.g. threshold.target=0.95")
        elif self.target is not None:
            _fail("threshold.target", self.target, f"threshold.method={self.method} takes no target; remove it "
                  "(or use threshold.method=sensitivity|specificity)")
        if not 0 <= self.value <= 1:
            _fail("threshold.value", self.value, "use a probability in [0, 1], e.g. 0.5")
        if self.num_samples is not None and self.num_samples < 10:
            _fail("threshold.num_samples", self.num_samples, "use at least 10 validation samples, or null for the whole split")


@dataclass
class ReportConfig:
    """What report.md / metrics.json break the results down by."""

    # Metadata columns whose groups get their own AUC and the candidate's change (null =
    # the dataset's: ChestX-ray14's Patient Gender, Age band, View Position; every column
    # of data.metadata).  [] = none.
    subgroups: list[str] | None = None
    # Groups smaller than this are not reported (their AUC is noise).
    min_subgroup_size: int = 10
    # ECE bins (equal width and equal mass).
    calibration_bins: int = 15
    # PNGs (ROC, reliability, confusion, subgroup ΔAUC, flipped samples) beside report.md.
    plots: bool = True
    # task=segmentation: HD95 and surface Dice at this tolerance (mm) beside Dice; null = off.
    surface_tolerance_mm: float | None = 2.0

    def __post_init__(self) -> None:
        if self.min_subgroup_size < 1:
            _fail("report.min_subgroup_size", self.min_subgroup_size, "use a positive number of samples, e.g. 10")
        if self.calibration_bins < 2:
            _fail("report.calibration_bins", self.calibration_bins, "use at least 2 bins (15 is usual)")
        if self.surface_tolerance_mm is not None and not self.surface_tolerance_mm > 0:
            _fail("report.surface_tolerance_mm", self.surface_tolerance_mm, "use a positive tolerance in mm (e.g. 2), or null")


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
            _fail("backend", self.backend, f"available backends: {', '.join(sorted(BACKEND_CONFIGS))}")
        if self.precision not in PRECISIONS:
            _fail("precision", self.precision, f"use one of {', '.join(PRECISIONS)}")
        if self.device is None:
            self.device = self.backend.DEFAULT_DEVICE
        if self.device not in DEVICES:
            _fail("device", self.device, f"use one of {', '.join(DEVICES)}")
        if self.task not in TASKS:
            _fail("task", self.task, f"use one of {', '.join(TASKS)}")
        self._check_task_data()
        self._check_source()
        self.backend.check_pair(self.device, self.precision)
        if self.quantization.max_drop is not None and (self.backend.name != "openvino" or self.precision != "int8"):
            _fail(
                "quantization.max_drop",
                self.quantization.max_drop,
                "accuracy-controlled quantization exists for backend=openvino precision=int8 (NNCF); "
                f"remove it for backend={self.backend.name} precision={self.precision}",
            )
        if self.batch_size < 1:
            _fail("batch_size", self.batch_size, "use a positive batch size (e.g. 16 or 32)")
        # A segmentation run's batch is the windows per backend call.
        batch = self.sliding_window.sw_batch_size if self.task == "segmentation" else self.batch_size
        self.backend.check_run(self.device, self.precision, batch)
        if self.streams < 1:
            _fail("streams", self.streams, "use a positive number of concurrent streams (actors)")
        if self.warmup_batches < 0:
            _fail("warmup_batches", self.warmup_batches, "use 0 or more")
        if self.tta not in TTA_MODES:
            _fail("tta", self.tta, f"use one of {', '.join(TTA_MODES)}")
        if self.task != "classification" and self.threshold.method != "fixed":
            _fail("threshold.method", self.threshold.method, "a decision threshold is for task=classification; remove it")
        if self.tta != "none" and self.task != "classification":
            _fail("tta", self.tta, f"test-time augmentation is for task=classification; use tta=none with task={self.task}")
        if self.baseline is not None:
            name, precision = parse_run_name(self.baseline)
            if precision not in PRECISIONS:
                _fail("baseline", self.baseline, f"precision must be one of {', '.join(PRECISIONS)}")
            backend_config(name).check_pair(self.device, precision, key="baseline")
        self.cache_dir = str(Path(self.cache_dir).expanduser().resolve())

    def _check_source(self) -> None:
        """model=onnx has no PyTorch model: no torch backend, an ONNX Runtime baseline."""
        onnx = self.model.source == "onnx"
        if self.baseline == "auto":
            self.baseline = "onnxruntime-fp32" if onnx else "torch-fp32"
        if onnx and self.backend.name == "torch":
            _fail("backend", "torch", "model=onnx is an ONNX file with no PyTorch model behind it; use backend=onnxruntime, "
                  "openvino or trt")
        if onnx and (self.baseline or "").startswith("torch-"):
            _fail("baseline", self.baseline, "model=onnx has no PyTorch model; use baseline=onnxruntime-fp32 (the default) or null")

    def _check_task_data(self) -> None:
        """task=segmentation needs a volume dataset with voxel labels, and only it."""
        seg_data = self.data.name in SEGMENTATION_SOURCES
        if self.task == "segmentation" and not seg_data:
            _fail(
                "task",
                self.task,
                f"data={self.data.name} is a classification dataset; segmentation needs a segmentation "
                f"dataset: use data={SEGMENTATION_SOURCES[0]} (data.root=<MSD task folder>, or unset for the synthetic phantoms)",
            )
        if seg_data and self.task != "segmentation":
            _fail("data", self.data.name, "this is a segmentation dataset (3D volumes with voxel labels); add task=segmentation")
        if self.task == "segmentation" and self.quantization.max_drop is not None:
            _fail("quantization.max_drop", self.quantization.max_drop,
                  "accuracy-controlled quantization measures macro-AUC (classification); remove it for task=segmentation")

    # Runs ---------------------------------------------------------------------------
    @property
    def run_name(self) -> str:
        from medray.specs import RunName

        return str(RunName(self.backend.name, self.precision))

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


@dataclass
class TrainJobConfig(EvalConfig):
    """Root config of ``jobs/train.py``: the evaluate config plus ``retrain``."""

    retrain: bool = False


# --------------------------------------------------------------------------- sweep

SWEEP_OBJECTIVES = ("throughput", "capacity", "latency", "latency_p95")
SWEEP_SEARCHES = ("grid", "random", "optuna")
SWEEP_SCHEDULERS = ("fifo", "asha")


@dataclass
class SweepConfig:
    """The `sweep` config group (conf/sweep/*.yaml): the grid and how Tune walks it."""

    # Device of every trial (and of the baseline); null = the root `device`.
    device: str | None = None
    # backend -> precisions tried with it; a pair the hardware does not support becomes a
    # failed trial with the validation message (the sweep goes on).
    backends: dict[str, list[str]] = field(default_factory=lambda: {"torch": ["fp32"], "onnxruntime": ["fp32"]})
    # backend -> options of its config class (e.g. onnxruntime: {graph_optimization: all}).
    backend_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    batch_sizes: list[int] = field(default_factory=lambda: [16, 64])
    streams: list[int] = field(default_factory=lambda: [1])
    # task=segmentation only: sliding_window.overlap / sliding_window.sw_batch_size values.
    overlap: list[float] = field(default_factory=list)
    sw_batch_size: list[int] = field(default_factory=list)
    # Every trial and the baseline evaluate the same random subset of this many samples
    # (null = data.limit, i.e. the whole split unless that is set).
    limit: int | None = 256
    # What the recommendation maximises among the configs that meet `constraints`:
    # throughput (end-to-end samples/s) | capacity (inference-stage samples/s, what the
    # backend takes if fed) | latency (per-sample p50) | latency_p95.
    objective: str = "throughput"
    # grid = every combination (Tune's BasicVariantGenerator); random = num_samples draws;
    # optuna = OptunaSearch (pip install optuna) over num_samples trials.
    search: str = "grid"
    # grid: repeats of the whole grid; random/optuna: trials drawn.
    num_samples: int = 1
    # fifo = run every trial to the end; asha = stop slow trials early (ASHA on the
    # running throughput, reported every `report_every` batches).
    scheduler: str = "fifo"
    report_every: int = 2
    # null = as many trials at once as the cluster holds (each trial reserves its actors
    # and a read CPU in a placement group); 1 on a one-node machine.
    max_concurrent_trials: int | None = None
    # Continue the interrupted sweep in output_dir (Tuner.restore): finished trials are kept.
    resume: bool = False
    seed: int = 0
    # Statistics of the recommended config vs the baseline.
    bootstrap_samples: int = 2000
    confidence: float = 0.95

    def __post_init__(self) -> None:
        if self.device is not None and self.device not in DEVICES:
            _fail("sweep.device", self.device, f"use one of {', '.join(DEVICES)} or null (the root device)")
        if not self.backends:
            _fail("sweep.backends", self.backends, "list at least one backend with its precisions, e.g. {torch: [fp32]}")
        for name, precisions in self.backends.items():
            if name not in BACKEND_CONFIGS:
                _fail("sweep.backends", name, f"available backends: {', '.join(sorted(BACKEND_CONFIGS))}")
            if not precisions:
                _fail(f"sweep.backends.{name}", precisions, "list at least one precision, e.g. [fp32]")
            for p in precisions:
                if p not in PRECISIONS:
                    _fail(f"sweep.backends.{name}", p, f"precisions are {', '.join(PRECISIONS)}")
        for name, opts in self.backend_options.items():
            if name not in self.backends:
                _fail("sweep.backend_options", name, f"options for a backend not in sweep.backends ({', '.join(self.backends)})")
            BACKEND_CONFIGS[name](**dict(opts))  # the backend's own validation
        for key in ("batch_sizes", "streams", "sw_batch_size"):
            values = getattr(self, key)
            if key != "sw_batch_size" and not values:
                _fail(f"sweep.{key}", values, "list at least one value")
            if any(int(v) < 1 for v in values):
                _fail(f"sweep.{key}", values, "use positive integers")
        if any(not 0 <= v < 1 for v in self.overlap):
            _fail("sweep.overlap", self.overlap, "use fractions in [0, 1), e.g. [0.25, 0.5]")
        if self.limit is not None and self.limit < 1:
            _fail("sweep.limit", self.limit, "use a positive number of samples, or null for data.limit")
        if self.objective not in SWEEP_OBJECTIVES:
            _fail("sweep.objective", self.objective, f"use one of {', '.join(SWEEP_OBJECTIVES)}")
        if self.search not in SWEEP_SEARCHES:
            _fail("sweep.search", self.search, f"use one of {', '.join(SWEEP_SEARCHES)}")
        if self.scheduler not in SWEEP_SCHEDULERS:
            _fail("sweep.scheduler", self.scheduler, f"use one of {', '.join(SWEEP_SCHEDULERS)}")
        if self.num_samples < 1:
            _fail("sweep.num_samples", self.num_samples, "use a positive number of trials / grid repeats")
        if self.report_every < 1:
            _fail("sweep.report_every", self.report_every, "use a positive number of batches")
        if self.max_concurrent_trials is not None and self.max_concurrent_trials < 1:
            _fail("sweep.max_concurrent_trials", self.max_concurrent_trials, "use a positive number or null (automatic)")
        if self.bootstrap_samples < 100:
            _fail("sweep.bootstrap_samples", self.bootstrap_samples, "use at least 100 resamples (2000 is usual)")
        if not 0.5 < self.confidence < 1:
            _fail("sweep.confidence", self.confidence, "use a level in (0.5, 1), e.g. 0.95")

    def pairs(self) -> list[str]:
        """``<backend>-<precision>`` of the grid, in config order."""
        from medray.specs import RunName

        return [str(RunName(b, p)) for b, ps in self.backends.items() for p in ps]


@dataclass
class ConstraintsConfig:
    """What a configuration may cost clinically to be recommended (null = no limit).

    Drops are baseline − candidate, as fractions (0.005 = half a point of AUC); the
    AUC / Dice limits are also the non-inferiority margins of the statistics.
    """

    max_auc_drop: float | None = 0.005
    max_bacc_drop: float | None = None
    # Top-1 (multilabel: per-label decision) agreement with the baseline.
    min_agreement: float | None = 0.99
    max_dice_drop: float | None = 0.01
    # The largest AUC drop allowed in any subgroup of report.subgroups (null = no limit).
    max_subgroup_auc_drop: float | None = None

    def __post_init__(self) -> None:
        for key in ("max_auc_drop", "max_bacc_drop", "max_dice_drop", "max_subgroup_auc_drop"):
            v = getattr(self, key)
            if v is not None and not 0 <= v <= 1:
                _fail(f"constraints.{key}", v, "use a fraction in [0, 1] (0.005 = half a point), or null for no limit")
        if self.min_agreement is not None and not 0 <= self.min_agreement <= 1:
            _fail("constraints.min_agreement", self.min_agreement, "use a fraction in [0, 1] (e.g. 0.99), or null")


@dataclass
class SweepJobConfig(EvalConfig):
    """Root config of ``jobs/sweep.py``: the evaluate config plus the grid and constraints.

    The root ``backend``/``precision`` are set from ``baseline`` (the root is the shared
    baseline run: its ``batch_size`` and ``streams`` are the baseline's); every trial is
    the root with the grid's backend, precision, batch size and streams.
    """

    sweep: SweepConfig = field(default_factory=SweepConfig)
    constraints: ConstraintsConfig = field(default_factory=ConstraintsConfig)

    def __post_init__(self) -> None:
        if self.baseline is None:
            _fail("baseline", None, "a sweep compares every trial with the baseline; set baseline=<backend>-<precision>, e.g. torch-fp32")
        if self.resume:
            _fail("resume", True, "to continue an interrupted sweep use sweep.resume=true (with the same output_dir)")
        if self.threshold.method != "fixed":
            _fail("threshold.method", self.threshold.method, "a sweep ranks trials at a fixed threshold; choose the "
                  "threshold with jobs/evaluate.py on the recommended configuration")
        if self.baseline == "auto":
            self.baseline = "onnxruntime-fp32" if self.model.source == "onnx" else "torch-fp32"
        name, precision = parse_run_name(self.baseline)
        if name not in BACKEND_CONFIGS:
            _fail("baseline", self.baseline, f"available backends: {', '.join(sorted(BACKEND_CONFIGS))}")
        if not (isinstance(self.backend, BackendConfig) and self.backend.name == name):
            self.backend = BACKEND_CONFIGS[name](**dict(self.sweep.backend_options.get(name, {})))
        self.precision = precision
        if self.sweep.device is not None:
            self.device = self.sweep.device
        super().__post_init__()


# --------------------------------------------------------------------------- Hydra glue


def register_configs() -> None:
    """Register the schemas in Hydra's ConfigStore (YAML files under conf/ extend them)."""
    from hydra.core.config_store import ConfigStore

    from medray.io import register_resolvers

    register_resolvers()  # ${medray_hydra_dir:...} in conf/ (Hydra's run dir for URI outputs)
    cs = ConfigStore.instance()
    # Schemas live under schema/ so that `backend=...` lists only the real options;
    # each YAML pulls its schema in with `- /schema/<group>/<name>@_here_`.
    cs.store(name="evaluate_schema", node=EvalConfig)
    cs.store(name="train_schema", node=TrainJobConfig)
    cs.store(name="sweep_schema", node=SweepJobConfig)
    cs.store(group="schema/sweep", name="sweep", node=SweepConfig)
    for name, cls in BACKEND_CONFIGS.items():
        cs.store(group="schema/backend", name=name, node=cls)
    cs.store(group="schema/data", name="data", node=DataConfig)
    cs.store(group="schema/model", name="model", node=ModelConfig)
    cs.store(group="schema/preprocess", name="preprocess", node=PreprocessConfig)
    cs.store(group="schema/ray", name="ray", node=RayConfig)
    cs.store(group="schema/tracking", name="tracking", node=TrackingConfig)


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
