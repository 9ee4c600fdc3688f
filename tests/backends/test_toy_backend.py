"""README "Adding a backend": a backend added from this test folder — its options class and
its Backend class here, one registry row, no edit under medray/ (the doctor included) — is
validated by the config, checked and run by the doctor, and run by the Predictor."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pytest

from medray.backends import REGISTRY, Registered
from medray.backends.base import Backend
from medray.backends.config import BackendConfig
from medray.errors import ConfigError


@dataclass
class Float64Config(BackendConfig):
    """The toy backend's options: the PyTorch module run in float64."""

    name: str = "float64"
    SUPPORTED: ClassVar[dict[str, tuple[str, ...]]] = {"cpu": ("fp32",)}
    NEEDS_TORCH_MODEL: ClassVar[bool] = True
    LIBRARIES: ClassVar[dict[str, str]] = {"torch": "pip install torch"}


class Float64Backend(Backend):
    name = "float64"

    def _load(self) -> None:
        import torch

        from medray.models.loaders import load_torch_model

        self.model = load_torch_model(self.spec.model).double()
        self.torch = torch

    def _infer(self, x: np.ndarray) -> np.ndarray:
        with self.torch.inference_mode():
            return self.model(self.torch.from_numpy(x).double()).numpy()

    def _close(self) -> None:
        self.model = None


@pytest.fixture()
def registered(monkeypatch):
    monkeypatch.setitem(REGISTRY, "float64", Registered(f"{__name__}:Float64Config", f"{__name__}:Float64Backend"))


def test_the_doctor_reports_and_runs_a_backend_it_was_never_told_about(registered, tmp_path):
    from medray.doctor.report import collect, render

    doc = collect(backends=["float64"], devices=["cpu"])
    assert [(c["backend"], c["precision"], c["status"]) for c in doc["checks"]] == [("float64", "fp32", "ok")]
    # float64 vs the reference backend's fp32 on the doctor's tiny model: equal to float32 rounding
    assert doc["checks"][0]["detail"]["max_abs_prob_diff"] < 1e-5
    assert "backend=float64" in doc["libraries"]["torch"]["for"]
    assert "float64" in render(doc)


def test_the_config_knows_it_from_its_row(registered):
    from medray.config import EvalConfig

    cfg = EvalConfig(backend=Float64Config(), baseline="float64-fp32")
    assert cfg.run_name == "float64-fp32" and cfg.device == "cpu"
    with pytest.raises(ConfigError, match=r"precision='int8': backend=float64 on device=cpu supports \['fp32'\]"):
        EvalConfig(backend=Float64Config(), precision="int8")


def test_the_predictor_runs_it(registered, tiny_spec):
    from dataclasses import replace

    from medray.pipeline.predictor import Predictor
    from medray.tasks.classification import ClassificationTask

    spec = replace(tiny_spec("torch"), backend=Float64Config(), name="float64-fp32")
    images = np.random.default_rng(0).integers(0, 256, (4, 32, 32), dtype=np.uint8)
    ours = Predictor(spec, ClassificationTask())({"sample_id": np.array(list("abcd")), "image": images})["probs"]
    ref = Predictor(tiny_spec("torch"), ClassificationTask())({"sample_id": np.array(list("abcd")), "image": images})["probs"]
    np.testing.assert_allclose(ours, ref, atol=1e-5)
