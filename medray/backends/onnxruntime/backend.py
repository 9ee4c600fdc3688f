"""ONNX Runtime on exactly the execution provider asked for: fp32, fp16 (converted graph)
and int8 (static QDQ, calibrated), each built once from the cached fp32 export."""

from __future__ import annotations

import collections
import logging
import os
import tempfile

import numpy as np

from medray.backends.artifacts import ArtifactCache, int8_parts
from medray.backends.base import Backend, BackendError
from medray.backends.onnx.fp16 import fp16_artifact, reference
from medray.backends.onnx.graph import onnx_artifact
from medray.backends.onnx.repair import repair, wanted
from medray.specs import RunSpec

log = logging.getLogger("medray.backends.onnxruntime")

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}


def provider_for(spec: RunSpec) -> str:
    """The one execution provider the session must get: ``backend.provider`` or the device's."""
    return PROVIDERS[getattr(spec.backend, "provider", None) or spec.device]
_OPT_LEVELS = {
    "disable": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}


def int8_artifact(spec: RunSpec, cache: ArtifactCache, fp32: dict, context: dict) -> dict:
    """Static QDQ INT8 from the cached fp32 export, calibrated on ``context["calibration"]``."""
    import onnx
    import onnxruntime as ort

    from medray.backends.onnx.qdq import quantize_int8
    from medray.data.calibration import calibration_source

    calib = calibration_source(context, spec.name)
    cfg = spec.backend
    parts = int8_parts(spec, fp32["key"], calib.ids(), "static-qdq", activation=cfg.quant_activation,
                       method=cfg.quant_method, per_channel=cfg.quant_per_channel, device=spec.device,
                       onnxruntime=ort.__version__, onnx=onnx.__version__)

    def build(path):
        quantize_int8(
            fp32["path"], path, calib.load(), method=cfg.quant_method, per_channel=cfg.quant_per_channel,
            activation=cfg.quant_activation,
        )

    art = cache.get_or_build("onnx-int8", parts, "model.onnx", build).to_dict()
    return {**art, "reference": reference(fp32), "calibration": parts["calibration"]}


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    @classmethod
    def capability(cls, precision: str, device: str, detail: dict) -> tuple[str, str, str] | None:
        import onnxruntime as ort

        have = ort.get_available_providers()
        detail["providers"] = have
        if device == "cuda" and "CUDAExecutionProvider" not in have:
            return ("missing", f"this onnxruntime build has no CUDAExecutionProvider (has {have})",
                    "pip uninstall onnxruntime && pip install onnxruntime-gpu (matching the CUDA of the driver)")
        return None

    @classmethod
    def prepare(cls, spec: RunSpec, cache: ArtifactCache, context: dict) -> dict:
        fp32 = onnx_artifact(spec, cache, opset=spec.backend.opset)
        if spec.precision == "fp16":
            if spec.device == "cpu":
                log.warning(
                    "%s: ONNX Runtime's CPU provider has fp16 kernels for few operators on x86; it inserts "
                    "casts and runs the rest (convolutions included) in fp32, usually slower than fp32. "
                    "effective_precision reports what runs.", spec.name,
                )
            return fp16_artifact(spec, cache, fp32)
        if spec.precision == "int8" and wanted(spec, context):
            from medray.backends.onnxruntime.repair import OnnxRuntimeRepair

            target = OnnxRuntimeRepair(cls, spec, cache, context, fp32)
            return repair(spec, cache, fp32, context, target, spec.backend.SUPPORTED.get(spec.device, ()))
        if spec.precision == "int8":
            return int8_artifact(spec, cache, fp32, context)
        return fp32

    def _load(self) -> None:
        import onnxruntime as ort

        spec = self.spec
        provider = provider_for(spec)
        if provider not in ort.get_available_providers():
            raise BackendError(
                f"{spec.name}: {provider} is not available in this onnxruntime build "
                f"(has {ort.get_available_providers()}); install onnxruntime-gpu for device=cuda"
                + (" and TensorRT (pip install 'medray[trt]') for backend.provider=tensorrt" if provider == PROVIDERS["tensorrt"] else "")
            )
        so = ort.SessionOptions()
        so.intra_op_num_threads = spec.threads
        so.inter_op_num_threads = 1
        # Idle intra-op threads sleep instead of spinning: the actor shares its node's cores with
        # the read tasks, and a spinning thread holds a core a decoder needs (2-core VM, demo
        # model on fp32 beside one decode task: 660 -> 750 img/s; the bare loop within 1 %).
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _OPT_LEVELS[spec.backend.graph_optimization])
        # The graph ORT really runs (after its fusions, layout changes and the casts it
        # inserts where a provider lacks fp16 kernels) is saved once for
        # _effective_precision: the artifact file alone would not tell.
        if provider == PROVIDERS["tensorrt"]:
            # TensorRT EP partitions are compiled nodes ORT cannot serialise; the artifact's
            # graph is reported instead (TensorRT picks the kernels inside them).
            self._optimized_path = ""
        else:
            fd, self._optimized_path = tempfile.mkstemp(prefix="medray-ort-opt-", suffix=".onnx")
            os.close(fd)
            so.optimized_model_filepath = self._optimized_path
        self._session = ort.InferenceSession(spec.artifact["path"], sess_options=so, providers=[provider])
        got = self._session.get_providers()
        # ORT silently drops to the CPU provider when CUDA cannot load; refuse that.
        if not got or got[0] != provider:
            raise BackendError(
                f"{spec.name}: asked for {provider} but ONNX Runtime created the session on {got}; "
                "refusing to run on a different device than configured"
            )
        self._providers = got
        self._input = self._session.get_inputs()[0].name  # the export's "input", or a user's file's own

    def _infer(self, x: np.ndarray) -> np.ndarray:
        return self._session.run(None, {self._input: x})[0]

    def _close(self) -> None:
        self._session = None

    def _effective_precision(self) -> dict:
        import onnx

        source = "onnxruntime optimised graph"
        try:
            model = onnx.load(self._optimized_path, load_external_data=False)
        except Exception as e:  # e.g. a provider whose partitions cannot be serialised
            log.warning("%s: cannot read ORT's optimised graph (%s); reporting the artifact's graph", self.spec.name, e)
            model = onnx.load(self.spec.artifact["path"], load_external_data=False)
            source = "onnx artifact graph (optimised graph unavailable)"
        finally:
            if os.path.exists(self._optimized_path):
                os.remove(self._optimized_path)
        info = graph_precision(model)
        file_model = onnx.load(self.spec.artifact["path"], load_external_data=False)
        return {
            "requested": self.spec.precision,
            "source": source,
            "providers": self._providers,
            **info,
            "artifact_initializer_dtypes": _initializer_dtypes(file_model),
            "artifact_qdq_ops": sum(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in file_model.graph.node),
        }


