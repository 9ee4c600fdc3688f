"""ONNX Runtime fp16 / static INT8 artifacts vs the PyTorch fp32 baseline.

Tolerances: fp16 logits within 1e-2 of fp32 (relative to their scale); int8 on
in-distribution images: top-1 agreement >= 90 % and the correlation of the logit margins
>= 0.95 (a random-weight model has small margins; the demo-model numbers are in
docs/benchmarks.md / the issue note).
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import image_calibration, margin_corr

from medray.backends.onnx.qdq import CalibrationReader, chunk_stride
from medray.backends.onnxruntime.backend import OnnxRuntimeBackend, graph_precision
from medray.data.calibration import CalibrationError, CalibrationSet


def test_fp16_artifact_and_what_the_cpu_provider_really_runs(tiny_spec, cache, data, torch_logits):
    import onnx

    spec = tiny_spec("onnxruntime", "fp16")
    spec.artifact = OnnxRuntimeBackend.prepare(spec, cache, data)
    art = spec.artifact
    assert art["kind"] == "onnx-fp16" and art["reference"]["precision"] == "fp32"
    # Weights really are fp16: about half the fp32 file.
    assert art["bytes"] < 0.6 * art["reference"]["bytes"]
    model = onnx.load(art["path"])
    assert {t.data_type for t in model.graph.initializer} == {onnx.TensorProto.FLOAT16}
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # fp32 I/O kept
    b = OnnxRuntimeBackend(spec).load()
    y = b.infer(data["x"])
    scale = np.abs(torch_logits).max()
    np.testing.assert_allclose(y, torch_logits, atol=1e-2 * scale)
    eff = b.effective_precision
    assert eff["artifact_initializer_dtypes"] == {"float16": len(model.graph.initializer)}
    # ORT 1.2x-1.31 on x86: the CPU provider has no fp16 Conv/Gemm kernels, so ORT inserts
    # casts and runs them in fp32. effective_precision must say so (the report then warns).
    assert eff["executed"] == "fp32" and eff["inserted_casts"] > 0, eff
    assert set(eff["compute_ops"]) == {"fp32"}


def test_int8_qdq_is_quantized_smaller_and_agrees(tiny_spec, cache, data, torch_logits, caplog):
    spec = tiny_spec("onnxruntime", "int8")
    spec.artifact = OnnxRuntimeBackend.prepare(spec, cache, data)
    art = spec.artifact
    assert art["kind"] == "onnx-int8" and not art["cache_hit"] and art["build_s"] > 0
    assert art["calibration"]["n"] == 16
    assert art["bytes"] < 0.5 * art["reference"]["bytes"]
    b = OnnxRuntimeBackend(spec).load()
    eff = b.effective_precision
    assert eff["executed"] == "int8" and eff["artifact_qdq_ops"] > 0
    assert eff["per_op_type"]["QLinearConv"]["int8"] >= 10  # resnet10t: 14 convs, most quantized
    assert eff["compute_ops"]["int8"] > eff["compute_ops"].get("fp32", 0)
    y = b.infer(data["x"])
    assert (y.argmax(1) == torch_logits.argmax(1)).mean() >= 0.9
    assert margin_corr(y, torch_logits) >= 0.95

    with caplog.at_level("INFO", logger="medray.artifacts"):
        again = OnnxRuntimeBackend.prepare(spec, cache, data)
    assert again["cache_hit"] and again["build_s"] == 0 and again["path"] == art["path"]
    assert "onnx-int8: cache hit" in caplog.text and "building" not in caplog.text


def test_int8_cache_key_follows_calibration_and_method(tiny_spec, cache, data):
    spec = tiny_spec("onnxruntime", "int8")
    first = OnnxRuntimeBackend.prepare(spec, cache, data)["path"]
    fewer = {**data, "calibration": image_calibration(data["calibration"].samples.iloc[:8])}
    assert OnnxRuntimeBackend.prepare(spec, cache, fewer)["path"] != first
    spec.backend.quant_method = "percentile"
    other = OnnxRuntimeBackend.prepare(spec, cache, data)
    assert other["path"] != first and not other["cache_hit"]


@pytest.mark.parametrize("method", ["entropy"])
def test_histogram_methods_build_and_run(tiny_spec, cache, data, method):
    spec = tiny_spec("onnxruntime", "int8")
    spec.backend.quant_method = method
    spec.artifact = OnnxRuntimeBackend.prepare(spec, cache, {**data, "calibration": image_calibration(data["calibration"].samples.iloc[:8])})
    b = OnnxRuntimeBackend(spec).load()
    assert b.effective_precision["executed"] == "int8"
    assert np.isfinite(b.infer(data["x"][:4])).all()


def test_int8_without_calibration_samples_fails(tiny_spec, cache):
    spec = tiny_spec("onnxruntime", "int8")
    with pytest.raises(CalibrationError, match="precision=int8 needs calibration samples"):
        OnnxRuntimeBackend.prepare(spec, cache, {})


def test_calibration_reader_chunks():
    calib = CalibrationSet(np.arange(10 * 3, dtype=np.float32).reshape(10, 3, 1, 1), [str(i) for i in range(10)])
    r = CalibrationReader(calib, batch_size=3)
    assert len(r) == 4 and chunk_stride(len(r)) == 4
    assert [len(r.get_next()["input"]) for _ in range(4)] == [3, 3, 3, 1] and r.get_next() is None
    r.set_range(1, 3)
    got = [r.get_next()["input"][0, 0, 0, 0] for _ in range(2)]
    assert got == [9.0, 18.0] and r.get_next() is None
    assert chunk_stride(10) == 2 and chunk_stride(7) == 1 and chunk_stride(12) == 4 and chunk_stride(3) == 3


def test_graph_precision_counts_compute_ops():
    from onnx import TensorProto, helper

    w16 = helper.make_tensor("w", TensorProto.FLOAT16, [2, 1, 1, 1], np.ones(2, np.float16).tobytes(), raw=True)
    g = helper.make_graph(
        [
            helper.make_node("Cast", ["x"], ["x16"], to=TensorProto.FLOAT16),
            helper.make_node("Conv", ["x16", "w"], ["y16"]),
            helper.make_node("Relu", ["y16"], ["r16"]),
            helper.make_node("Cast", ["r16"], ["y"], to=TensorProto.FLOAT),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 2, 2])],
        [w16],
    )
    info = graph_precision(helper.make_model(g))
    assert info["executed"] == "fp16" and info["compute_ops"] == {"fp16": 1}
    assert info["per_op_type"]["Relu"] == {"fp16": 1} and info["per_op_type"]["Cast"] == {"fp32": 1, "fp16": 1}


def test_load_calibration_is_what_int8_builds_use(data):
    # The ORT reader feeds exactly load_calibration's arrays, in sample_id order.
    calib = data["calibration"].load()
    r = CalibrationReader(calib, batch_size=16)
    np.testing.assert_array_equal(r.get_next()["input"], calib.inputs)


def test_report_warns_when_lower_precision_is_not_smaller_or_faster():
    from medray.report.document import warnings_of

    def run(name, precision, ms, executed=None, art=None, factor=None):
        backend = name.split("-")[0]
        return {"name": name, "backend": backend, "precision": precision, "device": "cpu",
                "latency_ms": {"per_sample_mean": ms}, "artifact": art,
                "effective_precision": {"executed": executed or precision},
                "speedup": {"factor": factor} if factor is not None else None}

    runs = [
        run("torch-fp32", "fp32", 10.0),
        run("onnxruntime-fp32", "fp32", 4.0, art={"bytes": 100}),
        run("onnxruntime-int8", "int8", 5.0, art={"bytes": 120, "reference": {"bytes": 100, "precision": "fp32"}}, factor=2.0),
        run("onnxruntime-fp16", "fp16", 3.0, executed="fp32", art={"bytes": 50, "reference": {"bytes": 100}}, factor=3.3),
    ]
    w = warnings_of(runs)
    assert "onnxruntime-int8: int8 is not faster than onnxruntime-fp32 (5.000 vs 4.000 ms per sample)" in w
    assert any(s.startswith("onnxruntime-int8: the int8 artifact (0.0 MB) is not smaller than the fp32 one") for s in w)
    assert "onnxruntime-fp16: asked for fp16 but the backend executes fp32" in w
    # faster and smaller: nothing to say about the fp16 run's speed or size
    assert not any(s.startswith("onnxruntime-fp16") and ("smaller" in s or "faster" in s) for s in w)
    assert len(w) == 3
