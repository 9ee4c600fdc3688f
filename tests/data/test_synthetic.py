"""Synthetic chest X-ray generator: determinism, layout, labels, idempotence, safety."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medray.data import generated, synthetic
from medray.data.preprocess import decode_gray
from medray.data.synthetic import BINARY_CLASSES, CHESTXRAY14_CLASSES, ensure_synthetic
from medray.data.table import read_manifest_dir

SIZE = 64  # small images keep the whole module around a second


@pytest.fixture(scope="module")
def binary_root(tmp_path_factory):
    return ensure_synthetic("binary", tmp_path_factory.mktemp("b") / "ds", 240, 20, 60, SIZE, seed=3)


@pytest.fixture(scope="module")
def ml_root(tmp_path_factory):
    return ensure_synthetic("multilabel", tmp_path_factory.mktemp("m") / "ds", 400, 20, 80, SIZE, seed=1)


def _manifest(root):
    return pd.read_csv(root / "manifest.csv", dtype=str, keep_default_na=False)


def test_layout_and_dataset_json(binary_root, ml_root):
    for root, name, task, classes in ((binary_root, "synthetic", "multiclass", BINARY_CLASSES),
                                      (ml_root, "synthetic_multilabel", "multilabel", CHESTXRAY14_CLASSES)):
        meta = json.loads((root / "dataset.json").read_text())
        assert meta["name"] == name and meta["task"] == task and meta["classes"] == classes
        assert meta["generator"]["image_size"] == SIZE
        df = _manifest(root)
        assert list(df.columns) == ["sample_id", "path", "split", "labels"]
        assert df["sample_id"].is_unique
        assert set(df["split"]) == {"train", "calibration", "test"}
        n = meta["generator"]
        assert df["split"].value_counts().to_dict() == {
            "train": n["n_train"], "calibration": n["n_calibration"], "test": n["n_test"]}
        for rel, split in zip(df["path"][::97], df["split"][::97]):
            assert rel.startswith(f"{split}/") and rel.endswith(".png")
            with Image.open(root / rel) as im:  # 8-bit grey PNG of the asked size
                assert (im.format, im.mode, im.size) == ("PNG", "L", (SIZE, SIZE))


def test_same_arguments_give_identical_files(tmp_path, binary_root):
    # Single-threaded here vs two render threads in the fixture: same bytes.
    again = ensure_synthetic("binary", tmp_path / "again", 240, 20, 60, SIZE, seed=3, workers=1)
    assert (again / "manifest.csv").read_bytes() == (binary_root / "manifest.csv").read_bytes()
    for rel in ["train/train_00000.png", "train/train_00137.png", "calibration/calibration_00019.png",
                "test/test_00042.png"]:
        assert (again / rel).read_bytes() == (binary_root / rel).read_bytes(), rel


def test_other_seed_differs_and_test_split_independent_of_train_size(tmp_path, binary_root):
    other = ensure_synthetic("binary", tmp_path / "s4", 8, 0, 4, SIZE, seed=4)
    assert (other / "test/test_00000.png").read_bytes() != (binary_root / "test/test_00000.png").read_bytes()
    # Per-image seeds come from (seed, split, index): a bigger train split leaves the
    # test images as they were.
    small = ensure_synthetic("binary", tmp_path / "small", 8, 0, 4, SIZE, seed=3)
    for i in range(4):
        rel = f"test/test_{i:05d}.png"
        assert (small / rel).read_bytes() == (binary_root / rel).read_bytes()


def test_binary_labels_balanced_and_visible(binary_root):
    df = _manifest(binary_root)
    assert set(df["labels"]) == set(BINARY_CLASSES)
    assert 0.35 < (df["labels"] == "PNEUMONIA").mean() < 0.65
    # The finding is visible: opacities brighten the lung fields, so PNEUMONIA images
    # are on average brighter in the lungs (a crude check that labels match pixels).
    train = df[df["split"] == "train"]
    lungs = np.s_[SIZE // 5: SIZE * 3 // 4, SIZE // 8: SIZE * 7 // 8]
    mean = {c: np.mean([decode_gray(str(binary_root / p), SIZE)[lungs].mean()
                        for p in train["path"][train["labels"] == c]]) for c in BINARY_CLASSES}
    assert mean["PNEUMONIA"] > mean["NORMAL"]


def test_multilabel_prevalence_and_cooccurrence(ml_root):
    df = _manifest(ml_root)
    names = [set(s.split("|")) - {""} for s in df["labels"]]
    assert set().union(*names) == set(CHESTXRAY14_CLASSES)
    prevalence = {c: np.mean([c in n for n in names]) for c in CHESTXRAY14_CLASSES}
    for c, p in prevalence.items():
        assert 0.04 <= p <= 0.40, (c, p)
    counts = np.array([len(n) for n in names])
    assert 0.1 < (counts == 0).mean() < 0.5  # some images have no finding
    assert (counts >= 3).mean() > 0.1  # and many have several
    assert counts[counts > 0].mean() > 2.0


def test_read_back_through_manifest_reader(binary_root, ml_root):
    t = read_manifest_dir(binary_root)
    assert (t.name, t.task, t.classes) == ("synthetic", "multiclass", BINARY_CLASSES)
    df = _manifest(binary_root)
    expected = [{"NORMAL": 0, "PNEUMONIA": 1}[s] for s in df["labels"]]
    assert t.samples["target"].tolist() == expected
    assert (binary_root / df["path"][0]).samefile(t.samples["path"][0])
    assert decode_gray(t.samples["path"][0], 32).shape == (32, 32)

    t = read_manifest_dir(ml_root)
    assert t.task == "multilabel" and t.classes == CHESTXRAY14_CLASSES
    df = _manifest(ml_root)
    y = t.targets(t.samples)
    assert y.shape == (len(df), 14)
    # Hand-check: e.g. "Cardiomegaly|Effusion" must be (0, 1, 1, 0, ..., 0).
    for i in np.flatnonzero((df["labels"] == "").to_numpy())[:3]:
        assert y[i].sum() == 0
    multi = np.flatnonzero(df["labels"].str.count(r"\|").to_numpy() >= 1)[:5]
    for i in multi:
        want = np.zeros(14, np.uint8)
        for name in df["labels"][i].split("|"):
            want[CHESTXRAY14_CLASSES.index(name)] = 1
        assert y[i].tolist() == want.tolist()
    assert len(multi) == 5


def test_idempotent_and_mismatch_raises(tmp_path):
    root = ensure_synthetic("binary", tmp_path / "ds", 6, 2, 4, SIZE)
    stamp = (root / "dataset.json").stat().st_mtime_ns
    assert ensure_synthetic("binary", str(root), 6, 2, 4, SIZE) == root
    assert (root / "dataset.json").stat().st_mtime_ns == stamp  # not regenerated
    with pytest.raises(ValueError, match=r"n_test: 4 there, 5 asked.*Pick another data.root or delete"):
        ensure_synthetic("binary", root, 6, 2, 5, SIZE)
    with pytest.raises(ValueError, match="kind: 'binary' there, 'multilabel' asked"):
        ensure_synthetic("multilabel", root, 6, 2, 4, SIZE)


def test_refuses_foreign_directory_but_fills_an_empty_one(tmp_path):
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "x.txt").write_text("mine")
    with pytest.raises(ValueError, match="not a synthetic dataset.*Pick another data.root"):
        ensure_synthetic("binary", tmp_path / "foreign", 2, 0, 2, SIZE)
    assert (tmp_path / "foreign" / "x.txt").read_text() == "mine"
    (tmp_path / "empty").mkdir()
    assert (ensure_synthetic("binary", tmp_path / "empty", 2, 0, 2, SIZE) / "dataset.json").is_file()
    with pytest.raises(ValueError, match="kind"):
        ensure_synthetic("ct", tmp_path / "x", 2, 0, 2, SIZE)


def test_killed_generation_leaves_nothing(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = synthetic.render_binary

    def dies_midway(rng, size):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt  # what Ctrl-C in the middle looks like
        return real(rng, size)

    # Left by a process of this host that is gone, and by one on another host (kept:
    # on a shared file system it may still be running).
    (tmp_path / f".ds.tmp-{generated.host_tag()}-999999999-deadbeef").mkdir()
    (tmp_path / ".ds.tmp-0othernd-999999999-deadbeef").mkdir()
    monkeypatch.setattr(synthetic, "render_binary", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        ensure_synthetic("binary", tmp_path / "ds", 8, 0, 0, SIZE)
    # No half dataset, no temp dir of ours.
    assert sorted(p.name for p in tmp_path.iterdir()) == [".ds.tmp-0othernd-999999999-deadbeef"]
    monkeypatch.setattr(synthetic, "render_binary", real)
    assert (ensure_synthetic("binary", tmp_path / "ds", 8, 0, 0, SIZE) / "manifest.csv").is_file()
