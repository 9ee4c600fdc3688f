"""PyTorch backend: the baseline reproduces the model; bf16 is really bf16."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medray.backends import BackendError, get_backend
from medray.errors import ConfigError
from medray.models.factory import load_model


def test_fp32_equals_the_model_called_directly(tiny_spec):
    spec = tiny_spec("torch")
    b = get_backend("torch")(spec).load()
    x = np.random.default_rng(1).standard_normal((3, 3, 32, 32), dtype=np.float32)
    m = load_model(spec.model.arch, 2, 3, spec.model.checkpoint)
    with torch.no_grad():
        ref = m(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(b.infer(x), ref, rtol=1e-5, atol=1e-6)
    assert b.effective_precision["executed"] == "fp32"
    assert b.last_ms > 0


def test_bf16_autocast_changes_the_numbers_but_not_the_decisions(tiny_spec):
    x = np.random.default_rng(2).standard_normal((8, 3, 32, 32), dtype=np.float32)
    fp32 = get_backend("torch")(tiny_spec("torch")).load().infer(x)
    b = get_backend("torch")(tiny_spec("torch", "bf16")).load()
    bf16 = b.infer(x)
    assert b.effective_precision["mechanism"] == "autocast(bfloat16)"
    diff = np.abs(bf16 - fp32).max()
    # bf16 has an 8-bit mantissa: the outputs move (proof it ran in bf16) but stay close.
    assert 1e-6 < diff < 0.2 * np.abs(fp32).max() + 0.05


def test_infer_before_load_is_an_error(tiny_spec):
    with pytest.raises(BackendError, match="infer\\(\\) before load\\(\\)"):
        get_backend("torch")(tiny_spec("torch")).infer(np.zeros((1, 3, 32, 32), np.float32))


def test_cuda_without_gpu_is_refused(tiny_spec):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    spec = tiny_spec("torch")
    spec.device = "cuda"
    with pytest.raises(BackendError, match="device=cuda but this worker sees no CUDA device"):
        get_backend("torch")(spec).load()


def test_unknown_backend_lists_the_registry():
    from medray.backends import REGISTRY

    with pytest.raises(ConfigError) as e:
        get_backend("nosuch")
    assert str(e.value) == f"backend='nosuch': available backends: {', '.join(REGISTRY)}"
    assert {"torch", "onnxruntime", "openvino", "trt"} <= set(REGISTRY)
