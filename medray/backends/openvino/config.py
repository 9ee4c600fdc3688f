"""Options of backend=openvino."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from medray.backends.config import BackendConfig
from medray.errors import fail as _fail

OV_HINTS = ("latency", "throughput")
NNCF_PRESETS = ("performance", "mixed")


@dataclass
class OpenVINOConfig(BackendConfig):
    """OpenVINO on the CPU. Inside each actor (one per `streams`), the compiled model runs
    ``num_requests`` asynchronous infer requests concurrently, each on a slice of the
    batch; the performance hint decides how many OpenVINO streams (thread
    groups) serve them.  bf16/fp16 are execution-precision hints on the same fp32 IR;
    int8 is an NNCF-quantized IR.
    """

    name: str = "openvino"
    # latency: 1 OpenVINO stream, the whole batch in one request; throughput: OpenVINO
    # picks streams for the actor's threads and the batch is split across requests.
    performance_hint: str = "throughput"
    # Infer requests per actor (null = the compiled model's optimal number for the hint).
    num_requests: int | None = None
    # OpenVINO streams per actor (null = chosen by the performance hint).
    num_streams: int | None = None
    # Pin inference threads to cores. Off by default: several actors on one node would pin
    # to the same cores and fight; turn on with streams=1 on a dedicated node.
    cpu_pinning: bool = False
    # precision=int8 (NNCF post-training quantization).
    nncf_preset: str = "performance"
    fast_bias_correction: bool = True

    # fp16 needs a CPU whose OPTIMIZATION_CAPABILITIES list FP16 (checked when loading).
    REPAIR: ClassVar[bool] = True  # quantization.repair (medray/backends/onnx/repair.py)
    SUPPORTED: ClassVar[dict[str, tuple[str, ...]]] = {
        "cpu": ("fp32", "fp16", "bf16", "int8"),
    }
    ACCURACY_CONTROL: ClassVar[bool] = True  # NNCF's quantize_with_accuracy_control
    LIBRARIES: ClassVar[dict[str, str]] = {"openvino": "pip install -e '.[openvino]'", "onnx": "pip install onnx"}
    PRECISION_LIBRARIES: ClassVar[dict[str, dict[str, str]]] = {"int8": {"nncf": "pip install -e '.[openvino]'"}}

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.performance_hint not in OV_HINTS:
            _fail("backend.performance_hint", self.performance_hint, f"use one of {', '.join(OV_HINTS)}")
        if self.num_requests is not None and self.num_requests < 1:
            _fail("backend.num_requests", self.num_requests, "use a positive number or null (OpenVINO's optimum)")
        if self.num_streams is not None and self.num_streams < 1:
            _fail("backend.num_streams", self.num_streams, "use a positive number or null (from the performance hint)")
        if self.nncf_preset not in NNCF_PRESETS:
            _fail("backend.nncf_preset", self.nncf_preset, f"use one of {', '.join(NNCF_PRESETS)}")
