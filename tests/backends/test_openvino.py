"""OpenVINO vs the PyTorch fp32 baseline, and proof that each precision took effect.

Tolerances: fp32 (f32 hint) max |Δprob| <= 1e-4 and logits within ORT's export
tolerance; bf16 / fp16 logits within 5e-2 / 1e-2 of their scale; int8 on in-distribution
images top-1 agreement >= 90 % and logit-margin correlation >= 0.95 (random weights).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import TINY_ARCH, TINY_SIZE, margin_corr

from medray.backends import BackendError, get_backend
from medray.backends.config import QuantizationConfig
from medray.backends.onnxruntime.config import OnnxRuntimeConfig
from medray.backends.openvino.config import OpenVINOConfig
from medray.config import ConfigError, EvalConfig
from medray.metrics.scores import probabilities

ov = pytest.importorskip("openvino", reason="the openvino extra is not installed")
pytestmark = pytest.mark.openvino

CAPS = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def _load(tiny_spec, cache, data, precision, **backend):
    spec = tiny_spec("openvino", precision, threads=2)
    for k, v in backend.items():
        setattr(spec.backend, k, v)
    spec.artifact = get_backend("openvino").prepare(spec, cache, data)
    return get_backend("openvino")(spec).load()


def test_fp32_hint_matches_torch_within_1e4(tiny_spec, cache, data, torch_logits):
    b = _load(tiny_spec, cache, data, "fp32")
    y = b.infer(data["x"])
    np.testing.assert_allclose(y, torch_logits, rtol=1e-3, atol=1e-5)
    dprob = np.abs(probabilities(y, "multiclass") - probabilities(torch_logits, "multiclass")).max()
    assert dprob <= 1e-4
    eff = b.effective_precision
    assert eff["inference_precision_hint"] == "f32" and eff["executed"] == "fp32"
    assert set(eff["compute_ops"]) == {"fp32"} and eff["compute_ops"]["fp32"] == 15  # 14 conv + fc
    assert b.spec.artifact["kind"] == "ov-ir"


@pytest.mark.skipif("BF16" not in CAPS, reason="the CPU has no bf16: nothing to fall back from")
def test_without_the_hint_openvino_would_run_bf16(tiny_spec, cache, data):
    """Why the f32 hint is set: OpenVINO's default on a bf16-capable CPU is bf16."""
    from medray.backends.openvino.backend import runtime_precision

    spec = tiny_spec("openvino", "fp32")
    art = get_backend("openvino").prepare(spec, cache, data)
    core = ov.Core()
    default = core.compile_model(core.read_model(art["path"]), "CPU")
    assert runtime_precision(default)["executed"] == "bf16"


@pytest.mark.skipif("BF16" not in CAPS, reason="the CPU has no bf16")
def test_bf16(tiny_spec, cache, data, torch_logits):
    b = _load(tiny_spec, cache, data, "bf16")
    eff = b.effective_precision
    assert eff["inference_precision_hint"] == "bf16" and set(eff["compute_ops"]) == {"bf16"}
    y = b.infer(data["x"])
    np.testing.assert_allclose(y, torch_logits, atol=5e-2 * np.abs(torch_logits).max())


@pytest.mark.skipif("FP16" not in CAPS, reason="the CPU has no fp16 support in OpenVINO")
def test_fp16(tiny_spec, cache, data, torch_logits):
    b = _load(tiny_spec, cache, data, "fp16")
    eff = b.effective_precision
    assert eff["inference_precision_hint"] == "f16" and set(eff["compute_ops"]) == {"fp16"}
    y = b.infer(data["x"])
    np.testing.assert_allclose(y, torch_logits, atol=1e-2 * np.abs(torch_logits).max())


def test_precision_the_cpu_lacks_is_refused(tiny_spec, cache, data, monkeypatch):
    real = ov.Core.get_property

    def fake(self, *args):
        if args[-1] == "OPTIMIZATION_CAPABILITIES":
            return ["FP32", "INT8"]
        return real(self, *args)

    monkeypatch.setattr(ov.Core, "get_property", fake)
    with pytest.raises(BackendError, match=r"openvino-bf16: this CPU .* has no BF16 support"):
        _load(tiny_spec, cache, data, "bf16")


def test_execution_in_another_precision_is_refused(tiny_spec, cache, data, monkeypatch):
    import medray.backends.openvino.backend as ovb

    real = ovb.runtime_precision
    monkeypatch.setattr(ovb, "runtime_precision", lambda c: {**real(c), "executed": "bf16", "compute_ops": {"bf16": 15}})
    with pytest.raises(BackendError, match=r"asked for fp32 \(hint f32\) but .* \{'bf16': 15\}; refusing"):
        _load(tiny_spec, cache, data, "fp32")


@pytest.mark.parametrize("hint,requests", [("throughput", 3), ("latency", None)])
def test_async_requests_keep_the_batch_order(tiny_spec, cache, data, hint, requests):
    b = _load(tiny_spec, cache, data, "fp32", performance_hint=hint, num_requests=requests)
    assert b.effective_precision["infer_requests"] == (requests or 1)
    x = data["x"][:7]
    one_by_one = np.concatenate([b.infer(x[i : i + 1]) for i in range(len(x))])
    np.testing.assert_allclose(b.infer(x), one_by_one, rtol=1e-5, atol=1e-6)


