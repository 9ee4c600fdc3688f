"""Any 3-D segmentation network through the model sources: model=python (MONAI's SegResNet
from its callable) and model=onnx (its ONNX export) run by MONAI's sliding window, end to
end with INT8 candidates; what the network takes is read from the config or the file."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medray.backends.onnxruntime.config import OnnxRuntimeConfig
from medray.config import EvalConfig, RayConfig
from medray.data.config import CalibrationConfig, DataConfig
from medray.data.load import load_table
from medray.errors import ConfigError
from medray.models.config import ModelConfig, ModelRequest
from medray.models.volume import resolve_volume_model
from medray.tasks.segmentation.config import SlidingWindowConfig

TARGET = "monai.networks.nets:SegResNet"
KWARGS = {"spatial_dims": 3, "in_channels": 1, "out_channels": 3, "init_filters": 4, "norm": ["GROUP", {"num_groups": 2}],
          "blocks_down": [1, 1],
          "blocks_up": [1]}
ROI = [16, 16, 16]


@pytest.fixture(scope="module")
def segresnet(tmp_path_factory) -> dict[str, Path]:
    """A SegResNet state dict and its ONNX export (dynamic batch, 16³ windows)."""
    import torch
    from monai.networks.nets import SegResNet

    from medray.models.export import export_onnx

    torch.manual_seed(0)
    net = SegResNet(**KWARGS).eval()
    d = tmp_path_factory.mktemp("segresnet")
    torch.save(net.state_dict(), d / "segresnet.pt")
    export_onnx(net, d / "segresnet.onnx", (1, *ROI))
    return {"checkpoint": d / "segresnet.pt", "onnx": d / "segresnet.onnx"}


def phantoms(tmp_path) -> DataConfig:
    return DataConfig(name="msd", root=None, n_train=1, n_calibration=2, n_test=2, image_size=24)


def python_model(segresnet, **kw) -> ModelConfig:
    return ModelConfig(**{"name": "segresnet", "source": "python", "target": TARGET, "kwargs": dict(KWARGS),
                          "checkpoint": str(segresnet["checkpoint"]), **kw})


def onnx_model(segresnet) -> ModelConfig:
    return ModelConfig(name="segresnet_onnx", source="onnx", path=str(segresnet["onnx"]), checkpoint=None)


def cfg_for(tmp_path, model: ModelConfig, roi=None, **kw) -> EvalConfig:
    base = dict(backend=OnnxRuntimeConfig(), precision="int8", task="segmentation", data=phantoms(tmp_path), model=model,
                sliding_window=SlidingWindowConfig(roi_size=roi, sw_batch_size=2), calibration=CalibrationConfig(num_samples=8),
                ray=RayConfig(num_cpus=2), output_dir=str(tmp_path / "out"), cache_dir=str(tmp_path / "cache"),
                warmup_batches=0)
    return EvalConfig(**{**base, **kw})


@pytest.mark.slow
@pytest.mark.parametrize("source", ["python", "onnx"])
def test_a_segresnet_runs_end_to_end_with_an_int8_candidate(ray_local, segresnet, tmp_path, source):
    from medray.pipeline.evaluate import run

    model = python_model(segresnet) if source == "python" else onnx_model(segresnet)
    # model=python: the ROI from the config; model=onnx: from the file's fixed window
    doc = run(cfg_for(tmp_path, model, roi=ROI if source == "python" else None))
    base, cand = doc["runs"]
    assert base["name"] == ("torch-fp32" if source == "python" else "onnxruntime-fp32")
    assert cand["name"] == "onnxruntime-int8" and cand["effective_precision"]["executed"] == "int8"
    assert cand["artifact"]["calibration"]["splits"] == ["calibration"]
    assert doc["model"]["source"] == source and doc["model"]["input_shape"] == [1, *ROI]
    assert doc["dataset"]["recipe"] == "monai" and doc["sliding_window"]["roi_size"] == ROI
    for r in (base, cand):
        assert r["n_samples"] == 2 and 0 <= r["metrics"]["dice_mean"] <= 1 and r["latency_ms"]["per_sample_mean"] > 0
    assert 0 <= cand["agreement"]["dice_mean"] <= 1 and cand["agreement"]["voxel_agreement_mean"] > 0.5
    out = Path(doc["output_dir"]) / "predictions"
    for case in doc["cases"]:  # masks in the input's geometry
        src = nib.load(str(next((tmp_path / "cache").rglob(f"imagesTs/{case['sample_id']}.nii.gz"))))
        mask = nib.load(str(out / f"{cand['name']}_masks" / f"{case['sample_id']}.nii.gz"))
        assert mask.shape == src.shape and np.allclose(mask.affine, src.affine)
    assert "expected" in doc and doc["expected"] is None  # no published number: nothing added


def test_what_the_network_takes_comes_from_the_config_or_the_file(segresnet, tmp_path):
    from medray.data.phantoms import ensure_phantoms

    root = ensure_phantoms(tmp_path / "msd", 1, 1, 1, 24, 0)
    table = load_table(DataConfig(name="msd", root=str(root)), str(root))
    spec = resolve_volume_model(ModelRequest(python_model(segresnet), roi_size=ROI), table)
    assert (spec.recipe, spec.spatial, spec.in_chans, spec.num_classes) == ("monai", (16, 16, 16), 1, 3)
    spec = resolve_volume_model(ModelRequest(onnx_model(segresnet)), table)
    assert (spec.spatial, spec.in_chans, spec.num_classes, spec.source) == ((16, 16, 16), 1, 3, "onnx")
    with pytest.raises(ConfigError, match=r"sliding_window.roi_size=None: model.target=monai.networks.nets:SegResNet"):
        resolve_volume_model(ModelRequest(python_model(segresnet)), table)
    with pytest.raises(ConfigError, match=r"sliding_window.roi_size=\[24, 24, 24\]: the ONNX file takes windows of"):
        resolve_volume_model(ModelRequest(onnx_model(segresnet), roi_size=[24, 24, 24]), table)
    with pytest.raises(ConfigError, match=r"the network fails on windows of \(1, 1, 15, 16, 16\)"):
        resolve_volume_model(ModelRequest(python_model(segresnet), roi_size=[15, 16, 16]), table)
    two = python_model(segresnet, kwargs={**KWARGS, "out_channels": 2}, checkpoint=None)
    with pytest.raises(ConfigError, match="the model has 2 output channels but dataset .* has 3 labels"):
        resolve_volume_model(ModelRequest(two, roi_size=ROI), table)
