"""tta=tencrop: torchvision's TenCrop views, probabilities averaged, cost inside the latency."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import TINY_SIZE

from medray.backends.onnxruntime.config import OnnxRuntimeConfig
from medray.config import ConfigError, EvalConfig
from medray.data.tta import decode_size, ten_crop, views


@pytest.mark.parametrize("h, w, size", [(37, 37, 32), (40, 35, 31), (32, 32, 32)])
def test_ten_crop_equals_torchvision(h, w, size):
    from torchvision.transforms import functional as F

    imgs = np.random.default_rng(0).integers(0, 256, (3, h, w), dtype=np.uint8)
    ours = ten_crop(imgs, size)
    ref = F.ten_crop(torch.from_numpy(imgs), [size, size])  # (C=3 here plays the batch role)
    assert len(ours) == len(ref) == 10
    for a, b in zip(ours, ref):
        np.testing.assert_array_equal(a, b.numpy())


def test_decode_size_is_chexnets_256_for_224():
    assert decode_size(224, "tencrop") == 256 and decode_size(224, "none") == 224
    assert decode_size(TINY_SIZE, "tencrop") == 37
    x = np.zeros((2, 5, 5), np.uint8)
    assert views(x, 5, "none")[0] is x


def test_config_validation():
    with pytest.raises(ConfigError, match=r"tta='fivecrop': use one of none, tencrop"):
        EvalConfig(backend=OnnxRuntimeConfig(), tta="fivecrop")
    assert EvalConfig(backend=OnnxRuntimeConfig(), tta="tencrop").tta == "tencrop"


def test_predictor_averages_ten_views_and_times_all_of_them(tiny_spec):
    from scipy.special import softmax

    from medray.data.preprocess import to_model_input
    from medray.models.factory import load_model
    from medray.pipeline.predictor import Predictor

    spec = tiny_spec(batch_size=3, tta="tencrop")
    pred = Predictor(spec)
    calls = []
    real = pred.backend._infer

    def counting(x):
        calls.append(x.shape)
        return real(x)

    pred.backend._infer = counting
    n, r = 3, decode_size(TINY_SIZE, "tencrop")
    images = np.random.default_rng(1).integers(0, 256, (n, r, r), dtype=np.uint8)
    last = []
    orig_infer = pred.backend.infer

    def infer(x):
        out = orig_infer(x)
        last.append(pred.backend.last_ms)
        return out

    pred.backend.infer = infer
    out = pred({"sample_id": np.array(["a", "b", "c"]), "image": images})
    # ten backend calls of the configured batch shape, and their times summed
    assert calls == [(3, 3, TINY_SIZE, TINY_SIZE)] * 10
    assert out["batch_ms"][0] == pytest.approx(sum(last)) and len(last) == 10
    # probabilities = mean over the views of the per-view softmax (the model run by hand)
    m = spec.model
    model = load_model(m.arch, m.num_classes, m.in_chans, m.checkpoint)
    with torch.inference_mode():
        per_view = [softmax(model(torch.from_numpy(to_model_input(v, 3))).double().numpy(), axis=1) for v in ten_crop(images, TINY_SIZE)]
    np.testing.assert_allclose(out["probs"], np.mean(per_view, axis=0), atol=1e-5)
    assert out["probs"].shape == (3, 2) and np.allclose(out["probs"].sum(axis=1), 1, atol=1e-6)


def test_multilabel_views_average_sigmoids(tiny_spec):
    from medray.pipeline.predictor import Predictor
    from medray.tasks.classification import probabilities

    spec = tiny_spec(batch_size=2, tta="tencrop", task="multilabel")
    pred = Predictor(spec)
    r = decode_size(TINY_SIZE, "tencrop")
    images = np.random.default_rng(2).integers(0, 256, (2, r, r), dtype=np.uint8)
    out = pred({"sample_id": np.array(["a", "b"]), "image": images})
    from medray.data.preprocess import to_model_input

    ref = np.mean([probabilities(pred.backend.infer(to_model_input(v, 3)), "multilabel") for v in ten_crop(images, TINY_SIZE)], axis=0)
    np.testing.assert_allclose(out["probs"], ref, atol=1e-6)
