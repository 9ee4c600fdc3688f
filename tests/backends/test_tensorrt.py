"""backend=trt: everything a CPU can check (config, cache keys, engine compatibility, the
graphs TensorRT is given, error paths), plus GPU tests that skip here with a reason."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from helpers import REPO, TINY_ARCH, TINY_SIZE, image_calibration

from medray.backends import BackendError, get_backend
from medray.backends.artifacts import ArtifactCache
from medray.backends.onnxruntime.config import OnnxRuntimeConfig
from medray.backends.tensorrt.build import (
    CALIB_CACHE_FILE,
    CALIB_IDS_FILE,
    EngineMismatchError,
    check_engine_meta,
    engine_key_parts,
    fast_precision_warnings,
    prepare_graph,
    qdq_stats,
    summarise_layers,
)
from medray.backends.tensorrt.config import TensorRTConfig
from medray.config import ConfigError, EvalConfig, RayConfig
from medray.data.config import DataConfig
from medray.io import cache_key
from medray.models.config import ModelConfig

A100 = {"gpu_name": "NVIDIA A100-SXM4-80GB", "compute_capability": "8.0", "tensorrt": "11.4.0.106"}


def _gpu_and_trt() -> str | None:
    """Why the GPU tests cannot run here (None when they can)."""
    try:
        import torch

        if not torch.cuda.is_available():
            return "no CUDA GPU on this machine"
    except Exception as e:  # pragma: no cover
        return f"torch unavailable: {e}"
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "tensorrt is not installed (pip install 'medray[trt]')"
    return None


NO_GPU = _gpu_and_trt()


def trt_spec(tiny_spec, precision="fp32", batch_size=4, **backend):
    spec = tiny_spec("onnxruntime", precision, batch_size=batch_size)
    return replace(spec, name=f"trt-{precision}", backend=TensorRTConfig(**backend), device="cuda")


# --------------------------------------------------------------------------- config


def _cfg(**kw) -> EvalConfig:
    return EvalConfig(backend=kw.pop("backend", TensorRTConfig()), ray=RayConfig(num_cpus=2), **kw)


@pytest.mark.parametrize("precision", ["fp32", "tf32", "fp16", "int8"])
def test_trt_precisions_on_cuda_and_device_follows_the_backend(precision):
    cfg = _cfg(precision=precision)
    assert cfg.device == "cuda" and cfg.run_name == f"trt-{precision}"
    assert cfg.baseline_backend()[0].name == "torch"  # baseline torch-fp32, on the same GPU
    assert EvalConfig(backend=OnnxRuntimeConfig()).device == "cpu"


@pytest.mark.parametrize(
    "kw, fragments",
    [
        ({"device": "cpu"}, ["device='cpu'", "backend=trt runs only on NVIDIA GPUs", "device=cuda"]),
        ({"precision": "bf16"}, ["precision='bf16'", "backend=trt", "['fp32', 'tf32', 'fp16', 'int8']"]),
        ({"backend": TensorRTConfig(max_batch=8), "batch_size": 16}, ["backend.max_batch=8", "max_batch >= 16"]),
        ({"backend": TensorRTConfig(min_batch=4)}, ["backend.min_batch=4", "min_batch=1"]),
        ({"backend": TensorRTConfig(opt_batch=64, max_batch=32)}, ["backend.opt_batch=64", "<= opt_batch <="]),
    ],
)
def test_trt_config_errors_name_key_value_fix(kw, fragments):
    with pytest.raises(ConfigError) as e:
        _cfg(**kw)
    for f in fragments:
        assert f in str(e.value), (f, str(e.value))


@pytest.mark.parametrize(
    "kw, fragment",
    [
        ({"workspace_gb": 0}, "backend.workspace_gb=0"),
        ({"builder_optimization_level": 6}, "backend.builder_optimization_level=6: use 0..5"),
        ({"quant_method": "kl"}, "backend.quant_method='kl'"),
        ({"opset": 9}, "backend.opset=9"),
    ],
)
def test_trt_backend_options_are_validated(kw, fragment):
    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(").replace(".", r"\.")):
        TensorRTConfig(**kw)


def test_profile_defaults_to_one_and_the_batch_size():
    assert TensorRTConfig().profile(32) == (1, 32, 32)
    assert TensorRTConfig(opt_batch=16, max_batch=64).profile(32) == (1, 16, 64)


def test_ort_tensorrt_provider_only_with_cuda(tiny_spec):
    with pytest.raises(ConfigError, match="backend.provider='tensorrt': the tensorrt provider runs on GPUs: add device=cuda"):
        EvalConfig(backend=OnnxRuntimeConfig(provider="tensorrt"))
    with pytest.raises(ConfigError, match="backend.provider='cpu'"):
        EvalConfig(backend=OnnxRuntimeConfig(provider="cpu"), device="cuda")
    with pytest.raises(ConfigError, match="backend.provider='tpu'"):
        OnnxRuntimeConfig(provider="tpu")
    assert EvalConfig(backend=OnnxRuntimeConfig(provider="tensorrt"), device="cuda").backend.provider == "tensorrt"
    from medray.backends.onnxruntime.backend import provider_for

    spec = replace(tiny_spec("onnxruntime"), backend=OnnxRuntimeConfig(provider="tensorrt"), device="cuda")
    assert provider_for(spec) == "TensorrtExecutionProvider"
    assert provider_for(replace(spec, backend=OnnxRuntimeConfig())) == "CUDAExecutionProvider"
    assert provider_for(replace(spec, backend=OnnxRuntimeConfig(), device="cpu")) == "CPUExecutionProvider"


# --------------------------------------------------------------------------- cache keys


def _key(spec, device=A100, graph=None):
    return cache_key(engine_key_parts(spec, graph or {"key": "g" * 64}, device))


@pytest.mark.parametrize(
    "change",
    [
        {"gpu_name": "NVIDIA H100 80GB HBM3"},
        {"compute_capability": "9.0"},
        {"tensorrt": "10.16.1.11"},
    ],
)
def test_engine_key_differs_by_gpu_capability_and_trt_version(tiny_spec, change):
    spec = trt_spec(tiny_spec)
    assert _key(spec) != _key(spec, {**A100, **change})


def test_engine_key_differs_by_precision_profile_and_graph_only(tiny_spec):
    spec = trt_spec(tiny_spec)
    base = _key(spec)
    assert _key(trt_spec(tiny_spec)) == base  # identical inputs → identical key
    assert _key(replace(spec, precision="fp16")) != base
    assert _key(replace(spec, batch_size=8)) != base  # opt/max of the profile
    assert _key(trt_spec(tiny_spec, max_batch=16)) != base
    assert _key(trt_spec(tiny_spec, workspace_gb=8)) != base
    assert _key(spec, graph={"key": "h" * 64}) != base
    # Settings the engine does not depend on leave the key alone.
    assert _key(replace(spec, streams=4, warmup_batches=7, role="baseline")) == base


# --------------------------------------------------------------------------- compatibility


def test_engine_meta_for_another_gpu_or_trt_is_refused():
    meta = {"parts": {**A100, "precision": "fp16"}}
    check_engine_meta(meta, A100)  # same GPU and TensorRT: fine
    with pytest.raises(EngineMismatchError) as e:
        check_engine_meta(meta, {**A100, "gpu_name": "Tesla T4", "compute_capability": "7.5"}, "/c/model.engine")
    msg = str(e.value)
    assert "gpu_name: built for 'NVIDIA A100-SXM4-80GB', this worker has 'Tesla T4'" in msg
    assert "compute_capability: built for '8.0', this worker has '7.5'" in msg and "/c/model.engine" in msg
    with pytest.raises(EngineMismatchError, match="tensorrt: built for '11.4.0.106', this worker has '10.16.1.11'"):
        check_engine_meta(meta, {**A100, "tensorrt": "10.16.1.11"})
    assert issubclass(EngineMismatchError, BackendError)


def test_actor_engine_cache_builds_per_gpu_and_refuses_foreign_meta(tiny_spec, tmp_path, monkeypatch):
    """The actor's engine step, without CUDA: a fake builder, a fake device identity."""
    import medray.backends.tensorrt.backend as tb

    builds = []

    def fake_build(onnx_path, path, spec):
        builds.append(onnx_path)
        path.write_bytes(b"engine for " + spec.precision.encode())

    monkeypatch.setattr(tb, "build_engine", fake_build)
    spec = trt_spec(tiny_spec)
    spec.artifact = {"path": "/g/model.onnx", "bytes": 10, "key": "k" * 64, "engine_cache_dir": str(tmp_path)}
    b = tb.TensorRTBackend(spec)
    b.device = A100
    first = b._engine_artifact()
    again = b._engine_artifact()
    assert len(builds) == 1 and again["cache_hit"] and again["path"] == first["path"]
    assert first["path"].startswith(str(tmp_path / "artifacts" / "trt-engine-"))
    b.device = {**A100, "gpu_name": "NVIDIA L4", "compute_capability": "8.9"}
    other = b._engine_artifact()  # another GPU: its own entry, never the A100 engine
    assert len(builds) == 2 and other["path"] != first["path"]
    # An entry whose meta.json records another GPU (copied in by hand) is refused.
    meta_path = tmp_path / "artifacts" / first["path"].split("/")[-2] / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["parts"]["gpu_name"] = "Tesla V100"
    meta_path.write_text(json.dumps(meta))
    b.device = A100
    with pytest.raises(EngineMismatchError, match="built for 'Tesla V100'"):
        b._engine_artifact()


