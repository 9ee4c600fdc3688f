"""Fixtures shared by the backend tests: an artifact cache and a small synthetic set."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import TINY_SIZE, image_calibration

from medray.backends import get_backend
from medray.backends.artifacts import ArtifactCache


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One artifact cache per test module (a module's second build must be a cache hit)."""
    return ArtifactCache(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Synthetic images: the calibration split for INT8, the test split to compare outputs on."""
    from medray.data.load import calibration_samples, select_samples
    from medray.data.preprocess import decode_gray, to_model_input
    from medray.data.synthetic import ensure_synthetic
    from medray.data.table import read_manifest_dir

    root = tmp_path_factory.mktemp("syn") / "synthetic"
    ensure_synthetic("binary", root, n_train=2, n_calibration=16, n_test=24, image_size=48, seed=0)
    table = read_manifest_dir(root)
    evaluated = select_samples(table, "test", None, 0)
    cal = calibration_samples(table, "calibration", 16, 0, evaluated)
    x = to_model_input(np.stack([decode_gray(p, TINY_SIZE) for p in evaluated["path"]]), 3)
    return {"table": table, "evaluated": evaluated, "calibration": image_calibration(cal), "x": x}


@pytest.fixture(scope="module")
def torch_logits(tiny_spec, data):
    """The PyTorch fp32 baseline's logits on ``data["x"]``."""
    return get_backend("torch")(tiny_spec("torch")).load().infer(data["x"])
