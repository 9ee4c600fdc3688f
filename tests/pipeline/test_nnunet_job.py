"""model=nnunet data=nnunet through the one pipeline: medray's masks equal nnUNetPredictor's
(same folds, tile step 0.5, Gaussian, mirroring on), written in the original geometry, with
nnU-Net's own compute_metrics_on_folder numbers; per-fold ONNX and INT8 candidates; bad
inputs named before Ray starts.  The models are trained with nnU-Net's own tools on
generated anisotropic CT-like volumes (half stored LPS) and on a 2-channel region-based MR
set (tests/nnunet_tiny.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import REPO

from medray.config import EvalConfig, RayConfig
from medray.data.config import DataConfig
from medray.models.config import ModelConfig
from medray.tasks.segmentation.config import SlidingWindowConfig

pytestmark = pytest.mark.slow


def nnunet_cfg(tmp_path, model: str, raw: str, **kw) -> EvalConfig:
    from medray.backends.onnxruntime.config import OnnxRuntimeConfig

    base = dict(
        backend=OnnxRuntimeConfig(), task="segmentation", data=DataConfig(name="nnunet", root=raw, split="test"),
        model=ModelConfig(name="nnunet", source="nnunet", path=model, checkpoint="checkpoint_final.pth"),
        sliding_window=SlidingWindowConfig(sw_batch_size=8), ray=RayConfig(num_cpus=2),
        output_dir=str(tmp_path / "out"), cache_dir=str(tmp_path / "cache"), warmup_batches=1,
    )
    base.update(kw)
    return EvalConfig(**base)


def reference_masks(model: str, folds, images: list[list[str]], out: Path) -> Path:
    """nnUNetPredictor's own masks (its sequential path: no worker pools)."""
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    torch.set_num_threads(1)
    pred = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=True, perform_everything_on_device=False,
                           device=torch.device("cpu"), verbose=False, allow_tqdm=False)
    pred.initialize_from_trained_model_folder(model, use_folds=tuple(folds), checkpoint_name="checkpoint_final.pth")
    out.mkdir(parents=True, exist_ok=True)
    names = [str(out / Path(files[0]).name.replace("_0000.nii.gz", "")) for files in images]
    pred.predict_from_files_sequential(images, names, save_probabilities=False, overwrite=True)
    return out


def read(path) -> tuple[np.ndarray, tuple]:
    import SimpleITK as sitk

    img = sitk.ReadImage(str(path))
    return sitk.GetArrayFromImage(img), np.concatenate([img.GetSpacing(), img.GetOrigin(), img.GetDirection()])


def assert_parity(ours: Path, ref: Path, images: list[list[str]], regions: list) -> None:
    """Every case: ≥ 99.9 % voxel agreement and Dice ≥ 0.995 per label / region vs nnU-Net's
    mask, and the input's size, spacing, origin and direction."""
    from medray.metrics.segmentation import dice_iou, overlap_counts

    for files in images:
        name = Path(files[0]).name.replace("_0000", "")
        mine, geo = read(ours / name)
        theirs, ref_geo = read(ref / name)
        _, in_geo = read(files[0])
        assert mine.shape == theirs.shape and np.allclose(geo, in_geo, atol=1e-5)
        assert np.allclose(ref_geo, in_geo, atol=1e-5)
        assert (mine == theirs).mean() >= 0.999, name
        dice, _ = dice_iou(overlap_counts(mine, theirs, regions))
        assert np.nan_to_num(dice, nan=1.0).min() >= 0.995, (name, dice)