# --------------------------------------------------------------------------- graph precision

# Operators that do the arithmetic (their precision is "the" precision of the model).
_COMPUTE_OPS = {
    "Conv", "FusedConv", "NhwcFusedConv", "NhwcConv", "ConvTranspose", "Gemm", "FusedGemm", "MatMul",
    "FusedMatMul", "QLinearConv", "QLinearMatMul", "QGemm", "MatMulInteger", "ConvInteger",
    "DynamicQuantizeMatMul", "MatMulIntegerToFloat",
}
# Operators whose arithmetic is integer whatever their float inputs/outputs.
_INT8_OPS = {
    "QLinearConv", "QLinearMatMul", "QGemm", "MatMulInteger", "ConvInteger", "QLinearAdd", "QLinearMul",
    "QLinearGlobalAveragePool", "QLinearAveragePool", "QLinearConcat", "QLinearSigmoid", "QLinearLeakyRelu",
    "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "QLinearSoftmax", "QLinearReduceMean", "QLinearWhere",
}
_DTYPE_NAMES = {"FLOAT": "fp32", "FLOAT16": "fp16", "BFLOAT16": "bf16", "INT8": "int8", "UINT8": "int8",
                "DOUBLE": "fp64"}


def _initializer_dtypes(model) -> dict[str, int]:
    import onnx

    return dict(collections.Counter(onnx.TensorProto.DataType.Name(t.data_type).lower() for t in model.graph.initializer))


def graph_precision(model) -> dict:
    """Per-op-type execution precision of an ONNX graph, by propagating element types.

    Returns ``executed`` (the precision of most compute ops — Conv/Gemm/MatMul and their
    fused or quantized forms), ``compute_ops`` (count per precision), ``per_op_type``
    ({op: {precision: count}}), ``quantized_op_share`` (Q/DQ and integer ops over all
    nodes) and ``inserted_casts`` (casts ORT added where a kernel lacked the precision).
    """
    import onnx

    g = model.graph
    dtype: dict[str, int] = {}
    for vi in [*g.input, *g.value_info, *g.output]:
        if vi.type.HasField("tensor_type"):
            dtype[vi.name] = vi.type.tensor_type.elem_type
    for t in g.initializer:
        dtype[t.name] = t.data_type
    per_op: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    compute: collections.Counter = collections.Counter()
    quant_like = 0
    for node in g.node:
        ins = [dtype.get(i) for i in node.input if i]
        first = next((t for t in ins if t is not None), None)
        if node.op_type in _INT8_OPS:
            prec = "int8"
        elif node.op_type in ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"):
            prec = "qdq"
        else:
            prec = _DTYPE_NAMES.get(onnx.TensorProto.DataType.Name(first), "other") if first else "unknown"
        per_op[node.op_type][prec] += 1
        if node.op_type in _COMPUTE_OPS:
            compute[prec] += 1
        if prec in ("int8", "qdq"):
            quant_like += 1
        # Element type of the outputs, for the nodes downstream.
        if node.op_type == "Cast":
            out = next(a.i for a in node.attribute if a.name == "to")
        elif node.op_type == "QuantizeLinear":
            out = ins[2] if len(ins) > 2 and ins[2] is not None else onnx.TensorProto.UINT8
        elif node.op_type == "DequantizeLinear":
            out = ins[1] if len(ins) > 1 and ins[1] is not None else onnx.TensorProto.FLOAT
        elif node.op_type in ("Shape", "Size"):
            out = onnx.TensorProto.INT64
        else:
            out = first
        for o in node.output:
            if o and o not in dtype and out is not None:
                dtype[o] = out
    executed = compute.most_common(1)[0][0] if compute else "unknown"
    return {
        "executed": executed,
        "compute_ops": dict(compute),
        "per_op_type": {k: dict(v) for k, v in sorted(per_op.items())},
        "quantized_op_share": quant_like / max(1, len(g.node)),
        "inserted_casts": sum(1 for n in g.node if n.op_type == "Cast" and n.name.startswith("InsertedPrecisionFreeCast")),
        "initializer_dtypes": _initializer_dtypes(model),
    }