def test_int8_nncf(tiny_spec, cache, data, torch_logits, caplog):
    b = _load(tiny_spec, cache, data, "int8")
    art = b.spec.artifact
    assert art["kind"] == "ov-int8" and art["calibration"]["n"] == 16
    assert art["bytes"] < 0.5 * art["reference"]["bytes"]
    q = art["quantization"]
    assert q["tool"] == "nncf" and q["samples"] == 16 and "max_drop" not in q
    eff = b.effective_precision
    assert eff["executed"] == "int8" and eff["inference_precision_hint"] == "f32"
    assert eff["compute_ops"]["int8"] >= 14 and eff["kept_in_float"] == q["kept_in_float"]
    y = b.infer(data["x"])
    assert (y.argmax(1) == torch_logits.argmax(1)).mean() >= 0.9
    assert margin_corr(y, torch_logits) >= 0.95

    spec = b.spec
    with caplog.at_level("INFO", logger="medray.artifacts"):
        again = get_backend("openvino").prepare(spec, cache, data)
    assert again["cache_hit"] and again["build_s"] == 0 and again["path"] == art["path"]
    assert "ov-int8: cache hit" in caplog.text and "building" not in caplog.text
    assert again["quantization"] == q


@pytest.mark.slow
def test_int8_accuracy_control_reports_kept_layers(tiny_spec, cache, data):
    ctx = {**data, "quantization": QuantizationConfig(max_drop=0.01)}
    spec = tiny_spec("openvino", "int8")
    art = get_backend("openvino").prepare(spec, cache, ctx)
    q = art["quantization"]
    assert q["metric"] == "auc_macro" and q["max_drop"] == 0.01 and q["validation"] == "calibration split"
    assert q["fp32_metric"] - q["int8_metric"] == pytest.approx(q["drop"])
    assert q["drop"] <= 0.01 + 1e-9
    assert len(q["kept_in_float"]) == q["compute_ops"].get("fp32", 0)
    meta = json.loads((Path(art["path"]).parent / "meta.json").read_text())
    assert meta["parts"]["max_drop"] == 0.01


def test_config_matrix_and_quantization_keys():
    with pytest.raises(ConfigError, match=r"precision='tf32': backend=openvino on device=cpu supports \['fp32', 'fp16', 'bf16', 'int8'\]"):
        EvalConfig(backend=OpenVINOConfig(), precision="tf32")
    with pytest.raises(ConfigError, match="device"):
        EvalConfig(backend=OpenVINOConfig(), device="cuda")
    with pytest.raises(ConfigError, match=r"quantization.max_drop=0.01: accuracy-controlled quantization exists for backend=openvino"):
        EvalConfig(backend=OnnxRuntimeConfig(), precision="int8", quantization=QuantizationConfig(0.01))
    with pytest.raises(ConfigError, match=r"quantization.max_drop=1.5"):
        QuantizationConfig(1.5)
    with pytest.raises(ConfigError, match=r"backend.performance_hint='fast': use one of latency, throughput"):
        OpenVINOConfig(performance_hint="fast")
    with pytest.raises(ConfigError, match=r"backend.quant_method='kl'"):
        OnnxRuntimeConfig(quant_method="kl")
    EvalConfig(backend=OpenVINOConfig(), precision="int8", quantization=QuantizationConfig(0.01))


@pytest.mark.slow
def test_evaluate_job_int8_then_cache_hit(ray_local, tmp_path, tiny_checkpoint):
    """The job end to end: effective precision and artifact sizes in metrics.json; a
    second identical run builds nothing."""
    from medray.config import RayConfig
    from medray.data.config import DataConfig
    from medray.models.config import ModelConfig
    from medray.pipeline.evaluate import run

    def cfg(out, baseline="torch-fp32"):
        return EvalConfig(
            backend=OpenVINOConfig(),
            precision="int8",
            data=DataConfig(name="synthetic", root=str(tmp_path / "data"), n_train=2, n_calibration=16, n_test=24, image_size=48),
            model=ModelConfig(name="tiny", arch=TINY_ARCH, checkpoint=str(tiny_checkpoint), input_size=TINY_SIZE),
            ray=RayConfig(num_cpus=2),
            batch_size=8,
            output_dir=str(tmp_path / out),
            cache_dir=str(tmp_path / "cache"),
            warmup_batches=1,
            baseline=baseline,
        )

    doc = run(cfg("first"))
    cand = next(r for r in doc["runs"] if r["role"] == "candidate")
    assert cand["effective_precision"]["executed"] == "int8"
    assert cand["artifact"]["bytes"] < cand["artifact"]["reference"]["bytes"]
    assert cand["artifact"]["calibration"]["n"] == 16 and not cand["artifact"]["cache_hit"]
    assert cand["agreement"]["top1"] >= 0.9
    report = (tmp_path / "first" / "report.md").read_text()
    assert "## Precision" in report and "calibrated on 16 samples of split calibration" in report

    doc2 = run(cfg("second", baseline=None))  # the candidate alone: its artifacts
    cand2 = next(r for r in doc2["runs"] if r["role"] == "candidate")
    assert cand2["artifact"]["cache_hit"] and cand2["artifact"]["build_s"] == 0
    assert cand2["artifact"]["path"] == cand["artifact"]["path"]
