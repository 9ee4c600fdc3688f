"""task=segmentation through Ray: sliding windows around torch and ONNX Runtime, Dice, outputs."""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from medray.backends.base import BackendError
from medray.backends.onnxruntime.config import OnnxRuntimeConfig
from medray.config import (
    ConfigError,
    DataConfig,
    EvalConfig,
    ModelConfig,
    RayConfig,
    SlidingWindowConfig,
    VolumeConfig,
    backend_config,
)
from medray.data.msd import load_case
from medray.data.phantoms import ensure_phantoms, phantom_tag
from medray.io import file_sha256
from medray.metrics.segmentation import dice_per_class
from medray.models.factory import build_unet, save_checkpoint
from medray.pipeline.execute import execute
from medray.pipeline.predictor import Predictor
from medray.pipeline.prepare import prepare
from medray.report.document import build_metrics
from medray.report.markdown import render_report
from medray.report.writers import write_outputs
from medray.specs import ModelSpec, RunSpec
from medray.tasks.segmentation import SegmentationTask, load_mask

NET = {"channels": [4, 8], "strides": [2], "num_res_units": 0}
ROI = [16, 16, 16]


@pytest.fixture(scope="module")
def unet_checkpoint(tmp_path_factory):
    """A random-weight 3-label MONAI UNet (1 channel in), as a medray checkpoint."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("unet") / "unet.pt"
    save_checkpoint(build_unet(3, 1, **NET), path, {"arch": "monai_unet", "net": NET, "roi_size": ROI, "in_chans": 1,
                                                     "classes": ["background", "organ", "lesion"]})
    return path


def seg_cfg(tmp_path, checkpoint, **kw) -> EvalConfig:
    base = dict(
        backend=OnnxRuntimeConfig(),
        task="segmentation",
        data=DataConfig(name="msd", root=None, n_train=1, n_calibration=1, n_test=3, image_size=24),
        model=ModelConfig(name="tiny", arch="monai_unet", checkpoint=str(checkpoint), in_chans=1, input_size=16),
        sliding_window=SlidingWindowConfig(overlap=0.25, sw_batch_size=3),
        ray=RayConfig(num_cpus=2),
        output_dir=str(tmp_path / "out"),
        cache_dir=str(tmp_path / "cache"),
        warmup_batches=1,
    )
    base.update(kw)
    return EvalConfig(**base)


def windows_per_axis(size: int, roi: int, overlap: float) -> int:
    """MONAI's scan: interval = int(roi * (1 - overlap)); windows = ceil((size - roi) / interval) + 1."""
    if size <= roi:
        return 1
    step = max(1, int(roi * (1 - overlap)))
    return math.ceil((size - roi) / step) + 1


def tiny_spec(checkpoint, backend="torch", sw_batch=3) -> RunSpec:
    m = ModelSpec("monai_unet", 3, 1, 16, str(checkpoint), file_sha256(checkpoint), task="segmentation",
                  spatial=tuple(ROI), net=NET)
    return RunSpec(f"{backend}-fp32", "candidate", backend_config(backend), "fp32", "cpu", sw_batch, 1, m,
                   threads=1, warmup_batches=1)


def test_seg_predictor_equals_monai_on_the_torch_model(tmp_path, unet_checkpoint):
    """The predictor callable around backend.infer gives exactly MONAI's sliding window on the module."""
    from monai.inferers import sliding_window_inference

    from medray.models.factory import load_model

    spec = tiny_spec(unet_checkpoint)
    task = SegmentationTask(sliding={"overlap": 0.25, "mode": "gaussian", "sigma_scale": 0.125}, num_classes=3)
    p = Predictor(spec, task)
    img = np.random.default_rng(0).standard_normal((1, 20, 24, 13)).astype(np.float32)
    mask, timing = task.segment(p.backend, spec, img)
    model = load_model("monai_unet", 3, 1, str(unet_checkpoint))
    with torch.inference_mode():
        ref = sliding_window_inference(torch.from_numpy(img)[None], ROI, 3, model, overlap=0.25, mode="gaussian")
    np.testing.assert_array_equal(mask, ref[0].argmax(0).numpy())
    n = windows_per_axis(20, 16, 0.25) * windows_per_axis(24, 16, 0.25) * windows_per_axis(13, 16, 0.25)
    assert timing["n_windows"] == n and timing["n_calls"] == math.ceil(n / 3)
    assert 0 < timing["latency_ms"] <= timing["sw_ms"]
    # the backends check 5D input shapes against the ROI
    with pytest.raises(BackendError, match=r"does not match the model's \(N, 1, 16, 16, 16\)"):
        p.backend.infer(np.zeros((1, 1, 16, 16), np.float32))


def test_config_rules_for_segmentation(tmp_path, unet_checkpoint):
    with pytest.raises(ConfigError, match="task='segmentation': data=synthetic is a classification dataset"):
        EvalConfig(backend=OnnxRuntimeConfig(), task="segmentation")
    with pytest.raises(ConfigError, match="data='msd': this is a segmentation dataset"):
        EvalConfig(backend=OnnxRuntimeConfig(), data=DataConfig(name="msd"))
    with pytest.raises(ConfigError, match=r"sliding_window.roi_size=\[16, 16\]: use three positive"):
        SlidingWindowConfig(roi_size=[16, 16])
    with pytest.raises(ConfigError, match="sliding_window.mode='mean': use one of constant, gaussian"):
        SlidingWindowConfig(mode="mean")
    with pytest.raises(ConfigError, match="sliding_window.sw_batch_size=0"):
        SlidingWindowConfig(sw_batch_size=0)
    with pytest.raises(ConfigError, match="data.volume.orientation='RAA'"):
        VolumeConfig(orientation="RAA")
    with pytest.raises(ConfigError, match="data.volume.a_max=-500.0: must be greater than data.volume.a_min"):
        VolumeConfig(a_max=-500.0)
    # the ROI must fit the UNet's down-sampling: caught before Ray starts
    cfg = seg_cfg(tmp_path, unet_checkpoint, sliding_window=SlidingWindowConfig(roi_size=[16, 16, 15]))
    with pytest.raises(ConfigError, match=r"sliding_window.roi_size=\[16, 16, 15\]: each size must be a multiple of 2"):
        prepare(cfg)


