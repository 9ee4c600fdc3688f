"""Options every backend has, what each declares (libraries, device × precision matrix,
what it needs of a model), and the backend × device × precision check.

Each backend's own options subclass :class:`BackendConfig` in
``medray/backends/<name>/config.py``; ``medray.backends.REGISTRY`` names them.  Only
dataclasses here: ``import medray.config`` must not import any inference library.
"""

from __future__ import annotations

from dataclasses import dataclass, field
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
    # precision=int8 quantization.repair=true: keeps layers of its INT8 model in float
    # (the shared procedure of medray/backends/onnx/repair.py and a <name>/repair.py).
    REPAIR: ClassVar[bool] = False
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


REPAIR_PROBES = ("leave_one_out", "only_one")


@dataclass
class QuantizationConfig:
    """INT8 options that are not one backend's own: NNCF's accuracy control, and the INT8
    repair (``repair=true``, :mod:`medray.backends.onnx.repair`)."""

    # Without repair (backend=openvino): NNCF accuracy-controlled quantization. Layers are
    # reverted to fp32 until the macro-AUC on the calibration split drops by at most this
    # much (absolute) from the fp32 model's. null = plain post-training quantization.
    # With repair: the largest drop of the task's metric (AUC / Dice) on the validation split.
    max_drop: float | None = None
    # Keep the fewest layers in higher precision so that the limits below hold on the
    # validation split (ONNX Runtime, OpenVINO, TensorRT; precision=int8).
    repair: bool = False
    # repair: the largest drop of the task's metric in any subgroup (report.subgroups).
    max_subgroup_drop: float | None = None
    # repair: the task's metric must stay >= min_ratio × fp32's (MLPerf's Dice rule: 0.999).
    min_ratio: float | None = None
    # repair: more limits, metric -> largest drop (e.g. {balanced_accuracy: 0.01}); the
    # sweep fills it from constraints.*.
    limits: dict[str, float] = field(default_factory=dict)
    # repair: where the validation samples come from (null = calibration.split: the
    # dataset's calibration split, never the evaluated one) and how many (null = all).
    repair_split: str | None = None
    repair_samples: int | None = 1000
    # repair: the search's wall-clock budget, the largest fraction of layers kept in float,
    # and how layers are probed (leave_one_out: all INT8 but one; only_one: one INT8).
    repair_budget_s: float = 600.0
    repair_max_kept: float = 0.5
    repair_probe: str = "leave_one_out"
    # repair: when no INT8 layer set passes, fall back to fp16 / bf16 / fp32 (each step
    # reported); false = fail the run instead.
    repair_fallback: bool = True
    # repair: threads of the search's sessions on the driver (null = its cores).
    repair_threads: int | None = None
    # repair: time the repaired model against full INT8 and fp32 on the driver (report).
    repair_bench: bool = True
    # repair on a backend with ACCURACY_CONTROL: also run its own accuracy control on the
    # same validation samples and limit, and report both.
    compare_accuracy_control: bool = False

    def __post_init__(self) -> None:
        if self.max_drop is not None and not 0 < self.max_drop < 1:
            _fail("quantization.max_drop", self.max_drop, "use an absolute metric drop in (0, 1), e.g. 0.01, or null")
        if self.max_subgroup_drop is not None and not 0 <= self.max_subgroup_drop < 1:
            _fail("quantization.max_subgroup_drop", self.max_subgroup_drop, "use an absolute drop in [0, 1), or null")
        if self.min_ratio is not None and not 0 < self.min_ratio <= 1:
            _fail("quantization.min_ratio", self.min_ratio, "use a fraction in (0, 1], e.g. 0.999 (MLPerf's Dice rule)")
        for k, v in self.limits.items():
            if v is None or not 0 <= float(v) < 1:
                _fail(f"quantization.limits.{k}", v, "use an absolute metric drop in [0, 1), e.g. 0.01")
        if self.repair_samples is not None and self.repair_samples < 10:
            _fail("quantization.repair_samples", self.repair_samples, "use at least 10 validation samples, or null for all")
        if not self.repair_budget_s > 0:
            _fail("quantization.repair_budget_s", self.repair_budget_s, "use a positive number of seconds, e.g. 600")
        if not 0 <= self.repair_max_kept <= 1:
            _fail("quantization.repair_max_kept", self.repair_max_kept, "use a fraction of the layers in [0, 1], e.g. 0.5")
        if self.repair_probe not in REPAIR_PROBES:
            _fail("quantization.repair_probe", self.repair_probe, f"use one of {', '.join(REPAIR_PROBES)}")
        if self.repair_threads is not None and self.repair_threads < 1:
            _fail("quantization.repair_threads", self.repair_threads, "use a positive thread count or null (the cores)")

    def has_limit(self) -> bool:
        return any(v is not None for v in (self.max_drop, self.max_subgroup_drop, self.min_ratio)) or bool(self.limits)

    def check_run(self, backend: BackendConfig, precision: str, repairable: str, controlled: str) -> None:
        """The quantization keys against the run (before Ray starts); ``repairable`` /
        ``controlled``: the backends with REPAIR / ACCURACY_CONTROL, for the messages."""
        if self.repair:
            if precision != "int8":
                _fail("quantization.repair", True, f"the repair keeps layers of an INT8 model in higher precision: add "
                      f"precision=int8 (backend={backend.name} runs precision={precision})")
            if not backend.REPAIR:
                _fail("quantization.repair", True, f"backend={backend.name} cannot keep INT8 layers in float; use "
                      f"backend={repairable}")
            if not self.has_limit():
                _fail("quantization.repair", True, "the repair needs a limit: quantization.max_drop=0.01 (the task's "
                      "metric), quantization.max_subgroup_drop, quantization.min_ratio or quantization.limits")
            if self.compare_accuracy_control and not backend.ACCURACY_CONTROL:
                _fail("quantization.compare_accuracy_control", True, f"backend={backend.name} has no accuracy control "
                      f"of its own to compare with; it exists for backend={controlled}")
            return
        if self.compare_accuracy_control:
            _fail("quantization.compare_accuracy_control", True, "compares NNCF's accuracy control with the INT8 "
                  "repair: add quantization.repair=true")
        if self.max_drop is not None and not (backend.ACCURACY_CONTROL and precision == "int8"):
            _fail("quantization.max_drop", self.max_drop,
                  f"accuracy-controlled quantization exists for backend={controlled} precision=int8 (or add "
                  f"quantization.repair=true on backend={repairable}); remove it for backend={backend.name} "
                  f"precision={precision}")
        for key in ("max_subgroup_drop", "min_ratio"):
            if getattr(self, key) is not None:
                _fail(f"quantization.{key}", getattr(self, key), "a limit of the INT8 repair: add quantization.repair=true")
        if self.limits:
            _fail("quantization.limits", self.limits, "limits of the INT8 repair: add quantization.repair=true")
