"""Options every backend has, what each declares (libraries, device × precision matrix,
what it needs of a model), and the backend × device × precision check.

Each backend's own options subclass :class:`BackendConfig` in
``medray/backends/<name>/config.py``; ``medray.backends.REGISTRY`` names them.  Only
dataclasses here: ``import medray.config`` must not import any inference library.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from medray.errors import fail as _fail

PRECISIONS = ("fp32", "tf32", "fp16", "bf16", "int8")
DEVICES = ("cpu", "cuda")
# precision=int8: activation range calibration methods (ONNX Runtime's static quantizer;
# TensorRT's Q/DQ graphs are built with it too).
QUANT_METHODS = ("minmax", "entropy", "percentile")


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
    # The device used when the config leaves `device` null (trt: cuda).
    DEFAULT_DEVICE: ClassVar[str] = "cpu"
    # Runs the PyTorch module itself (a model file without one cannot run here).
    NEEDS_TORCH_MODEL: ClassVar[bool] = False
    # precision=int8 with quantization.max_drop: accuracy-controlled quantization.
    ACCURACY_CONTROL: ClassVar[bool] = False
    # The libraries it imports, each with how to install it (the doctor checks them);
    # per precision, the extra ones (e.g. int8: the quantizer).
    LIBRARIES: ClassVar[dict[str, str]] = {}
    PRECISION_LIBRARIES: ClassVar[dict[str, dict[str, str]]] = {}

    def __post_init__(self) -> None:
        if self.threads is not None and self.threads < 1:
            _fail("backend.threads", self.threads, "use a positive thread count or null (automatic)")

    def check_run(self, device: str, precision: str, batch_size: int) -> None:
        """Checks of backend options against the run (device, batch); none by default."""

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
class QuantizationConfig:
    """INT8 options that are not one backend's own."""

    # backend=openvino: NNCF accuracy-controlled quantization. Layers are reverted to
    # fp32 until the macro-AUC on the calibration split drops by at most this much
    # (absolute) from the fp32 model's. null = plain post-training quantization.
    max_drop: float | None = None

    def __post_init__(self) -> None:
        if self.max_drop is not None and not 0 < self.max_drop < 1:
            _fail("quantization.max_drop", self.max_drop, "use an absolute metric drop in (0, 1), e.g. 0.01, or null")