def assert_nnunet_metrics(run: str, out: Path, raw: str, regions: list) -> None:
    """Dice, IoU, TP, FP, FN, n_pred, n_ref per case and label / region in predictions/<run>.parquet
    equal nnunetv2's compute_metrics_on_folder on the written masks vs labelsTs."""
    import nnunet_tiny
    from nnunetv2.evaluation.evaluate_predictions import compute_metrics_on_folder
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    with nnunet_tiny.fork_pools():
        ev = compute_metrics_on_folder(str(Path(raw) / "labelsTs"), str(out / "predictions" / f"{run}_masks"), None,
                                       SimpleITKIO(), ".nii.gz", [r if len(r) > 1 else r[0] for r in regions], None, 1)
    pq = pd.read_parquet(out / "predictions" / f"{run}.parquet").set_index("mask_file")
    classes = json.loads((out / "metrics.json").read_text())["dataset"]["classes"]
    assert len(ev["metric_per_case"]) == len(pq)
    for case in ev["metric_per_case"]:
        row = pq.loc[Path(case["prediction_file"]).name]
        for c, r in zip(classes, regions):
            m = case["metrics"][r if len(r) > 1 else r[0]]
            assert (row[f"tp_{c}"], row[f"fp_{c}"], row[f"fn_{c}"], row[f"tn_{c}"]) == (m["TP"], m["FP"], m["FN"], m["TN"])
            assert (row[f"n_pred_{c}"], row[f"n_ref_{c}"]) == (m["n_pred"], m["n_ref"])
            np.testing.assert_equal([row[f"dice_{c}"], row[f"iou_{c}"]], [m["Dice"], m["IoU"]])


@pytest.fixture(scope="module")
def ct_run(tiny_nnunet, ray_local, tmp_path_factory):
    """Dataset A (CT, 2 folds, anisotropic, LPS and RAS files): torch fp32 baseline, ONNX
    Runtime fp32 candidate (one ONNX per fold), and nnUNetPredictor's masks."""
    from medray.pipeline.evaluate import run

    tmp = tmp_path_factory.mktemp("nnunet-ct")
    cfg = nnunet_cfg(tmp, tiny_nnunet["A"], tiny_nnunet["A_raw"])
    doc = run(cfg)
    images = [sorted(str(p) for p in (Path(tiny_nnunet["A_raw"]) / "imagesTs").glob(f"{c['sample_id']}_*.nii.gz"))
              for c in doc["cases"]]
    ref = reference_masks(tiny_nnunet["A"], (0, 1), images, tmp / "nnunet")
    return cfg, doc, images, ref


def test_medray_masks_are_nnunet_predictors_on_ct_with_two_folds(ct_run, tiny_nnunet):
    cfg, doc, images, ref = ct_run
    out = Path(cfg.output_dir)
    regions = [(1,), (2,), (3,)]
    assert [r["name"] for r in doc["runs"]] == ["torch-fp32", "onnxruntime-fp32"] and len(images) == 2
    for run in ("torch-fp32", "onnxruntime-fp32"):
        assert_parity(out / "predictions" / f"{run}_masks", ref, images, regions)
        assert_nnunet_metrics(run, out, tiny_nnunet["A_raw"], regions)
    base, cand = doc["runs"]
    # one ONNX per fold, each a session of the candidate: every window of both folds, 8 mirrorings each
    assert [m["path"].endswith("model.onnx") for m in cand["artifact"]["members"]] == [True, True]
    assert cand["effective_precision"]["members"] == ["fold_0", "fold_1"]
    assert doc["sliding_window"]["mirror_axes"] == [0, 1, 2] and doc["sliding_window"]["overlap"] == 0.5
    case = pd.read_parquet(out / "predictions" / "torch-fp32.parquet")
    assert (case["n_windows"] % 16 == 0).all() and (case["n_calls"] == case["n_windows"] / 8).all()
    assert base["memory"]["peak_rss_mb_max"] > 0 and cand["acceptance"]["pass_99.9"] is True
    md = (out / "report.md").read_text()
    assert "nnU-Net 3d_fullres (nnUNetPlans, trainer nnUNetTrainerTiny, folds 0, 1)" in md
    assert "| ≥ 99 % | ≥ 99.9 % |" in md and "| onnxruntime-fp32 |" in md


