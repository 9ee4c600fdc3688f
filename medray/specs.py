"""What crosses into the actors: plain dataclasses and absolute paths, never Hydra objects.

:class:`ModelSpec` (how to rebuild the model), :class:`RunSpec` (one evaluated
configuration) and :class:`RunName` (the ``<backend>-<precision>`` name of a run, built
and parsed only here).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

from medray.errors import fail

if TYPE_CHECKING:
    import pandas as pd

    from medray.backends.config import BackendConfig
    from medray.pipeline.resources import PoolPlan


class RunName(NamedTuple):
    """``<backend>-<precision>``: the name of a run in outputs, logs and sweeps."""

    backend: str
    precision: str

    def __str__(self) -> str:
        return f"{self.backend}-{self.precision}"

    @classmethod
    def parse(cls, value: str, key: str = "baseline") -> RunName:
        """``"torch-fp32"`` → ``RunName("torch", "fp32")``; a ConfigError naming ``key`` otherwise."""
        parts = str(value).split("-")
        if len(parts) != 2 or not all(parts):
            fail(key, value, "use <backend>-<precision>, e.g. torch-fp32, or null to skip the baseline")
        return cls(parts[0], parts[1])


@dataclass
class ModelSpec:
    """What an actor needs to rebuild the model: no Hydra objects, absolute paths."""

    arch: str
    num_classes: int
    in_chans: int
    input_size: int
    checkpoint: str | None
    checkpoint_sha256: str | None = None
    trust_checkpoint: bool = False
    task: str = "multiclass"
    # Spatial input shape when it is not input_size × input_size: the sliding-window ROI
    # (D, H, W) of a 3D segmentation model.
    spatial: tuple[int, ...] | None = None
    # Constructor arguments of non-timm architectures (MONAI UNet channels/strides...).
    net: dict = field(default_factory=dict)
    # Where the model comes from (medray.models.sources): timm | python | torchscript |
    # exported | onnx; ``path`` (+ its sha256) for the file sources, ``target``/``kwargs``
    # for python.
    source: str = "timm"
    path: str | None = None
    path_sha256: str | None = None
    target: str | None = None
    kwargs: dict = field(default_factory=dict)
    # What the model returns: logits (softmax / sigmoid applied) or probs.
    output: str = "logits"
    # Outputs of the model when not num_classes: 1 = a binary model's positive-class score.
    out_features: int | None = None
    # The class a one-output binary model scores (index into the dataset's classes).
    positive_index: int = 1
    # The resolved preprocessing (medray.data.preprocess.resolve); empty = the medray
    # preset at input_size (the demo models).
    preprocess: dict = field(default_factory=dict)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """One sample's input shape without the batch axis: ``(C, *spatial)``, or the
        preprocessing's ``(C, H, W)`` / ``(H, W, C)``."""
        if self.spatial is not None:
            return (self.in_chans, *(int(v) for v in self.spatial))
        if self.preprocess:
            from medray.data.preprocess import input_shape

            return input_shape(self.preprocess, self.in_chans)
        return (self.in_chans, self.input_size, self.input_size)


@dataclass
class RunSpec:
    """One evaluated configuration (baseline or candidate), as shipped to the actors."""

    name: str
    role: str
    backend: BackendConfig
    precision: str
    device: str
    batch_size: int
    streams: int
    model: ModelSpec
    threads: int = 1
    warmup_batches: int = 2
    artifact: dict | None = None  # {"path", "bytes", "build_s", "cache_hit", "key"}
    options: dict = field(default_factory=dict)
    # Test-time augmentation (medray.data.tta): the Predictor runs every view through
    # the backend and averages probabilities; latency covers all the views.
    tta: str = "none"


@dataclass
class RunResult:
    """Per-sample outputs of one run plus what the driver measured (every task)."""

    spec: RunSpec
    predictions: pd.DataFrame
    # Driver clock: the first sample handed to Ray Data → the last result received.
    wall_s: float
    # End to end: the rate of the slower stage while both run (start-up excluded);
    # medray.metrics.performance.pipeline_rates.
    throughput_sps: float
    pool: PoolPlan
    effective_precision: dict
    # Samples that could not be read (data.on_error=skip): sample_id, reason.
    skipped: pd.DataFrame | None = None
    # {"from_previous": n, "processed": n} when resume=true found finished samples.
    resumed: dict | None = None
    # Second copies of samples a retried batch delivered again (identical, dropped).
    n_deduplicated: int = 0
    # Inference-stage capacity: samples / time the actors spent in predict calls.
    inference_sps: float | None = None
    # First sample handed to Ray Data → first predict call (actor start, model load, warm-up).
    startup_s: float | None = None
    # The decoded cache's {"dir", "hits", "misses"} for this run (None: not used).
    read_cache: dict | None = None