@pytest.fixture(scope="module")
def evaluated(ray_local, tmp_path_factory, unet_checkpoint):
    """3 good test cases and one whose voxel data is cut short (header fine): with
    data.on_error=skip the read task reports it and both runs list it as skipped."""
    tmp = tmp_path_factory.mktemp("seg")
    data = DataConfig(name="msd", n_train=1, n_calibration=1, n_test=4, image_size=24, on_error="skip")
    cfg = seg_cfg(tmp, unet_checkpoint, data=data)
    root = ensure_phantoms(Path(cfg.data_root) / phantom_tag(1, 1, 4, 24, 0), 1, 1, 4, 24, 0)
    bad = root / "imagesTs" / "phantom_test_003.nii.gz"
    raw = gzip.decompress(bad.read_bytes())
    bad.write_bytes(gzip.compress(raw[: len(raw) // 2]))
    table, samples, specs, task = prepare(cfg)
    prep = task.prep
    out = tmp / "out"
    results = execute(cfg, task, samples, specs)
    doc = build_metrics(cfg, table, samples, results, task)
    write_outputs(out, {"task": "segmentation"}, doc, results, table, samples, task)
    return cfg, table, samples, prep, results, doc, out


def test_pipeline_dice_is_the_dice_of_the_saved_masks(evaluated):
    cfg, table, samples, prep, results, doc, out = evaluated
    assert [r.spec.name for r in results] == ["torch-fp32", "onnxruntime-fp32"]
    assert [r.spec.batch_size for r in results] == [3, 3]  # windows per backend call
    assert samples["sample_id"].tolist()[-1] == "phantom_test_003"
    for r in results:
        df = r.predictions
        assert df["sample_id"].tolist() == ["phantom_test_000", "phantom_test_001", "phantom_test_002"]
        assert r.skipped["sample_id"].tolist() == ["phantom_test_003"]
        assert "imagesTs/phantom_test_003.nii.gz: cannot be read as a NIfTI volume" in r.skipped["reason"].iat[0]
        for row in df.itertuples():
            case = load_case(samples.set_index("sample_id").loc[row.sample_id, "path"],
                             samples.set_index("sample_id").loc[row.sample_id, "label_path"], prep, 3)
            mask = load_mask(out / "predictions" / f"{r.spec.name}_masks", row.mask_file)
            assert mask.shape == case["label"].shape == tuple(int(v) for v in row.model_shape)
            np.testing.assert_allclose(row.dice, dice_per_class(mask, case["label"], 3), equal_nan=True)
            x, y, z = case["image"].shape[1:]
            assert row.n_windows == windows_per_axis(x, 16, 0.25) * windows_per_axis(y, 16, 0.25) * windows_per_axis(z, 16, 0.25)
            assert 0 < row.latency_ms <= row.sw_ms
        run = next(e for e in doc["runs"] if e["name"] == r.spec.name)
        per_case = np.stack(df["dice"].to_numpy())
        # MONAI's "mean": per-case mean over classes, then over cases
        assert run["metrics"]["dice_mean"] == pytest.approx(np.mean([np.nanmean(d) for d in per_case]))
        assert run["latency_ms"]["per_sample_mean"] == pytest.approx(df["latency_ms"].mean())
        assert run["n_samples"] == 3 and run["n_skipped"] == 1


def test_candidate_vs_baseline_and_outputs(evaluated):
    cfg, table, samples, prep, results, doc, out = evaluated
    cand = doc["runs"][1]
    assert cand["role"] == "candidate" and cand["effective_precision"]["executed"] == "fp32"
    # ORT and torch give the same masks (fp32, same graph)
    assert cand["agreement"]["dice_mean"] >= 0.99 and cand["agreement"]["voxel_agreement_min"] >= 0.999
    assert cand["speedup"]["factor"] > 0 and "dice_mean" in cand["metric_deltas"]
    assert set(cand["metrics"]) >= {"dice_mean", "dice_per_class"} and "auc_macro" not in cand["metrics"]
    assert doc["dataset"]["classes"] == ["organ", "lesion"] and doc["dataset"]["task"] == "segmentation"
    json.dumps(doc)  # JSON-serialisable as it is
    md = render_report(doc)
    assert "| Subject | Shape | Baseline latency | Candidate latency | Speed-up | Dice vs baseline (mean)" in md
    # three evaluated cases in the per-case table, the skipped one in its own section
    assert sum(line.startswith("| phantom_test_00") for line in md.splitlines()) == 3 + 1
    assert [c["sample_id"] for c in doc["cases"]] == ["phantom_test_000", "phantom_test_001", "phantom_test_002"]
    assert "## Skipped samples" in md and doc["skipped"][0]["sample_id"] == "phantom_test_003"
    pq = pd.read_parquet(out / "predictions" / "onnxruntime-fp32.parquet")
    assert len(pq) == 3 and {"sample_id", "dice_organ", "dice_lesion", "dice_mean", "dice_vs_baseline_organ",
                             "latency_ms", "sw_ms", "shape", "mask_file"} <= set(pq.columns)
    assert list(pq["shape"].iloc[0])[:2] == [24, 24]
    assert (out / "predictions" / "torch-fp32_masks" / "phantom_test_000.npz").is_file()