def test_bad_cases_are_named_before_ray_or_skipped(tiny_nnunet, tmp_path):
    """A case without its second channel and a label whose spacing disagrees with its image:
    a bad-input error naming the file (data.on_error=fail) or two counted skips."""
    import shutil

    import nibabel as nib

    from medray.errors import BadSampleError
    from medray.pipeline.prepare import prepare

    raw = tmp_path / "Dataset902_TinyMR"
    shutil.copytree(tiny_nnunet["B_raw"], raw)
    (raw / "imagesTs" / "b_004_0001.nii.gz").unlink()
    lab = raw / "labelsTs" / "b_005.nii.gz"
    img = nib.load(lab)
    aff = img.affine.copy()
    aff[:3, :3] *= 1.5
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), aff), lab)
    cfg = nnunet_cfg(tmp_path, tiny_nnunet["B"], str(raw))
    with pytest.raises(BadSampleError, match=r"channel 1 \(T2\) missing: .*b_004_0001.nii.gz not found"):
        prepare(cfg)
    skip = nnunet_cfg(tmp_path, tiny_nnunet["B"], str(raw), data=DataConfig(name="nnunet", root=str(raw), on_error="skip"))
    p = prepare(skip)
    problems = dict(zip(p.samples["sample_id"], p.samples["problem"]))
    assert "channel 1 (T2) missing" in problems["b_004"]
    assert "labelsTs/b_005.nii.gz: label spacing / origin / direction" in problems["b_005"]


def test_the_issues_command_runs_openvino_int8_on_two_channels_with_regions(tiny_nnunet, tmp_path):
    """`python jobs/evaluate.py task=segmentation model=nnunet ... data=nnunet ... backend=openvino
    precision=int8`: masks in the original geometry (torch's = nnUNetPredictor's), the per-case
    table, Dice / HD95 / NSD, the MLPerf lines; INT8 calibrated on patches of imagesTr."""
    pytest.importorskip("openvino")
    p = subprocess.run(
        [sys.executable, str(REPO / "jobs" / "evaluate.py"), "task=segmentation", "model=nnunet",
         f"model.path={tiny_nnunet['B']}", "data=nnunet", f"data.root={tiny_nnunet['B_raw']}", "data.split=test",
         "backend=openvino", "precision=int8", "calibration.num_samples=16", "sliding_window.sw_batch_size=8",
         "ray.num_cpus=2", f"output_dir={tmp_path}/out", f"cache_dir={tmp_path}/cache"],
        capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    out = tmp_path / "out"
    doc = json.loads((out / "metrics.json").read_text())
    base, cand = doc["runs"]
    assert (base["name"], cand["name"]) == ("torch-fp32", "openvino-int8")
    assert cand["effective_precision"]["executed"] == "int8"
    assert cand["artifact"]["calibration"]["splits"] == ["train"] and len(cand["artifact"]["members"]) == 1
    assert doc["dataset"]["classes"] == ["whole", "core"] and doc["dataset"]["label_values"] == {"whole": [1, 2], "core": [2]}
    for r in (base, cand):
        assert set(r["metrics"]) >= {"dice_mean", "per_label", "foreground_mean", "hd95_per_class", "surface_dice_per_class"}
    assert cand["agreement"]["dice_mean"] > 0.9 and cand["acceptance"]["ratio"] > 0.9
    md = (out / "report.md").read_text()
    assert "| Subject | Shape | Baseline latency | Candidate latency | Speed-up | Dice vs baseline (mean)" in md
    assert "## Acceptance (MLPerf 3D-UNet rule)" in md and "| openvino-int8 |" in md
    assert "## Surface distances" in md
    images = [sorted(str(f) for f in (Path(tiny_nnunet["B_raw"]) / "imagesTs").glob(f"{c['sample_id']}_*.nii.gz"))
              for c in doc["cases"]]
    ref = reference_masks(tiny_nnunet["B"], ("all",), images, tmp_path / "nnunet")
    regions = [(1, 2), (2,)]
    assert_parity(out / "predictions" / "torch-fp32_masks", ref, images, regions)
    assert_nnunet_metrics("torch-fp32", out, tiny_nnunet["B_raw"], regions)
    assert_nnunet_metrics("openvino-int8", out, tiny_nnunet["B_raw"], regions)
