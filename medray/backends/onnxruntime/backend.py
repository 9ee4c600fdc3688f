"""ONNX Runtime on exactly the execution provider asked for."""

from __future__ import annotations

import numpy as np

from medray.backends.artifacts import ArtifactCache
from medray.backends.base import Backend, BackendError, RunSpec
from medray.models.export import INPUT_NAME

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
_OPT_LEVELS = {
    "disable": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}


def onnx_artifact(spec: RunSpec, cache: ArtifactCache, opset: int = 17) -> dict:
    """The fp32 ONNX export of the spec's model (cached by checkpoint content + settings)."""
    import onnx
    import torch

    m = spec.model
    parts = {
        "checkpoint_sha256": m.checkpoint_sha256,
        "arch": m.arch,
        "num_classes": m.num_classes,
        "input_shape": list(m.input_shape),
        "opset": opset,
        "exporter": "torchscript",
        "torch": torch.__version__,
        "onnx": onnx.__version__,
    }

    def build(path):
        from medray.models.export import export_onnx
        from medray.models.factory import load_model

        model = load_model(m.arch, m.num_classes, m.in_chans, m.checkpoint, trust=m.trust_checkpoint)
        export_onnx(model, path, m.input_shape, opset=opset)

    return cache.get_or_build("onnx", parts, "model.onnx", build).to_dict()


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    @classmethod
    def prepare(cls, spec: RunSpec, cache: ArtifactCache, context: dict) -> dict:
        return onnx_artifact(spec, cache, opset=spec.backend.opset)

    def _load(self) -> None:
        import onnxruntime as ort

        spec = self.spec
        provider = PROVIDERS[spec.device]
        if provider not in ort.get_available_providers():
            raise BackendError(
                f"{spec.name}: {provider} is not available in this onnxruntime build "
                f"(has {ort.get_available_providers()}); install onnxruntime-gpu for device=cuda"
            )
        so = ort.SessionOptions()
        so.intra_op_num_threads = spec.threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _OPT_LEVELS[spec.backend.graph_optimization])
        self._session = ort.InferenceSession(spec.artifact["path"], sess_options=so, providers=[provider])
        got = self._session.get_providers()
        # ORT silently drops to the CPU provider when CUDA cannot load; refuse that.
        if not got or got[0] != provider:
            raise BackendError(
                f"{spec.name}: asked for {provider} but ONNX Runtime created the session on {got}; "
                "refusing to run on a different device than configured"
            )
        self._providers = got
        self._input = self._session.get_inputs()[0].name
        assert self._input == INPUT_NAME, self._input

    def _infer(self, x: np.ndarray) -> np.ndarray:
        return self._session.run(None, {self._input: x})[0]

    def _close(self) -> None:
        self._session = None

    def _effective_precision(self) -> dict:
        import collections

        import onnx

        model = onnx.load(self.spec.artifact["path"], load_external_data=False)
        init_types = collections.Counter(
            onnx.TensorProto.DataType.Name(t.data_type).lower() for t in model.graph.initializer
        )
        ops = collections.Counter(n.op_type for n in model.graph.node)
        quant = sum(v for k, v in ops.items() if k in ("QuantizeLinear", "DequantizeLinear", "QLinearConv"))
        executed = "int8" if quant else ("fp16" if init_types.get("float16") else "fp32")
        return {
            "requested": self.spec.precision,
            "executed": executed,
            "source": "onnx graph",
            "providers": self._providers,
            "initializer_dtypes": dict(init_types),
            "quantized_op_share": quant / max(1, sum(ops.values())),
        }
