"""Options of backend=trt."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from medray.backends.config import QUANT_METHODS, BackendConfig
from medray.errors import fail as _fail


@dataclass
class TensorRTConfig(BackendConfig):
    """TensorRT engines built from the ONNX export, on the GPU that runs them.

    Precision lives in the graph (strongly typed network — the only mode TensorRT 11
    has): fp32/tf32 build the fp32 export (TF32 tactics off / on), fp16 an fp16-converted
    graph, int8 a Q/DQ graph calibrated on the calibration split.
    """

    name: str = "trt"
    opset: int = 17
    # Builder scratch memory (GiB) for tactics; too small excludes fast kernels.
    workspace_gb: float = 4.0
    # Optimisation profile over the batch axis: null = 1 / batch_size / batch_size.
    min_batch: int | None = None
    opt_batch: int | None = None
    max_batch: int | None = None
    # 0 (fast build) .. 5 (slowest build, most tactics); TensorRT's default is 3.
    builder_optimization_level: int = 3
    # precision=int8: activation range calibration (ONNX Runtime's static QDQ quantizer).
    quant_method: str = "minmax"
    quant_per_channel: bool = True
    # Engines are GPU-specific and built by the actors: null = <cache_dir> on each node.
    engine_cache_dir: str | None = None

    REPAIR: ClassVar[bool] = True  # quantization.repair (medray/backends/onnx/repair.py)
    SUPPORTED: ClassVar[dict[str, tuple[str, ...]]] = {"cuda": ("fp32", "tf32", "fp16", "int8")}
    DEFAULT_DEVICE: ClassVar[str] = "cuda"
    LIBRARIES: ClassVar[dict[str, str]] = {
        "tensorrt": "pip install -e '.[trt]' on the GPU node (CUDA 12/13 wheels)", "onnx": "pip install onnx"}

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 13 <= self.opset <= 23:
            _fail("backend.opset", self.opset, "use an ONNX opset between 13 and 23 (17 is a safe default)")
        if not self.workspace_gb > 0:
            _fail("backend.workspace_gb", self.workspace_gb, "use a positive size in GiB (e.g. 4)")
        if not 0 <= self.builder_optimization_level <= 5:
            _fail("backend.builder_optimization_level", self.builder_optimization_level, "use 0..5 (3 is TensorRT's default)")
        for k in ("min_batch", "opt_batch", "max_batch"):
            v = getattr(self, k)
            if v is not None and v < 1:
                _fail(f"backend.{k}", v, "use a positive batch size or null (from batch_size)")
        if self.quant_method not in QUANT_METHODS:
            _fail("backend.quant_method", self.quant_method, f"use one of {', '.join(QUANT_METHODS)}")

    def check_pair(self, device: str, precision: str, key: str = "precision") -> None:
        if device != "cuda":
            _fail(
                "device",
                device,
                "backend=trt runs only on NVIDIA GPUs: use device=cuda (its default), "
                "or backend=onnxruntime / openvino on the CPU",
            )
        super().check_pair(device, precision, key)

    def profile(self, batch_size: int) -> tuple[int, int, int]:
        """(min, opt, max) batch of the engine's optimisation profile."""
        return (self.min_batch or 1, self.opt_batch or batch_size, self.max_batch or batch_size)

    def check_run(self, device: str, precision: str, batch_size: int) -> None:
        lo, opt, hi = self.profile(batch_size)
        if hi < batch_size:
            _fail("backend.max_batch", hi, f"the engine must accept batch_size={batch_size}: use max_batch >= {batch_size} or null")
        if lo > 1:
            _fail("backend.min_batch", lo, "the last batch of a split can be smaller: use min_batch=1 or null")
        if not lo <= opt <= hi:
            _fail("backend.opt_batch", opt, f"the optimisation profile needs min_batch ({lo}) <= opt_batch <= max_batch ({hi})")