@pytest.mark.parametrize(
    "precision, cc, warns",
    [("fp16", "6.1", True), ("fp16", "7.0", False), ("int8", "7.0", True), ("int8", "7.5", False),
     ("tf32", "7.5", True), ("tf32", "8.0", False), ("fp32", "5.2", False)],
)
def test_fast_precision_warnings_follow_compute_capability(precision, cc, warns):
    w = fast_precision_warnings(precision, cc)
    assert bool(w) == warns
    if warns:
        assert f"compute capability {cc}" in w[0] and f"no fast {precision} path" in w[0]


# --------------------------------------------------------------------------- inspector


def _layer(kind, dtype, tactic="", v11=True):
    t = {"Name": "t", "DataType": dtype, "Format": "kLINEAR"} if v11 else {"Name": "t", "Format/Datatype": dtype}
    return {"Name": kind, "LayerType": kind, "Inputs": [t], "Outputs": [t], "TacticName": tactic}


def test_inspector_summary_trt11_int8():
    info = {"Layers": [_layer("Reformat", "Float"), *[_layer("CaskConvolution", "Int8")] * 5,
                       _layer("CaskGemm", "Float"), _layer("Pooling", "Int8")],
            "I/O Tensors": [{"Name": "input"}, {"Name": "logits"}]}
    s = summarise_layers(json.dumps(info), "int8")
    assert s["executed"] == "int8" and s["layers"] == 8 and s["detailed"]
    assert s["compute_layer_precisions"] == {"int8": 5, "fp32": 1}
    assert s["layer_precisions"] == {"fp32": 2, "int8": 6} and s["reformat_layers"] == 1


