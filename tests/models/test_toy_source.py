"""README "Adding a model source": a source added from this test folder — its loader here,
one registry row, no edit under medray/ — is validated by the config, resolved against the
dataset (outputs probed, preprocessing resolved), exported to ONNX and run by every
backend of the driver with the outputs of its PyTorch module."""

from __future__ import annotations

import numpy as np
import pytest

from medray.errors import ConfigError
from medray.models.sources import SOURCES, ModelSource


def load_npz(m):
    """The toy source: a linear classifier on 16×16 grey pixels stored as ``W``, ``b`` in an .npz."""
    import torch

    z = np.load(m.path)
    lin = torch.nn.Linear(z["W"].shape[1], z["W"].shape[0])
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(z["W"]))
        lin.bias.copy_(torch.from_numpy(z["b"]))
    return torch.nn.Sequential(torch.nn.Flatten(), lin).eval()


@pytest.fixture()
def npz_model(monkeypatch, tmp_path):
    monkeypatch.setitem(SOURCES, "npz", ModelSource(f"{__name__}:load_npz", file=True))
    path = tmp_path / "linear.npz"
    rng = np.random.default_rng(0)
    np.savez(path, W=rng.standard_normal((2, 256)).astype(np.float32) * 0.05, b=np.zeros(2, np.float32))
    return path


def test_a_source_registered_with_one_row_resolves_exports_and_runs(npz_model, tmp_path):
    from medray.backends import config_class, get_backend
    from medray.backends.artifacts import ArtifactCache
    from medray.data.config import DataConfig
    from medray.data.load import load_table
    from medray.data.preprocess import PreprocessConfig
    from medray.models.config import ModelConfig, ModelRequest
    from medray.models.resolve import resolve_model
    from medray.specs import RunSpec

    data = DataConfig(n_train=4, n_calibration=4, n_test=8, image_size=32)
    table = load_table(data, str(tmp_path / "data"))
    model = ModelConfig(name="npz", source="npz", path=str(npz_model), in_chans=1)
    spec = resolve_model(ModelRequest(model, PreprocessConfig(name="medray", size=16), str(tmp_path)), table)
    assert spec.out_features == 2 and spec.input_shape == (1, 16, 16)  # probed: the row names no output count
    x = np.random.default_rng(1).standard_normal((5, 1, 16, 16)).astype(np.float32)
    outs = {}
    for name in ("torch", "onnxruntime", "openvino"):
        run = RunSpec(f"{name}-fp32", "candidate", config_class(name)(), "fp32", "cpu", 5, 1, spec, warmup_batches=0)
        run.artifact = get_backend(name).prepare(run, ArtifactCache(tmp_path / "cache"), {})
        with get_backend(name)(run) as b:
            outs[name] = b.infer(x)
    for name in ("onnxruntime", "openvino"):
        np.testing.assert_allclose(outs[name], outs["torch"], atol=1e-5)


def test_the_row_decides_the_config_rules(npz_model):
    from medray.backends.onnxruntime.config import OnnxRuntimeConfig
    from medray.config import EvalConfig
    from medray.models.config import ModelConfig

    with pytest.raises(ConfigError, match="model.path=None: model=npz needs model.path"):
        ModelConfig(name="npz", source="npz")
    with pytest.raises(ConfigError, match="model=npz carries its weights in model.path"):
        ModelConfig(name="npz", source="npz", path=str(npz_model), checkpoint=str(npz_model))
    cfg = EvalConfig(backend=OnnxRuntimeConfig(), model=ModelConfig(name="npz", source="npz", path=str(npz_model)))
    assert cfg.baseline == "torch-fp32"  # it has a PyTorch module: the reference backend runs it
