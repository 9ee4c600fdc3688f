"""TensorRT's Q/DQ graphs: their form (symmetric int8, float biases), file names, and the
statistics that prove it (zero points 0, which layers read Q/DQ inputs).  Shared by the
graph builds (:mod:`.build`) and the INT8 repair (:mod:`.repair`)."""

from __future__ import annotations

import collections

from medray.backends.onnx.qdq import QdqSettings

CALIB_CACHE_FILE = "calibration_cache.json"
CALIB_IDS_FILE = "calibration.json"


def trt_settings(cfg) -> QdqSettings:
    """TensorRT's Q/DQ form: symmetric int8 activations and weights (zero points 0), float
    biases; calibration ``backend.quant_method``."""
    return QdqSettings("int8", cfg.quant_method, cfg.quant_per_channel, symmetric=True)


def qdq_stats(path) -> dict:
    """Q/DQ node counts and zero points of a graph (TensorRT needs all zero points 0)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path), load_external_data=False)
    ops = collections.Counter(n.op_type for n in model.graph.node)
    inits = {t.name: t for t in model.graph.initializer}
    zps, zp_types = [], set()
    for n in model.graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2 and n.input[2] in inits:
            t = inits[n.input[2]]
            zp_types.add(onnx.TensorProto.DataType.Name(t.data_type))
            zps.extend(numpy_helper.to_array(t).ravel().tolist())
    quantized = [
        n.op_type
        for n in model.graph.node
        if n.op_type in ("Conv", "Gemm", "MatMul") and any(i in _dq_outputs(model) for i in n.input[:2])
    ]
    return {
        "quantize_linear": ops.get("QuantizeLinear", 0),
        "dequantize_linear": ops.get("DequantizeLinear", 0),
        "zero_point_types": sorted(zp_types),
        "nonzero_zero_points": int(sum(1 for z in zps if z != 0)),
        "quantized_compute_ops": dict(collections.Counter(quantized)),
        "compute_ops": {k: ops[k] for k in ("Conv", "Gemm", "MatMul") if ops.get(k)},
    }


def _dq_outputs(model) -> set[str]:
    return {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