def test_inspector_summary_trt10_fp16_and_tf32_tactics():
    fp16 = {"Layers": [_layer("Reformat", "Row major linear FP32", v11=False),
                       *[_layer("CaskConvolution", "Channel major FP16 format where channel % 8 == 0", v11=False)] * 3],
            "Bindings": ["input", "logits"]}
    assert summarise_layers(fp16, "fp16")["executed"] == "fp16"
    tf32 = {"Layers": [_layer("CaskConvolution", "Float", "sm80_xmma_fprop_implicit_gemm_tf32f32_tf32f32_f32")] * 2}
    s = summarise_layers(tf32, "tf32")
    assert s["executed"] == "tf32" and s["tf32_tactics"] == 2
    fp32 = {"Layers": [_layer("CaskConvolution", "Float", "sm80_xmma_fprop_implicit_gemm_f32f32_f32f32_f32")] * 2}
    assert summarise_layers(fp32, "fp32")["executed"] == "fp32"
    names_only = {"Layers": ["conv1", "conv2"], "Bindings": ["input", "logits"]}  # not built DETAILED
    s = summarise_layers(names_only, "fp16")
    assert not s["detailed"] and s["executed"] == "unknown"


# --------------------------------------------------------------------------- graphs


def test_fp32_and_tf32_engines_start_from_the_shared_fp32_export(tiny_spec, cache):
    from medray.backends.onnx.graph import onnx_artifact

    before = set(sys.modules)
    g32 = prepare_graph(trt_spec(tiny_spec, "fp32"), cache, {})
    gtf = prepare_graph(trt_spec(tiny_spec, "tf32"), cache, {})
    assert g32["path"] == gtf["path"] == onnx_artifact(tiny_spec("onnxruntime"), cache)["path"]
    assert g32["graph_precision"] == gtf["graph_precision"] == "fp32"
    assert g32["engine_cache_dir"] == str(cache.root.parent)
    other = prepare_graph(trt_spec(tiny_spec, engine_cache_dir="/nodes/local/trt"), cache, {})
    assert other["engine_cache_dir"] == "/nodes/local/trt"
    assert "tensorrt" not in set(sys.modules) - before  # the driver never imports TensorRT


