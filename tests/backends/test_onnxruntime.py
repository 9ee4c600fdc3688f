"""ONNX Runtime vs the PyTorch baseline on the same inputs (seed 001's tolerance)."""

from __future__ import annotations

import numpy as np
import pytest

from medray.backends import BackendError, get_backend
from medray.backends.artifacts import ArtifactCache
from medray.backends.onnxruntime.backend import OnnxRuntimeBackend

# Seed 001 validates its ONNX export against PyTorch with rtol 1e-3, atol 1e-5.
RTOL, ATOL = 1e-3, 1e-5


def _batch(n=5, size=32, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 3, size, size), dtype=np.float32)


def test_ort_fp32_matches_torch(tiny_spec, cache):
    t_spec = tiny_spec("torch")
    o_spec = tiny_spec("onnxruntime")
    o_spec.artifact = OnnxRuntimeBackend.prepare(o_spec, cache, {})
    torch_b = get_backend("torch")(t_spec).load()
    ort_b = get_backend("onnxruntime")(o_spec).load()
    for n in (1, 4, 7):  # dynamic batch axis: any size, not only the exported one
        x = _batch(n, seed=n)
        np.testing.assert_allclose(ort_b.infer(x), torch_b.infer(x), rtol=RTOL, atol=ATOL)
    assert ort_b.last_ms > 0
    eff = ort_b.effective_precision
    assert eff["executed"] == "fp32" and eff["providers"][0] == "CPUExecutionProvider"
    assert eff["initializer_dtypes"].get("float", 0) > 0 and eff["quantized_op_share"] == 0
    # Its idle threads sleep: the actor shares the node's cores with the read tasks.
    opts = ort_b._session.get_session_options()
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert opts.intra_op_num_threads == o_spec.threads


def test_export_is_cached_by_content(tiny_spec, cache, caplog):
    spec = tiny_spec("onnxruntime")
    first = OnnxRuntimeBackend.prepare(spec, cache, {})
    with caplog.at_level("INFO", logger="medray.artifacts"):
        second = OnnxRuntimeBackend.prepare(spec, cache, {})
    assert second["cache_hit"] and second["build_s"] == 0 and second["path"] == first["path"]
    assert "cache hit" in caplog.text
    spec.backend.opset = 18  # a different export setting is a different artifact
    third = OnnxRuntimeBackend.prepare(spec, cache, {})
    assert third["path"] != first["path"] and not third["cache_hit"]


def test_corrupted_cache_entry_is_rebuilt(tiny_spec, cache):
    spec = tiny_spec("onnxruntime")
    a = OnnxRuntimeBackend.prepare(spec, cache, {})
    with open(a["path"], "r+b") as f:
        f.truncate(100)
    b = OnnxRuntimeBackend.prepare(spec, cache, {})
    assert not b["cache_hit"] and b["bytes"] == a["bytes"]


def test_refuses_a_provider_it_does_not_have(tiny_spec, cache, monkeypatch):
    import onnxruntime as ort

    spec = tiny_spec("onnxruntime")
    spec.artifact = OnnxRuntimeBackend.prepare(spec, cache, {})
    spec.device = "cuda"
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with pytest.raises(BackendError, match="CUDAExecutionProvider is not available"):
        OnnxRuntimeBackend(spec).load()


def test_refuses_silent_fallback_to_cpu(tiny_spec, cache, monkeypatch):
    """ORT builds a CPU session when CUDA fails to load; medray must not run it."""
    import onnxruntime as ort

    spec = tiny_spec("onnxruntime")
    spec.artifact = OnnxRuntimeBackend.prepare(spec, cache, {})
    spec.device = "cuda"
    real = ort.InferenceSession
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(
        ort, "InferenceSession", lambda path, sess_options, providers: real(path, sess_options, providers=["CPUExecutionProvider"])
    )
    with pytest.raises(BackendError, match="created the session on \\['CPUExecutionProvider'\\]"):
        OnnxRuntimeBackend(spec).load()


def test_input_shape_is_checked(tiny_spec, cache):
    spec = tiny_spec("onnxruntime")
    spec.artifact = OnnxRuntimeBackend.prepare(spec, cache, {})
    b = OnnxRuntimeBackend(spec).load()
    with pytest.raises(BackendError, match=r"input shape \(2, 1, 32, 32\) does not match the model's \(N, 3, 32, 32\)"):
        b.infer(np.zeros((2, 1, 32, 32), np.float32))


def test_corrupted_companion_file_is_a_cache_miss(tmp_path):
    """An entry whose second file (e.g. an IR's model.bin) changed is rebuilt."""
    cache = ArtifactCache(tmp_path)
    calls = []

    def build(path):
        calls.append(path)
        path.write_text("xml")
        (path.parent / "model.bin").write_bytes(b"weights")

    a = cache.get_or_build("ir", {"k": 1}, "model.xml", build)
    (tmp_path / "artifacts" / a.path.split("/")[-2] / "model.bin").write_bytes(b"garbage")
    b = cache.get_or_build("ir", {"k": 1}, "model.xml", build)
    assert not b.cache_hit and len(calls) == 2
    assert cache.get_or_build("ir", {"k": 1}, "model.xml", build).cache_hit
