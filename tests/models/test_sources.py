"""Your model, evaluated faithfully: an ONNX file of an NHWC model, TorchScript, a
torch.export program, a Python custom head and a one-logit binary model — each through the
whole pipeline, its probabilities equal to a plain onnxruntime / torch loop on the same
files, an INT8 candidate built from it; bad models refused before Ray with the fix."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import TINY_ARCH, TINY_SIZE
from PIL import Image
from scipy.special import expit, softmax

from medray.backends.onnxruntime.config import OnnxRuntimeConfig
from medray.config import ConfigError, EvalConfig, RayConfig
from medray.data.config import DataConfig
from medray.data.preprocess import PreprocessConfig
from medray.models.config import ModelConfig

S = TINY_SIZE
IMAGENET = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])


class NHWCNet(torch.nn.Module):
    """A Keras-like model: channels-last input (N, H, W, 3)."""

    def __init__(self, out: int = 2):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.fc = torch.nn.Linear(8, out)

    def forward(self, x):
        x = torch.relu(self.conv(x.permute(0, 3, 1, 2)))
        return self.fc(x.mean(dim=(2, 3)))


HEAD = '''
import timm
import torch


def build(num_classes=2, hidden=16, out=None):
    """A timm backbone with a 2-layer MLP head (seed 004's kind of model)."""
    backbone = timm.create_model("resnet10t", pretrained=False, num_classes=0)
    head = torch.nn.Sequential(torch.nn.Linear(backbone.num_features, hidden), torch.nn.ReLU(),
                               torch.nn.Linear(hidden, out or num_classes))
    return torch.nn.Sequential(backbone, head)
'''


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A Kermany-style folder of non-square grey PNGs: test/ (evaluated) and train/ (INT8 calibration)."""
    root = tmp_path_factory.mktemp("src") / "data"
    rng = np.random.default_rng(0)
    for split, n in (("test", 6), ("train", 4)):
        for c, cls in enumerate(("NORMAL", "PNEUMONIA")):
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                h, w = int(rng.integers(40, 56)), int(rng.integers(48, 70))
                a = rng.normal(110 + 40 * c, 30, (h, w))
                Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).save(d / f"{cls}_{i}.png")
    return root


def cfg(folder, tmp_path, model: ModelConfig, preprocess: PreprocessConfig, **kw) -> EvalConfig:
    base = dict(backend=OnnxRuntimeConfig(), data=DataConfig(name="imagefolder", root=str(folder), split="test"),
                model=model, preprocess=preprocess, ray=RayConfig(num_cpus=2), batch_size=4, warmup_batches=0,
                output_dir=str(tmp_path / "out"), cache_dir=str(tmp_path / "cache"))
    base.update(kw)
    return EvalConfig(**base)


def predictions(tmp_path, run: str) -> pd.DataFrame:
    return pd.read_parquet(tmp_path / "out" / "predictions" / f"{run}.parquet").set_index("sample_id")


def imagenet_input(path) -> np.ndarray:
    """torchvision's eval transform at S: Resize(floor(S/0.875)) → CenterCrop → ToTensor → Normalize."""
    from torchvision import transforms as T

    tf = T.Compose([T.Resize(int(S / 0.875)), T.CenterCrop(S), T.ToTensor(), T.Normalize(*IMAGENET)])
    return tf(Image.open(path).convert("RGB")).numpy()[None]


def check_torch_loop(tmp_path, folder, run: str, model, to_probs=lambda z: softmax(z, axis=1)):
    """The run's probabilities = the model run by hand on torchvision's tensors (1e-5)."""
    pred = predictions(tmp_path, run)
    for sid, probs in pred["probs"].items():
        with torch.inference_mode():
            z = model(torch.from_numpy(imagenet_input(folder / sid))).double().numpy()
        np.testing.assert_allclose(probs, to_probs(z)[0], atol=1e-5, err_msg=f"{run} {sid}")
    return pred


# --------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_onnx_file_of_an_nhwc_model_with_keras_preprocessing(ray_local, folder, tmp_path):
    """Done-when 1: model=onnx, preprocess=inception layout=nhwc, onnxruntime int8 vs the
    onnxruntime-fp32 baseline; the baseline equals a plain onnxruntime loop."""
    import onnxruntime as ort

    torch.manual_seed(0)
    path = tmp_path / "keras_like.onnx"
    torch.onnx.export(NHWCNet().eval(), (torch.zeros(2, S, S, 3),), str(path), input_names=["image"], output_names=["scores"],
                      dynamic_axes={"image": {0: "n"}, "scores": {0: "n"}}, dynamo=False)
    from medray.pipeline.evaluate import run

    doc = run(cfg(folder, tmp_path, ModelConfig(name="onnx", source="onnx", path=str(path)),
                  PreprocessConfig(name="inception", layout="nhwc", size=S), precision="int8"))
    assert [r["name"] for r in doc["runs"]] == ["onnxruntime-fp32", "onnxruntime-int8"]  # no torch: ORT is the baseline
    assert doc["runs"][1]["effective_precision"]["executed"] == "int8"
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for sid, probs in predictions(tmp_path, "onnxruntime-fp32")["probs"].items():
        x = np.asarray(Image.open(folder / sid).convert("RGB").resize((S, S), Image.NEAREST), np.float32) / 127.5 - 1
        z = sess.run(None, {"image": x[None]})[0]
        np.testing.assert_allclose(probs, softmax(z.astype(np.float64), axis=1)[0], atol=1e-5, err_msg=sid)
    assert doc["runs"][1]["agreement"]["n"] == 12


@pytest.mark.slow
def test_torchscript_and_torch_export_files(ray_local, folder, tmp_path, tiny_checkpoint):
    from medray.models.factory import load_model
    from medray.pipeline.evaluate import run

    model = load_model(TINY_ARCH, 2, 3, str(tiny_checkpoint))
    ts = tmp_path / "model.ts"
    torch.jit.trace(model, torch.zeros(2, 3, S, S)).save(str(ts))
    doc = run(cfg(folder, tmp_path, ModelConfig(name="ts", source="torchscript", path=str(ts)),
                  PreprocessConfig(name="imagenet", size=S), precision="int8"))
    assert [r["name"] for r in doc["runs"]] == ["torch-fp32", "onnxruntime-int8"]
    check_torch_loop(tmp_path, folder, "torch-fp32", torch.jit.load(str(ts)))

    pt2 = tmp_path / "model.pt2"
    batch = torch.export.Dim("batch", min=1, max=64)
    torch.export.save(torch.export.export(model, (torch.zeros(2, 3, S, S),), dynamic_shapes={"x": {0: batch}}), str(pt2))
    from medray.backends.openvino.config import OpenVINOConfig

    out = tmp_path / "pt2"
    doc = run(cfg(folder, out, ModelConfig(name="pt2", source="exported", path=str(pt2)), PreprocessConfig(name="imagenet", size=S),
                  backend=OpenVINOConfig(), precision="int8"))
    assert [r["name"] for r in doc["runs"]] == ["torch-fp32", "openvino-int8"]
    assert doc["runs"][1]["effective_precision"]["executed"] == "int8"
    check_torch_loop(out, folder, "torch-fp32", torch.export.load(str(pt2)).module())


@pytest.mark.slow
def test_python_custom_head_and_a_one_logit_binary_model(ray_local, folder, tmp_path):
    """model=python: a timm backbone + MLP head from a .py file and its state dict; and the
    same head with one output (BCE-trained kind): read as the positive class's logit, its
    AUC is scikit-learn's on the sigmoid."""
    from sklearn.metrics import roc_auc_score

    from medray.pipeline.evaluate import run

    code = tmp_path / "heads.py"
    code.write_text(HEAD)
    import importlib.util

    spec = importlib.util.spec_from_file_location("heads_ref", code)
    heads = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(heads)
    for out_features, name in ((None, "two"), (1, "one")):
        torch.manual_seed(1)
        net = heads.build(hidden=16, out=out_features).eval()
        ckpt = tmp_path / f"{name}.pt"
        torch.save(net.state_dict(), ckpt)
        kwargs = {"hidden": 16, **({"out": 1} if out_features else {})}
        model = ModelConfig(name="custom", source="python", target=f"{code}:build", kwargs=kwargs, checkpoint=str(ckpt))
        where = tmp_path / name
        doc = run(cfg(folder, where, model, PreprocessConfig(name="imagenet", size=S)))
        if out_features is None:
            check_torch_loop(where, folder, "torch-fp32", net)
            continue
        pred = check_torch_loop(where, folder, "torch-fp32", net,
                                to_probs=lambda z: np.stack([1 - expit(z[:, 0]), expit(z[:, 0])], axis=1))
        y = np.array([1 if "/PNEUMONIA/" in sid else 0 for sid in pred.index])
        assert 0 < y.sum() < len(y)
        p1 = np.array([p[1] for p in pred["probs"]])
        assert doc["runs"][0]["metrics"]["auc_macro"] == pytest.approx(roc_auc_score(y, p1), abs=1e-12)
        assert doc["runs"][1]["agreement"]["max_abs_prob_diff"] < 1e-5  # the ORT export scores the same


# --------------------------------------------------------------------------- bad models


def test_bad_models_are_refused_before_ray_with_the_fix(folder, tmp_path):
    from medray.pipeline.prepare import prepare

    imagenet = PreprocessConfig(name="imagenet", size=S)
    with pytest.raises(ConfigError, match=r"model.target='nosuch_module:build': cannot import nosuch_module"):
        prepare(cfg(folder, tmp_path, ModelConfig(name="p", source="python", target="nosuch_module:build"), imagenet))
    junk = tmp_path / "model.onnx"
    junk.write_text("not a model")
    with pytest.raises(ConfigError, match=rf"model.path={junk}: not an ONNX model"):
        prepare(cfg(folder, tmp_path, ModelConfig(name="onnx", source="onnx", path=str(junk)), imagenet))
    # an NHWC model fed NCHW: both shapes named
    nhwc = tmp_path / "nhwc.onnx"
    torch.onnx.export(NHWCNet().eval(), (torch.zeros(2, S, S, 3),), str(nhwc), input_names=["image"],
                      dynamic_axes={"image": {0: "n"}}, dynamo=False)
    with pytest.raises(ConfigError) as e:
        prepare(cfg(folder, tmp_path, ModelConfig(name="onnx", source="onnx", path=str(nhwc)),
                    PreprocessConfig(name="inception", size=S)))
    assert f"takes input ('n', {S}, {S}, 3), but the preprocessing makes (2, 3, {S}, {S})" in str(e.value)
    assert "preprocess.layout" in str(e.value)
    # the same in PyTorch: the forward fails on the NCHW tensor
    code = tmp_path / "nhwc.py"
    code.write_text("from test_sources import NHWCNet\n\ndef build():\n    return NHWCNet()\n")
    import sys

    sys.path.insert(0, str(tmp_path))
    try:
        with pytest.raises(ConfigError, match=rf"the model fails on input \(2, 3, {S}, {S}\).*preprocess.layout"):
            prepare(cfg(folder, tmp_path, ModelConfig(name="p", source="python", target=f"{code}:build"), imagenet))
    finally:
        sys.path.remove(str(tmp_path))
    with pytest.raises(ConfigError, match="backend='torch': model=onnx is a model file with no PyTorch model"):
        cfg(folder, tmp_path, ModelConfig(name="onnx", source="onnx", path=str(nhwc)), imagenet,
            backend=__import__("medray.backends.torch.config", fromlist=["TorchConfig"]).TorchConfig())
    with pytest.raises(ConfigError, match="model.path=None: model=torchscript needs model.path"):
        ModelConfig(name="ts", source="torchscript")
    # a model with the wrong number of outputs
    three = tmp_path / "three.onnx"
    torch.onnx.export(NHWCNet(out=3).eval(), (torch.zeros(2, S, S, 3),), str(three), dynamic_axes={"input.1": {0: "n"}},
                      input_names=["input.1"], dynamo=False)
    with pytest.raises(ConfigError, match=r"the model has 3 outputs but dataset .* has 2 classes"):
        prepare(cfg(folder, tmp_path, ModelConfig(name="onnx", source="onnx", path=str(three)),
                    PreprocessConfig(name="inception", size=S, layout="nhwc")))


class _TwoHeads(torch.nn.Module):
    """Scores and a feature map: an ONNX file with two outputs, the scores second."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = torch.nn.Conv2d(3, 4, 3, stride=4)
        self.head = torch.nn.Linear(4, 2)

    def forward(self, x):
        f = self.body(x)
        return f, self.head(f.mean((2, 3)))


def test_an_onnx_file_with_several_outputs_needs_the_one_scored(folder, tmp_path):
    """The break-it round: the scores were silently output 0 of a multi-output graph."""
    from medray.backends import get_backend
    from medray.backends.artifacts import ArtifactCache
    from medray.pipeline.prepare import prepare

    path = tmp_path / "two.onnx"
    torch.onnx.export(_TwoHeads(), torch.zeros(2, 3, S, S), path, input_names=["x"], output_names=["features", "scores"],
                      dynamic_axes={"x": {0: "n"}, "features": {0: "n"}, "scores": {0: "n"}}, dynamo=False)
    prep = PreprocessConfig(name="imagenet", size=S)
    with pytest.raises(ConfigError, match=r"has 2 outputs \['features', 'scores'\]; say which one holds the class "
                                          "scores with model.output_name"):
        prepare(cfg(folder, tmp_path, ModelConfig(name="onnx", source="onnx", path=str(path)), prep))
    with pytest.raises(ConfigError, match=r"model.output_name='logits': not an output of .*\['features', 'scores'\]"):
        prepare(cfg(folder, tmp_path, ModelConfig(name="onnx", source="onnx", path=str(path), output_name="logits"), prep))
    _, _, specs, _ = prepare(cfg(folder, tmp_path, ModelConfig(name="onnx", source="onnx", path=str(path),
                                                               output_name="scores"), prep))
    spec = specs[-1]
    assert spec.model.output_name == "scores" and spec.model.out_features == 2
    x = np.random.default_rng(0).standard_normal((3, 3, S, S)).astype(np.float32)
    with get_backend(spec.backend.name)(spec) as b:
        got = b.infer(x)
    with torch.inference_mode():
        want = _TwoHeads()(torch.from_numpy(x))[1].numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert get_backend("openvino").prepare(spec, ArtifactCache(tmp_path / "cache"), {})["path"]