def test_fp16_graph_has_fp16_weights_and_fp32_io(tiny_spec, cache):
    import onnx

    g = prepare_graph(trt_spec(tiny_spec, "fp16"), cache, {})
    m = onnx.load(g["path"])
    elem = {i.name: i.type.tensor_type.elem_type for i in [*m.graph.input, *m.graph.output]}
    assert set(elem.values()) == {onnx.TensorProto.FLOAT}  # the host sends/receives float32
    weights = [t for t in m.graph.initializer if len(t.dims) == 4]  # conv kernels
    assert weights and all(t.data_type == onnx.TensorProto.FLOAT16 for t in weights)
    assert g["reference"]["precision"] == "fp32" and g["bytes"] < g["reference"]["bytes"]


@pytest.fixture(scope="module")
def calibration(tmp_path_factory):
    """Calibration samples as the pipeline gives them: image files + ids."""
    from PIL import Image

    root = tmp_path_factory.mktemp("calib")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:48, 0:48] / 48
    rows = []
    for i in range(24):
        img = 110 + 70 * np.sin(5 * xx + i) * np.cos(3 * yy) + rng.normal(0, 10, xx.shape)
        p = root / f"c{i:03d}.png"
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(p)
        rows.append({"sample_id": f"c{i:03d}", "path": str(p), "split": "calibration"})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def int8_graph(tiny_spec, cache, calibration):
    spec = trt_spec(tiny_spec, "int8")
    return spec, prepare_graph(spec, cache, {"calibration": image_calibration(calibration)})


def test_int8_graph_is_explicit_qdq_with_zero_points_tensorrt_accepts(int8_graph):
    import onnx

    _, g = int8_graph
    m = onnx.load(g["path"])
    ops = [n.op_type for n in m.graph.node]
    convs, gemms = ops.count("Conv"), ops.count("Gemm")
    assert convs == 14 and gemms == 1  # resnet10t, BatchNorm folded
    st = qdq_stats(g["path"])
    # One DequantizeLinear per quantized weight (int8 initializers) plus one per activation
    # QuantizeLinear; every Conv/Gemm consumes dequantized int8 tensors.
    assert st["quantize_linear"] > 0
    assert st["dequantize_linear"] == st["quantize_linear"] + convs + gemms
    assert st["quantized_compute_ops"] == {"Conv": convs, "Gemm": gemms}
    assert st["zero_point_types"] == ["INT8"] and st["nonzero_zero_points"] == 0  # symmetric, no int32 bias DQ
    int8_weights = [t for t in m.graph.initializer if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 4]
    assert len(int8_weights) == convs


