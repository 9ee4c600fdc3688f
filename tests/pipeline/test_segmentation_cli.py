"""`python jobs/evaluate.py task=segmentation` end to end on a tiny phantom set (subprocess, as a user)."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest
from helpers import REPO

pytestmark = pytest.mark.slow


def evaluate(tmp_path, *args, timeout=420, out="out"):
    return subprocess.run(
        [sys.executable, str(REPO / "jobs" / "evaluate.py"), *args, f"output_dir={tmp_path}/{out}", f"cache_dir={tmp_path}/cache"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=timeout,
    )


def test_task_segmentation_trains_the_unet_demo_and_writes_the_contract(tmp_path):
    # No data= / model=: task=segmentation picks the phantom MSD set and the UNet demo.
    p = evaluate(
        tmp_path,
        "task=segmentation",
        "backend=onnxruntime",
        "data.n_train=4",
        "data.n_calibration=1",
        "data.n_test=2",
        "data.image_size=24",
        "model.train.epochs=2",
        "sliding_window.roi_size=[16,16,16]",
        "sliding_window.mode=gaussian",
        "ray.num_cpus=2",
    )
    assert p.returncode == 0, p.stderr[-3000:]
    out = tmp_path / "out"
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["dataset"]["task"] == "segmentation" and doc["dataset"]["classes"] == ["organ", "lesion"]
    assert doc["sliding_window"]["roi_size"] == [16, 16, 16] and doc["sliding_window"]["mode"] == "gaussian"
    base, cand = doc["runs"]
    assert (base["name"], cand["name"]) == ("torch-fp32", "onnxruntime-fp32")
    for r in (base, cand):
        assert r["n_samples"] == 2 and r["latency_ms"]["per_sample_mean"] > 0 and r["throughput_sps"] > 0
        assert "dice_mean" in r["metrics"] and set(r["metrics"]["dice_per_class"]) == {"organ", "lesion"}
    assert cand["agreement"]["dice_mean"] >= 0.99 and cand["speedup"]["factor"] > 0
    assert (out / "config.yaml").is_file() and "task: segmentation" in (out / "config.yaml").read_text()
    assert "Dice vs baseline (mean)" in (out / "report.md").read_text()
    for run in ("torch-fp32", "onnxruntime-fp32"):
        assert len(pd.read_parquet(out / "predictions" / f"{run}.parquet")) == 2
        assert len(list((out / "predictions" / f"{run}_masks").glob("*.nii.gz"))) == 2
    assert list((tmp_path / "cache" / "models").glob("demo-seg-*.pt")), "the demo checkpoint is cached"


def test_segmentation_with_a_classification_dataset_fails_fast(tmp_path):
    p = evaluate(tmp_path, "task=segmentation", "data=synthetic", timeout=120)
    assert p.returncode == 2
    assert "task='segmentation': data=synthetic is a classification dataset" in p.stderr
    assert "Started a local Ray instance" not in p.stderr


def test_a_corrupt_volume_exits_3_with_its_path(tmp_path, unet_checkpoint):
    """A volume whose voxel data is cut short fails the run in its read task: exit 3, the
    file and the reason, no traceback; one whose header is garbage fails before Ray starts."""
    import gzip

    from medray.data.phantoms import ensure_phantoms

    root = ensure_phantoms(tmp_path / "msd", 1, 1, 2, 24, 0)
    bad = root / "imagesTs" / "phantom_test_001.nii.gz"
    raw = gzip.decompress(bad.read_bytes())
    bad.write_bytes(gzip.compress(raw[: len(raw) // 2]))
    args = ["task=segmentation", f"data.root={root}", "model.name=tiny", "model.arch=monai_unet",
            f"model.checkpoint={unet_checkpoint}", "model.in_chans=1", "backend=onnxruntime", "ray.num_cpus=2"]
    p = evaluate(tmp_path, *args)
    assert p.returncode == 3, p.stderr[-3000:]
    assert f"medray: bad input: {bad}: cannot be read as a NIfTI volume" in p.stderr
    assert "set data.on_error=skip" in p.stderr and "Traceback" not in p.stderr
    bad.write_bytes(b"not a NIfTI file at all")
    # A new output_dir: the failed run above left a resumable run behind in "out".
    p = evaluate(tmp_path, *args, timeout=120, out="out2")
    assert p.returncode == 3 and f"medray: bad input: {bad}: cannot be read as a NIfTI volume" in p.stderr
    assert "Started a local Ray instance" not in p.stderr
