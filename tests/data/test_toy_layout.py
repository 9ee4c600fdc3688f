"""README "Adding a dataset layout": a layout added from this test folder — its reader here,
one registry row, no edit under medray/ — is validated, read, screened and evaluated end
to end (both runs through Ray), its AUC equal to scikit-learn's on the merged outputs."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import TINY_ARCH, TINY_SIZE
from PIL import Image
from sklearn.metrics import roc_auc_score

from medray.backends.onnxruntime.config import OnnxRuntimeConfig
from medray.config import EvalConfig, RayConfig
from medray.data.config import DataConfig
from medray.data.sources import SOURCES, Source
from medray.data.table import SampleTable
from medray.errors import ConfigError
from medray.models.config import ModelConfig

pytestmark = pytest.mark.slow

CLASSES = ["clear", "opacity"]


def read_toy(data: DataConfig, root: str) -> SampleTable:
    """The toy layout: ``<root>/labels.csv`` (file, label, split) beside the images."""
    rows = list(csv.DictReader(open(Path(root) / "labels.csv")))
    df = pd.DataFrame({
        "sample_id": [r["file"] for r in rows],
        "path": [str(Path(root) / r["file"]) for r in rows],
        "split": [r["split"] for r in rows],
        "target": [CLASSES.index(r["label"]) if r["label"] in CLASSES else -1 for r in rows],
        "problem": ["" if r["label"] in CLASSES else f"label {r['label']!r} not in {CLASSES}" for r in rows],
    })
    return SampleTable("toycsv", "multiclass", CLASSES, str(root), df)


@pytest.fixture()
def toy_layout(monkeypatch, tmp_path):
    monkeypatch.setitem(SOURCES, "toycsv", Source(f"{__name__}:read_toy", folder=True, calibration_splits=("cal",)))
    root = tmp_path / "toy"
    root.mkdir()
    rng = np.random.default_rng(0)
    with open(root / "labels.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["file", "label", "split"])
        for i in range(36):
            label = CLASSES[i % 2]
            img = rng.integers(0, 120, (40, 40), dtype=np.uint8) + (100 if label == "opacity" else 0)
            Image.fromarray(img.astype(np.uint8)).save(root / f"{i:03d}.png")
            w.writerow([f"{i:03d}.png", label, "cal" if i < 8 else "test"])
    return root


def test_a_layout_registered_with_one_row_is_evaluated_end_to_end(ray_local, toy_layout, tmp_path, tiny_checkpoint):
    from medray.pipeline.execute import execute
    from medray.pipeline.prepare import prepare
    from medray.report.document import build_metrics

    cfg = EvalConfig(
        backend=OnnxRuntimeConfig(), precision="int8", data=DataConfig(name="toycsv", root=str(toy_layout)),
        model=ModelConfig(name="tiny", arch=TINY_ARCH, checkpoint=str(tiny_checkpoint), input_size=TINY_SIZE),
        ray=RayConfig(num_cpus=2), batch_size=8, output_dir=str(tmp_path / "out"), cache_dir=str(tmp_path / "cache"),
        warmup_batches=1)
    table, samples, specs, task = prepare(cfg)
    cal = specs[1].artifact["calibration"]
    assert len(samples) == 28 and cal["n"] == 8 and cal["splits"] == ["cal"]  # INT8 calibrated on the row's split
    results = execute(cfg, task, samples, specs)
    doc = build_metrics(cfg, table, samples, results, task)
    y = table.targets(samples)
    for res, run in zip(results, doc["runs"]):
        df = res.predictions.set_index("sample_id").loc[samples["sample_id"]]
        p = np.stack(df["probs"].to_numpy())[:, 1]
        assert run["metrics"]["auc_macro"] == pytest.approx(roc_auc_score(y, p), abs=1e-9)
    assert doc["dataset"]["name"] == "toycsv" and doc["runs"][1]["n_samples"] == 28


def test_the_row_decides_the_config_rules(toy_layout):
    with pytest.raises(ConfigError, match="data.root=None: data=toycsv reads your copy of the dataset"):
        DataConfig(name="toycsv")
    with pytest.raises(ConfigError, match="data=toycsv has fixed classes"):
        DataConfig(name="toycsv", root=str(toy_layout), classes=["a", "b"])
    with pytest.raises(ConfigError, match="data='nosuch': available datasets: .*toycsv"):
        DataConfig(name="nosuch")