def test_int8_graph_stores_its_calibration(int8_graph, calibration):
    from pathlib import Path

    from medray.data.calibration import calibration_ids

    _, g = int8_graph
    d = Path(g["path"]).parent
    ids = json.loads((d / CALIB_IDS_FILE).read_text())
    assert ids["sample_ids"] == sorted(calibration["sample_id"]) and ids["n"] == 24
    assert g["calibration"] == calibration_ids(calibration)
    ranges = json.loads((d / CALIB_CACHE_FILE).read_text())
    assert ranges["calibration_method"] and ranges["data"]  # ORT's tensor ranges, reusable
    meta = json.loads((d / "meta.json").read_text())
    assert meta["parts"]["calibration"] == g["calibration"]


def test_int8_graph_agrees_with_fp32_on_onnxruntime_cpu(int8_graph, calibration, cache, tiny_spec):
    """The Q/DQ graph TensorRT is given, run by ORT on the CPU, vs the fp32 export.

    Graph optimisations off: ORT then executes each DequantizeLinear → fp32 op as written
    (the exact simulated quantization TensorRT implements), not its own int8 kernels, whose
    u8s8 path saturates on CPUs without VNNI (AVX2 only) and would test the CPU instead."""
    import onnxruntime as ort

    from medray.backends.onnx.graph import onnx_artifact
    from medray.data.calibration import load_calibration

    _, g = int8_graph
    x = load_calibration(calibration, TINY_SIZE, 3).inputs  # realistic inputs
    x = x[::-1].copy() + np.float32(0.05)  # not exactly the calibration batches
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    run = lambda p: ort.InferenceSession(p, so, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]  # noqa: E731
    ref, q = run(onnx_artifact(tiny_spec("onnxruntime"), cache)["path"]), run(g["path"])
    rel = np.linalg.norm(q - ref) / np.linalg.norm(ref)
    cos = (q * ref).sum(1) / (np.linalg.norm(q, axis=1) * np.linalg.norm(ref, axis=1))
    assert rel < 0.1 and cos.min() > 0.99, (rel, cos.min())


def test_int8_key_follows_the_calibration_set(int8_graph, calibration, cache):
    spec, g = int8_graph
    again = prepare_graph(spec, cache, {"calibration": image_calibration(calibration)})
    assert again["cache_hit"] and again["path"] == g["path"]
    fewer = prepare_graph(spec, cache, {"calibration": image_calibration(calibration.iloc[:12])})
    assert fewer["path"] != g["path"] and fewer["calibration"]["n"] == 12


def test_int8_without_calibration_samples_fails_clearly(tiny_spec, cache):
    from medray.data.calibration import CalibrationError

    with pytest.raises(CalibrationError, match="precision=int8 needs calibration samples"):
        prepare_graph(trt_spec(tiny_spec, "int8"), cache, {})


# --------------------------------------------------------------------------- no GPU


@pytest.mark.skipif(NO_GPU is None, reason="this machine has a GPU and TensorRT")
def test_loading_on_a_cpu_worker_fails_before_importing_tensorrt(tiny_spec, cache):
    spec = trt_spec(tiny_spec)
    spec.artifact = prepare_graph(spec, cache, {})
    before = "tensorrt" in sys.modules
    with pytest.raises(BackendError, match="backend=trt needs a CUDA GPU but this worker sees none"):
        get_backend("trt")(spec).load()
    assert ("tensorrt" in sys.modules) == before


