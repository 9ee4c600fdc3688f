"""tta=tencrop: torchvision's TenCrop views cut where the image is decoded, probabilities
averaged, the cost of all ten inside the latency."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import TINY_ARCH, TINY_SIZE

from medray.backends.onnxruntime.config import OnnxRuntimeConfig
from medray.config import ConfigError, EvalConfig
from medray.data.preprocess import PreprocessConfig, decode_image, medray_preset, resolve, scale_size, tencrop_prep
from medray.data.tta import ten_crop, views


@pytest.mark.parametrize("h, w, size", [(37, 37, 32), (40, 35, 31), (32, 32, 32)])
def test_ten_crop_equals_torchvision(h, w, size):
    from torchvision.transforms import functional as F

    imgs = np.random.default_rng(0).integers(0, 256, (3, h, w), dtype=np.uint8)
    ours = ten_crop(imgs, size)
    ref = F.ten_crop(torch.from_numpy(imgs), [size, size])  # (C=3 here plays the batch role)
    assert len(ours) == len(ref) == 10
    for a, b in zip(ours, ref):
        np.testing.assert_array_equal(a, b.numpy())


def test_tencrop_decodes_at_chexnets_256_for_224():
    imagenet = resolve(PreprocessConfig(name="imagenet"), 3, 224)
    assert scale_size(imagenet) == (256, 256)  # Resize(256) before TenCrop(224)
    # a preprocessing that does not crop (the demo's) takes CheXNet's ratio for its ten crops
    assert scale_size(tencrop_prep(medray_preset(224))) == (256, 256)
    x = np.zeros((2, 5, 5), np.uint8)
    assert views(x, "none")[0] is x


def test_ten_views_of_a_non_square_file_equal_torchvision(tmp_path):
    """decode_image(tta=tencrop) on a 50×70 image = torchvision Resize(floor(32/0.875)) + TenCrop(32)."""
    from PIL import Image
    from torchvision import transforms as T

    p = tmp_path / "x.png"
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (50, 70, 3), dtype=np.uint8)).save(p)
    prep = resolve(PreprocessConfig(name="imagenet", size=TINY_SIZE), 3, TINY_SIZE)
    ours = decode_image(str(p), prep, "tencrop")
    ref = T.Compose([T.Resize(36), T.TenCrop(TINY_SIZE)])(Image.open(p).convert("RGB"))
    assert ours.shape == (10, TINY_SIZE, TINY_SIZE, 3)
    for a, b in zip(ours, ref):
        np.testing.assert_array_equal(a, np.asarray(b))


def test_config_validation():
    with pytest.raises(ConfigError, match=r"tta='fivecrop': use one of none, tencrop"):
        EvalConfig(backend=OnnxRuntimeConfig(), tta="fivecrop")
    assert EvalConfig(backend=OnnxRuntimeConfig(), tta="tencrop").tta == "tencrop"


def test_predictor_averages_ten_views_and_times_all_of_them(tiny_spec):
    from scipy.special import softmax

    from medray.data.preprocess import to_model_input
    from medray.models.factory import load_model
    from medray.pipeline.predictor import Predictor
    from medray.tasks.classification import ClassificationTask

    spec = tiny_spec(batch_size=3, tta="tencrop")
    pred = Predictor(spec, ClassificationTask())
    calls = []
    real = pred.backend._infer

    def counting(x):
        calls.append(x.shape)
        return real(x)

    pred.backend._infer = counting
    n = 3
    images = np.random.default_rng(1).integers(0, 256, (n, 10, TINY_SIZE, TINY_SIZE), dtype=np.uint8)
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
        per_view = [softmax(model(torch.from_numpy(to_model_input(images[:, v], 3))).double().numpy(), axis=1)
                    for v in range(10)]
    np.testing.assert_allclose(out["probs"], np.mean(per_view, axis=0), atol=1e-5)
    assert out["probs"].shape == (3, 2) and np.allclose(out["probs"].sum(axis=1), 1, atol=1e-6)


def test_multilabel_views_average_sigmoids(tiny_spec):
    from medray.data.preprocess import to_model_input
    from medray.metrics.scores import probabilities
    from medray.pipeline.predictor import Predictor
    from medray.tasks.classification import ClassificationTask

    spec = tiny_spec(batch_size=2, tta="tencrop", task="multilabel")
    pred = Predictor(spec, ClassificationTask())
    images = np.random.default_rng(2).integers(0, 256, (2, 10, TINY_SIZE, TINY_SIZE), dtype=np.uint8)
    out = pred({"sample_id": np.array(["a", "b"]), "image": images})
    ref = np.mean([probabilities(pred.backend.infer(to_model_input(images[:, v], 3)), "multilabel") for v in range(10)], axis=0)
    np.testing.assert_allclose(out["probs"], ref, atol=1e-6)


@pytest.mark.slow
def test_tencrop_end_to_end_equals_torchvision_tencrop_on_non_square_images(ray_local, tmp_path, tiny_checkpoint):
    """A run with preprocess=imagenet tta=tencrop on non-square files gives what a plain
    torchvision CheXNet loop gives: Resize(36) → TenCrop(32) → ToTensor → Normalize →
    model → softmax, averaged over the ten crops."""
    from PIL import Image
    from scipy.special import softmax
    from torchvision import transforms as T

    from medray.config import RayConfig
    from medray.data.config import DataConfig
    from medray.models.config import ModelConfig
    from medray.models.factory import load_model
    from medray.pipeline.evaluate import run

    rng = np.random.default_rng(4)
    for cls in ("NORMAL", "PNEUMONIA"):
        d = tmp_path / "data" / "test" / cls
        d.mkdir(parents=True)
        for i in range(4):
            h, w = int(rng.integers(40, 60)), int(rng.integers(60, 90))
            Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8)).save(d / f"{cls}_{i}.png")
    cfg = EvalConfig(backend=OnnxRuntimeConfig(), baseline="torch-fp32", tta="tencrop",
                     data=DataConfig(name="imagefolder", root=str(tmp_path / "data"), split="test"),
                     model=ModelConfig(name="tiny", arch=TINY_ARCH, checkpoint=str(tiny_checkpoint), input_size=TINY_SIZE),
                     preprocess=PreprocessConfig(name="imagenet", size=TINY_SIZE), ray=RayConfig(num_cpus=2), batch_size=4,
                     output_dir=str(tmp_path / "out"), cache_dir=str(tmp_path / "cache"), warmup_batches=0)
    doc = run(cfg)
    model = load_model(TINY_ARCH, 2, 3, str(tiny_checkpoint))
    tf = T.Compose([T.Resize(36), T.TenCrop(TINY_SIZE),
                    T.Lambda(lambda crops: torch.stack([T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])(
                        T.ToTensor()(c)) for c in crops]))])
    import pandas as pd

    for run_name in ("torch-fp32", "onnxruntime-fp32"):
        pred = pd.read_parquet(tmp_path / "out" / "predictions" / f"{run_name}.parquet")
        for sid, probs in zip(pred["sample_id"], pred["probs"]):
            x = tf(Image.open(tmp_path / "data" / sid).convert("RGB"))
            with torch.inference_mode():
                ref = softmax(model(x).double().numpy(), axis=1).mean(axis=0)
            np.testing.assert_allclose(probs, ref, atol=1e-5, err_msg=f"{run_name} {sid}")
    assert doc["runs"][1]["agreement"]["max_abs_prob_diff"] < 1e-5
