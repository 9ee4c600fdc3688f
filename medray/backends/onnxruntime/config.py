"""Options of backend=onnxruntime."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from medray.backends.config import QUANT_METHODS, BackendConfig
from medray.errors import fail as _fail

ORT_PROVIDERS = (None, "cpu", "cuda", "tensorrt")


@dataclass
class OnnxRuntimeConfig(BackendConfig):
    """ONNX Runtime on the execution provider that matches ``device`` — never another."""

    name: str = "onnxruntime"
    opset: int = 17
    # ORT graph optimisation level: disable | basic | extended | all
    graph_optimization: str = "all"
    # precision=int8 (static QDQ): activation range calibration minmax | entropy | percentile.
    quant_method: str = "minmax"
    # precision=int8: one weight scale per output channel (the usual choice for CNNs).
    quant_per_channel: bool = True
    # precision=int8: activation type, uint8 | int8 (weights are int8). uint8 on x86: ORT's
    # CPU kernels are u8s8 and convert int8 activations to uint8, a rewrite that left 54 of
    # DenseNet121's 120 convolutions unfused in fp32 (slower than fp32); uint8 fuses all.
    quant_activation: str = "uint8"
    # Execution provider: null = the device's own (CPU / CUDA); tensorrt = ORT's TensorRT
    # EP (device=cuda only). The session must get exactly this provider, never a fallback.
    provider: str | None = None

    # fp16 on cpu is listed but, on x86, ORT's CPU provider has fp16 kernels for few ops:
    # it inserts casts and runs convolutions in fp32 (slower than fp32). The backend warns,
    # and effective_precision (read from ORT's optimised graph) then says "fp32".
    # int8 on cuda is not listed: the CUDA provider has no int8 convolutions (use trt).
    REPAIR: ClassVar[bool] = True  # quantization.repair (medray/backends/onnx/repair.py)
    SUPPORTED: ClassVar[dict[str, tuple[str, ...]]] = {
        "cpu": ("fp32", "fp16", "int8"),
        "cuda": ("fp32", "fp16"),
    }
    LIBRARIES: ClassVar[dict[str, str]] = {
        "onnxruntime": "pip install onnxruntime-gpu (Linux x86_64) or onnxruntime", "onnx": "pip install onnx"}

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
        if self.quant_method not in QUANT_METHODS:
            _fail("backend.quant_method", self.quant_method, f"use one of {', '.join(QUANT_METHODS)}")
        if self.quant_activation not in ("uint8", "int8"):
            _fail("backend.quant_activation", self.quant_activation, "use uint8 (x86 CPUs) or int8")
        if self.provider not in ORT_PROVIDERS:
            _fail("backend.provider", self.provider, f"use null (the device's provider) or one of {', '.join(ORT_PROVIDERS[1:])}")

    def check_run(self, device: str, precision: str, batch_size: int) -> None:
        if self.provider in ("cuda", "tensorrt") and device != "cuda":
            _fail("backend.provider", self.provider, f"the {self.provider} provider runs on GPUs: add device=cuda, or drop backend.provider")
        if self.provider == "cpu" and device != "cpu":
            _fail("backend.provider", self.provider, f"device={device} asks for the GPU: use device=cpu, or drop backend.provider")