def _eval_cfg(tmp_path, checkpoint, **kw) -> EvalConfig:
    return EvalConfig(
        backend=TensorRTConfig(),
        data=DataConfig(name="synthetic", root=str(tmp_path / "data"), n_train=4, n_calibration=4, n_test=8, image_size=32),
        model=ModelConfig(name="tiny", arch=TINY_ARCH, checkpoint=str(checkpoint), input_size=TINY_SIZE),
        output_dir=str(tmp_path / "out"),
        cache_dir=str(tmp_path / "cache"),
        **kw,
    )


@pytest.mark.skipif(NO_GPU is None, reason="this machine has a GPU and TensorRT")
def test_run_without_gpu_fails_before_any_work(tmp_path, tiny_checkpoint):
    from medray.pipeline.evaluate import run

    cfg = _eval_cfg(tmp_path, tiny_checkpoint, ray=RayConfig(num_cpus=2))
    with pytest.raises(ConfigError) as e:
        run(cfg)
    assert "device=cuda: the embedded local Ray would have no GPU" in str(e.value)
    assert "backend=trt runs only on NVIDIA GPUs" in str(e.value)
    assert not (tmp_path / "cache" / "artifacts").exists() and not (tmp_path / "data").exists()


@pytest.mark.skipif(NO_GPU is None, reason="this machine has a GPU and TensorRT")
def test_connected_cluster_without_gpu_is_read_from_ray(ray_local, tmp_path, tiny_checkpoint):
    from medray.pipeline.evaluate import run

    cfg = _eval_cfg(tmp_path, tiny_checkpoint, ray=RayConfig(address="auto"))
    with pytest.raises(ConfigError, match=r"device=cuda: the Ray cluster has no GPU \(resources: 2 CPU, 0 GPU\)"):
        run(cfg)
    assert not (tmp_path / "cache" / "artifacts").exists()
    assert ray_local.is_initialized()  # a cluster we did not start is left running


@pytest.mark.skipif(NO_GPU is None, reason="this machine has a GPU and TensorRT")
def test_cli_backend_trt_fails_fast_with_the_no_gpu_message(tmp_path):
    p = subprocess.run(
        [sys.executable, str(REPO / "jobs" / "evaluate.py"), "backend=trt", "precision=int8", f"output_dir={tmp_path}/out",
         f"cache_dir={tmp_path}/cache"],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )
    out = p.stderr + p.stdout
    assert p.returncode == 2, out
    assert "medray: configuration error: device=cuda: the embedded local Ray would have no GPU" in out
    assert "backend=trt runs only on NVIDIA GPUs" in out
    assert "Traceback" not in out and "Started a local Ray instance" not in out
    assert not (tmp_path / "cache" / "artifacts").exists()


# --------------------------------------------------------------------------- GPU (skipped here)


@pytest.mark.gpu
@pytest.mark.trt
@pytest.mark.skipif(NO_GPU is not None, reason=f"TensorRT engines need a CUDA GPU: {NO_GPU}")
@pytest.mark.parametrize("precision, atol", [("fp32", 1e-3), ("tf32", 2e-2), ("fp16", 2e-2), ("int8", None)])
def test_engine_matches_torch_and_reports_its_precision(tiny_spec, tmp_path, calibration, precision, atol):
    import torch

    spec = trt_spec(tiny_spec, precision, engine_cache_dir=str(tmp_path / "engines"))
    ctx = {"calibration": image_calibration(calibration)} if precision == "int8" else {}
    spec.artifact = prepare_graph(spec, ArtifactCache(tmp_path), ctx)
    b = get_backend("trt")(spec).load()
    ref_spec = replace(tiny_spec("torch"), device="cuda")
    ref = get_backend("torch")(ref_spec).load()
    x = np.random.default_rng(1).standard_normal((3, 3, TINY_SIZE, TINY_SIZE), dtype=np.float32)
    out, want = b.infer(x), ref.infer(x)
    if atol is not None:
        np.testing.assert_allclose(out, want, atol=atol, rtol=0)
    else:
        assert np.linalg.norm(out - want) / np.linalg.norm(want) < 0.1
    eff = b.effective_precision
    assert eff["executed"] in (precision, "fp32" if precision == "tf32" and torch.cuda.get_device_capability()[0] < 8 else precision)
    assert eff["gpu"]["tensorrt"] and eff["artifact"]["bytes"] > 0 and b.last_ms > 0
    again = get_backend("trt")(spec).load()  # second actor on the node: cache hit
    assert again.engine_artifact["cache_hit"] and again.engine_artifact["path"] == b.engine_artifact["path"]
    b.close()
    again.close()


