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
from helpers import UNET_NET as NET
from helpers import UNET_ROI as ROI

from medray.backends.base import BackendError
from medray.backends.onnxruntime.config import OnnxRuntimeConfig
from medray.config import ConfigError, EvalConfig, RayConfig, backend_config
from medray.data.config import DataConfig, VolumeConfig
from medray.data.msd import load_case
from medray.data.phantoms import ensure_phantoms, phantom_tag
from medray.io import file_sha256
from medray.metrics.segmentation import dice_iou, dice_per_class, overlap_counts, surface_distances
from medray.models.config import ModelConfig
from medray.pipeline.execute import execute
from medray.pipeline.predictor import Predictor
from medray.pipeline.prepare import prepare
from medray.report.document import build_metrics
from medray.report.markdown import render_report
from medray.report.writers import write_outputs
from medray.specs import ModelSpec, RunSpec
from medray.tasks.segmentation import SegmentationTask
from medray.tasks.segmentation.config import SlidingWindowConfig


def load_mask(mask_dir, name):
    """A mask file written to predictions/<run>_masks/ (NIfTI in the input's geometry)."""
    import nibabel as nib

    return np.asarray(nib.load(str(Path(mask_dir) / name)).dataobj)


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
    import pickle

    from monai.inferers import sliding_window_inference

    from medray.models.factory import load_model

    spec = tiny_spec(unet_checkpoint)
    settings = {"overlap": 0.25, "mode": "gaussian", "sigma_scale": 0.125, "space": "model", "mirroring": None}
    task = SegmentationTask(classes=["organ", "lesion"], regions=[(1,), (2,)], settings=settings)
    p = Predictor(spec, task)
    img = np.random.default_rng(0).standard_normal((1, 20, 24, 13)).astype(np.float32)
    geometry = pickle.dumps({"original": False, "affine": np.eye(4), "model_affine": np.eye(4), "orig_shape": [20, 24, 13]})
    mask, timing = task.segment(p.backend, spec, img, geometry)
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
    prep = specs[0].model.preprocess
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
            # the mask is in the input file's geometry: its shape and affine
            import nibabel as nib

            img = nib.load(samples.set_index("sample_id").loc[row.sample_id, "path"])
            written = nib.load(str(out / "predictions" / f"{r.spec.name}_masks" / row.mask_file))
            assert mask.shape == case["label_original"].shape == img.shape[:3]
            np.testing.assert_allclose(written.affine, img.affine, atol=1e-5)
            assert tuple(case["image"].shape[1:]) == tuple(int(v) for v in row.model_shape)
            # TP/FP/FN and Dice as nnU-Net counts them, on the saved mask vs the label file
            counts = overlap_counts(mask, case["label_original"], [(1,), (2,)])
            np.testing.assert_array_equal(row.counts, counts)
            np.testing.assert_allclose(row.dice, dice_iou(counts)[0], equal_nan=True)
            # HD95 / surface Dice of the saved mask, in the file's voxel spacing (MONAI).
            hd, nsd = surface_distances(mask, case["label_original"], 3, case["orig_spacing"], 2.0)
            np.testing.assert_allclose(row.hd95, hd, equal_nan=True)
            np.testing.assert_allclose(row.surface_dice, nsd, equal_nan=True)
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
    assert set(cand["metrics"]) >= {"dice_mean", "dice_per_class", "hd95_per_class", "surface_dice_per_class"}
    assert "auc_macro" not in cand["metrics"] and cand["metrics"]["surface_tolerance_mm"] == 2.0
    assert doc["dataset"]["classes"] == ["organ", "lesion"] and doc["dataset"]["task"] == "segmentation"
    json.dumps(doc)  # JSON-serialisable as it is
    md = render_report(doc)
    assert "| Subject | Shape | Baseline latency | Candidate latency | Speed-up | Dice vs baseline (mean)" in md
    # three evaluated cases in the per-case table, the skipped one in its own section
    assert sum(line.startswith("| phantom_test_00") for line in md.splitlines()) == 3 + 1
    assert [c["sample_id"] for c in doc["cases"]] == ["phantom_test_000", "phantom_test_001", "phantom_test_002"]
    assert "## Skipped samples" in md and doc["skipped"][0]["sample_id"] == "phantom_test_003"
    assert "## Surface distances (MONAI; HD95 in mm, surface Dice at 2 mm)" in md
    model_line = next(line for line in md.splitlines() if "weights `" in line)
    assert model_line.startswith("- architecture `monai_unet`") and "timm" not in model_line
    pq = pd.read_parquet(out / "predictions" / "onnxruntime-fp32.parquet")
    assert len(pq) == 3 and {"sample_id", "dice_organ", "dice_lesion", "dice_mean", "dice_vs_baseline_organ",
                             "hd95_organ", "surface_dice_lesion", "latency_ms", "sw_ms", "shape", "mask_file"} <= set(pq.columns)
    assert list(pq["shape"].iloc[0])[:2] == [24, 24]
    assert (out / "predictions" / "torch-fp32_masks" / "phantom_test_000.nii.gz").is_file()
    assert cand["acceptance"]["pass_99.9"] is True and cand["acceptance"]["ratio"] == pytest.approx(1.0, abs=0.01)
    assert "## Acceptance (MLPerf 3D-UNet rule)" in md and cand["memory"]["peak_rss_mb_max"] > 0
    # The worst cases' slices with every run's mask, linked from the report.
    from PIL import Image

    assert doc["plots"] == {"worst_cases": "plots/worst_cases.png"}
    img = np.asarray(Image.open(out / "plots" / "worst_cases.png").convert("L"), dtype=float)
    assert img.shape[1] > 600 and img.std() > 10
    assert "![worst_cases](plots/worst_cases.png)" in (out / "report.md").read_text()


