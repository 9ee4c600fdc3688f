"""Demo-model training: a tiny run end to end, checkpoint format and meta."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medray.data.preprocess import decode_gray, to_model_input
from medray.data.synthetic import CHESTXRAY14_CLASSES, ensure_synthetic
from medray.data.table import read_manifest_dir
from medray.models.config import TrainConfig
from medray.models.demo import auc_score, train_demo
from medray.models.factory import load_model, read_checkpoint

ARCH = "resnet10t"


@pytest.fixture(scope="module")
def binary_table(tmp_path_factory):
    return read_manifest_dir(ensure_synthetic("binary", tmp_path_factory.mktemp("b") / "ds", 200, 0, 40, 64))


def test_tiny_binary_run_writes_a_loadable_checkpoint(binary_table, tmp_path):
    threads = torch.get_num_threads()
    out = tmp_path / "ckpt" / "demo.pt"
    # threads=1: these few tiny steps gain nothing from more, and a busy CI machine
    # makes multi-threaded torch several times slower.
    s = train_demo(binary_table, ARCH, input_size=64, in_chans=3, out_path=out, train=TrainConfig(epochs=2, batch_size=32),
                   threads=1)
    assert torch.get_num_threads() == threads  # the caller's setting is given back
    assert s["checkpoint"] == str(out) and s["n_train"] == 200 and s["n_test"] == 40
    assert 0.0 <= s["test_auc"] <= 1.0 and np.isfinite(s["final_loss"])

    obj = torch.load(out, map_location="cpu", weights_only=True)  # tensors + plain values only
    assert set(obj) == {"state_dict", "meta"}
    meta = obj["meta"]
    assert {k: meta[k] for k in ("arch", "num_classes", "in_chans", "input_size", "task", "classes",
                                 "dataset", "trained_on", "epochs", "seed")} == {
        "arch": ARCH, "num_classes": 2, "in_chans": 3, "input_size": 64, "task": "multiclass",
        "classes": ["NORMAL", "PNEUMONIA"], "dataset": "synthetic", "trained_on": "train split",
        "epochs": 2, "seed": 0}
    assert all(t.is_contiguous() for t in obj["state_dict"].values())
    _, meta2 = read_checkpoint(out)
    assert meta2 == meta

    # The factory rebuilds it, and it scores the test split as the trainer did.
    model = load_model(ARCH, 2, 3, str(out))
    test = binary_table.split("test")
    x = np.stack([decode_gray(p, 64) for p in test["path"]])
    with torch.inference_mode():
        logits = model(torch.from_numpy(to_model_input(x, 3))).numpy()
    assert logits.shape == (40, 2)
    auc, _ = auc_score("multiclass", binary_table.targets(test), logits)
    # Not bit-exact: another batch size may take another conv algorithm; 0.01 allows a
    # few near-tied pairs to swap.
    assert auc == pytest.approx(s["test_auc"], abs=0.01)


def test_tiny_multilabel_run(tmp_path):
    table = read_manifest_dir(ensure_synthetic("multilabel", tmp_path / "ds", 64, 0, 48, 64, seed=2))
    s = train_demo(table, ARCH, input_size=48, in_chans=1, out_path=tmp_path / "m.pt", train=TrainConfig(epochs=1, batch_size=32),
                   threads=1)
    _, meta = read_checkpoint(tmp_path / "m.pt")
    assert meta["task"] == "multilabel" and meta["classes"] == CHESTXRAY14_CLASSES
    assert meta["num_classes"] == 14 and meta["in_chans"] == 1 and meta["input_size"] == 48
    assert set(s["test_auc_per_class"]) <= set(CHESTXRAY14_CLASSES)
    assert s["test_auc"] == pytest.approx(np.mean(list(s["test_auc_per_class"].values())))
    out = load_model(ARCH, 14, 1, str(tmp_path / "m.pt"))(torch.zeros(2, 1, 48, 48))
    assert out.shape == (2, 14)


def test_auc_score_matches_definitions():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(50, 2)).astype(np.float32)
    y = rng.integers(0, 2, 50)
    p1 = np.exp(logits[:, 1]) / np.exp(logits).sum(1)
    assert auc_score("multiclass", y, logits)[0] == pytest.approx(roc_auc_score(y, p1))
    # Multi-label: macro over labels that have both outcomes; label 2 (all 0) is skipped.
    yl = rng.integers(0, 2, (50, 3)).astype(np.uint8)
    yl[:, 2] = 0
    ll = rng.normal(size=(50, 3)).astype(np.float32)
    auc, per = auc_score("multilabel", yl, ll)
    assert set(per) == {0, 1}
    assert auc == pytest.approx(np.mean([roc_auc_score(yl[:, j], ll[:, j]) for j in (0, 1)]))


def test_too_small_train_split_is_refused(binary_table, tmp_path):
    with pytest.raises(ValueError, match="fewer than batch_size=512"):
        train_demo(binary_table, ARCH, 64, 3, tmp_path / "x.pt", TrainConfig(epochs=1, batch_size=512))