@pytest.mark.gpu
@pytest.mark.trt
@pytest.mark.slow
@pytest.mark.skipif(NO_GPU is not None, reason=f"TensorRT engines need a CUDA GPU: {NO_GPU}")
def test_evaluate_trt_end_to_end_on_gpu(tmp_path, tiny_checkpoint):
    from medray.pipeline.evaluate import run

    doc = run(_eval_cfg(tmp_path, tiny_checkpoint, precision="fp16", batch_size=4, ray=RayConfig(num_cpus=2)))
    cand = doc["runs"][-1]
    assert cand["backend"] == "trt" and cand["device"] == "cuda" and cand["n_samples"] == 8
    assert cand["artifact"]["path"].endswith("model.engine") and cand["artifact"]["source_graph"]
    assert cand["effective_precision"]["executed"] == "fp16"


# --------------------------------------------------------------------------- benchmark script


def _bench():
    import importlib.util

    spec = importlib.util.spec_from_file_location("trt_bench", REPO / "benchmarks" / "trt.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _doc(precision, sps, auc, engine_bytes, baseline="trt-fp32"):
    run = {
        "name": f"trt-{precision}", "role": "candidate", "precision": precision, "throughput_sps": sps,
        "latency_ms": {"per_sample_p50": 1000 / sps, "per_sample_p95": 1200 / sps},
        "metrics": {"auc_macro": auc, "accuracy": 0.9}, "metric_deltas": {"auc_macro": auc - 0.95},
        "agreement": {"top1": 0.99}, "speedup": {"factor": sps / 100},
        "artifact": {"bytes": engine_bytes, "build_s": 12.0},
        "effective_precision": {"executed": precision, "gpu": A100},
    }
    base = {"name": baseline, "role": "baseline", "precision": "fp32", "throughput_sps": 100, "metrics": {"auc_macro": 0.95}}
    return {"runs": [base, run], "warnings": [f"trt-{precision}: something to see"]}


def test_benchmark_rows_are_seed_001_columns_and_flag_slower_precisions():
    b = _bench()
    rows = [b.row(_doc("fp32", 100, 0.95, 70e6, "torch-fp32")), b.row(_doc("fp16", 90, 0.949, 36e6))]
    assert rows[1]["engine_mb"] == 36.0 and rows[1]["auc_delta"] == pytest.approx(-0.001)
    assert rows[1]["gpu"] == A100["gpu_name"] and rows[1]["executed"] == "fp16"
    md = b.markdown(rows, "setup line")
    assert "| fp16 | fp16 | 90.0 | 11.111 | 0.9490 | -0.0010 | trt-fp32 | 0.9900 | 36.0 | 12.0 |" in md
    assert "trt-fp16 is not faster than trt-fp32 (90.0 vs 100.0 images/s)" in md
    assert "trt-fp16: something to see" in md


@pytest.mark.skipif(NO_GPU is None, reason="this machine has a GPU and TensorRT")
def test_benchmark_without_gpu_exits_with_a_message(capsys):
    assert _bench().main(["--precisions", "fp16", "int8"]) == 2
    assert "benchmarks/trt.py needs an NVIDIA GPU with TensorRT: no CUDA GPU" in capsys.readouterr().err