# --------------------------------------------------------------------------- one pipeline: what classification has


def test_killed_actor_is_retried_with_identical_dice(evaluated, tmp_path):
    """An actor that dies mid-run is restarted and its case redone: every case once, the
    very Dice and masks of the uninterrupted run."""
    from dataclasses import replace

    cfg, table, samples, prep, results, doc, out = evaluated
    task = SegmentationTask.for_config(cfg, table)
    marker = tmp_path / "killed-once"
    spec = replace(results[0].spec, options={"fail_after_batches": 1, "fail_once_marker": str(marker)})
    again = execute(cfg, task, samples, [spec])[0]
    assert marker.exists(), "no actor was killed"
    ref = results[0].predictions
    assert again.predictions["sample_id"].tolist() == ref["sample_id"].tolist()
    for a, b in zip(again.predictions["dice"], ref["dice"]):
        np.testing.assert_array_equal(a, b)
    assert again.predictions["mask_sha256"].tolist() == ref["mask_sha256"].tolist()
    assert again.skipped["sample_id"].tolist() == ["phantom_test_003"]


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_int8_segmentation_is_calibrated_on_roi_windows_and_compared_with_the_baseline(
        ray_local, tmp_path, unet_checkpoint, backend):
    from medray.backends import config_class
    from medray.data.config import CalibrationConfig
    from medray.pipeline.evaluate import run

    data = DataConfig(name="msd", n_train=1, n_calibration=2, n_test=2, image_size=32)
    cfg = seg_cfg(tmp_path, unet_checkpoint, backend=config_class(backend)(), precision="int8", data=data,
                  calibration=CalibrationConfig(num_samples=12))
    doc = run(cfg)
    base, cand = doc["runs"]
    assert (base["name"], cand["name"]) == ("torch-fp32", f"{backend}-int8")
    assert cand["effective_precision"]["executed"] == "int8", cand["effective_precision"]
    cal = cand["artifact"]["calibration"]
    assert cal["splits"] == ["calibration"] and cal["n"] == 2  # the 2 calibration cases, none evaluated
    # Dice vs the baseline = MONAI Dice of the two runs' saved masks (ignore_empty=False)
    out = Path(cfg.output_dir) / "predictions"
    per_case = []
    for case in doc["cases"]:
        name = case["sample_id"] + ".nii.gz"
        b, c = load_mask(out / "torch-fp32_masks", name), load_mask(out / f"{backend}-int8_masks", name)
        per_case.append(np.nanmean(dice_per_class(c, b, 3, ignore_empty=False)))  # == masks' Dice with regions
    assert cand["agreement"]["dice_mean"] == pytest.approx(np.mean(per_case))
    md = (Path(cfg.output_dir) / "report.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith(f"| {doc['dataset']['name']} | Candidate {backend}-int8"))
    assert f"{cand['agreement']['dice_mean']:.4f}" in row
    assert "calibrated on 2 samples of split calibration" in md


N_RESUME, KILL_AFTER = 4, 2


def _overrides(root: Path, checkpoint: Path, out: Path, *extra: str) -> list[str]:
    return ["task=segmentation", "backend=onnxruntime", "data.n_train=1", "data.n_calibration=1",
            f"data.n_test={N_RESUME}", "data.image_size=24", "model.name=tiny", "model.arch=monai_unet",
            f"model.checkpoint={checkpoint}", "model.in_chans=1", "sliding_window.sw_batch_size=3", "warmup_batches=0",
            f"output_dir={out}", f"cache_dir={root / 'cache'}", *extra]


def _compose(*ov):
    from helpers import REPO
    from hydra import compose, initialize_config_dir

    from medray.cli import register_configs
    from medray.config import to_config

    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return to_config(compose(config_name="evaluate", overrides=list(ov)))


@pytest.mark.slow
def test_interrupted_segmentation_run_resumes_with_the_remaining_cases(ray_local, tmp_path, unet_checkpoint):
    import os
    import subprocess
    import sys

    import pyarrow.parquet as pq
    from helpers import REPO

    from medray.pipeline.evaluate import run
    from medray.pipeline.resume import EXIT_AFTER_PARTS_ENV

    ref = run(_compose(*_overrides(tmp_path, unet_checkpoint, tmp_path / "ref")))
    out = tmp_path / "interrupted"
    addr = ray_local.get_runtime_context().gcs_address
    cmd = [sys.executable, str(REPO / "jobs" / "evaluate.py"), *_overrides(tmp_path, unet_checkpoint, out, f"ray.address={addr}")]
    killed = subprocess.run(cmd, env={**os.environ, EXIT_AFTER_PARTS_ENV: str(KILL_AFTER)}, cwd=REPO,
                            capture_output=True, text=True, timeout=600)
    assert killed.returncode == 75, killed.stderr[-3000:]
    assert len(list((out / "predictions" / "torch-fp32.parts").glob("*.parquet"))) == KILL_AFTER
    doc = run(_compose(*_overrides(tmp_path, unet_checkpoint, out, "resume=true")))
    base, cand = doc["runs"]
    # only the cases the killed run had not finished were evaluated again
    assert base["resumed"] == {"from_previous": KILL_AFTER, "processed": N_RESUME - KILL_AFTER}
    assert "resumed" not in cand and cand["n_samples"] == N_RESUME
    # and the outputs are the uninterrupted run's
    for a, b in zip(doc["runs"], ref["runs"]):
        assert a["metrics"] == b["metrics"] and a.get("agreement") == b.get("agreement")
    timing = {"batch_uid", "batch_ms", "latency_ms", "sw_ms", "post_ms", "peak_rss_mb", "node_id", "worker_pid", "t_start",
              "t_end"}
    for run_name in ("torch-fp32", "onnxruntime-fp32"):
        t1, t2 = (pq.read_table(d / "predictions" / f"{run_name}.parquet") for d in (tmp_path / "ref", out))
        keep = [c for c in t1.column_names if c not in timing]
        pd.testing.assert_frame_equal(t1.select(keep).to_pandas(), t2.select(keep).to_pandas())  # NaN Dice = NaN
        for f in (tmp_path / "ref" / "predictions" / f"{run_name}_masks").glob("*.nii.gz"):
            np.testing.assert_array_equal(load_mask(f.parent, f.name), load_mask(out / "predictions" / f"{run_name}_masks", f.name))


def test_segmentation_subgroups_from_metadata(evaluated):
    """Mean Dice per metadata group (e.g. scanner), the candidate's change, the worst group."""
    from dataclasses import replace

    from medray.metrics.segmentation import case_mean
    from medray.report.config import ReportConfig

    cfg, table, samples, prep, results, doc, out = evaluated
    scanner = {"phantom_test_000": "A", "phantom_test_001": "B", "phantom_test_002": "B", "phantom_test_003": "A"}
    s2 = samples.assign(scanner=samples["sample_id"].map(scanner))
    t2 = replace(table, samples=table.samples.assign(scanner=table.samples["sample_id"].map(scanner).fillna("(missing)")),
                 subgroup_columns=["scanner"])
    c2 = replace(cfg, report=ReportConfig(min_subgroup_size=1))
    d2 = build_metrics(c2, t2, s2, results)  # the task made from the config, as run() does
    for r, entry in zip(results, d2["runs"]):
        means = {row.sample_id: case_mean(row.dice) for row in r.predictions.itertuples()}
        got = {x["group"]: x for x in entry["subgroups"]["scanner"]}
        assert got["A"]["n"] == 1 and got["B"]["n"] == 2  # the skipped case is in no group's Dice
        assert got["B"]["dice_mean"] == pytest.approx(np.mean([means["phantom_test_001"], means["phantom_test_002"]]))
    cand = d2["runs"][1]
    assert cand["worst_subgroup"]["attribute"] == "scanner"
    assert all(x["delta_dice"] == pytest.approx(x["dice_mean"] - x["dice_baseline"]) for x in cand["subgroups"]["scanner"])
    assert "## Subgroups" in render_report(d2) and "| scanner | B | 2 |" in render_report(d2)



def test_int8_repair_judges_segmentation_by_dice_on_labelled_validation_cases(tmp_path, unet_checkpoint):
    """task=segmentation's side of the INT8 repair: the labelled cases of the repair split,
    segmented with the run's sliding window, mean Dice; the reference is the fp32 graph's Dice,
    which equals the PyTorch model's on the same cases (same masks)."""
    from medray.backends.config import QuantizationConfig
    from medray.models.loaders import load_torch_model

    q = QuantizationConfig(repair=True, min_ratio=0.999, repair_split="train", repair_threads=1, repair_bench=False)
    prep = prepare(seg_cfg(tmp_path, unet_checkpoint, precision="int8", baseline=None, quantization=q))
    rep = prep.specs[0].artifact["repair"]
    assert rep["gates"] == ["dice_mean >= 0.999 x fp32 (quantization.min_ratio)"]
    assert rep["validation"]["splits"] == ["train"] and rep["layers"] > 0
    task = prep.task
    val = task.repair_validation(seg_cfg(tmp_path, unet_checkpoint, precision="int8", quantization=q), prep.table,
                                 prep.samples, prep.specs[0].model).load()
    model = load_torch_model(prep.specs[0].model)
    with torch.inference_mode():
        dice = val.score(lambda x: model(torch.from_numpy(x)).numpy())["dice_mean"]
    assert dice == pytest.approx(rep["reference"]["dice_mean"], abs=1e-3)
    assert rep["fallback"][-1]["passes"]  # some step passes, each reported
