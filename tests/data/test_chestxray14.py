"""data=chestxray14: the NIH layout, label parsing against hand counts, splits, patients."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import REPO, TINY_ARCH, TINY_SIZE
from PIL import Image

from medray.backends.onnxruntime.config import OnnxRuntimeConfig
from medray.config import ConfigError, EvalConfig
from medray.data.chestxray14 import LABELS, parse_findings, read_chestxray14
from medray.data.config import DataConfig
from medray.data.load import check_patient_overlap, load_table, resolve_calibration_split
from medray.models.config import ModelConfig

# (Image Index, Finding Labels, Patient ID, split) — a miniature of the real manifest.
ROWS = [
    ("00000001_000.png", "Cardiomegaly", "1", "train_val"),
    ("00000001_001.png", "Cardiomegaly|Emphysema", "1", "train_val"),
    ("00000001_002.png", "Cardiomegaly|Effusion", "1", "train_val"),
    ("00000002_000.png", "No Finding", "2", "train_val"),
    ("00000003_000.png", "Hernia", "3", "train_val"),
    ("00000003_001.png", "Hernia|Infiltration", "3", "train_val"),
    ("00000004_000.png", "Mass|Nodule", "4", "test"),
    ("00000005_000.png", "No Finding", "5", "test"),
    ("00000005_001.png", "Atelectasis|Effusion|Infiltration", "5", "test"),
    ("00000006_000.png", "Pneumothorax", "6", "test"),
    ("00000007_000.png", "Consolidation|Edema|Pneumonia", "7", "test"),
    ("00000008_000.png", "Fibrosis|Pleural_Thickening|Effusion", "8", "test"),
    ("00000009_000.png", "No Finding", "9", "test"),
    ("00000010_000.png", "Atelectasis", "10", "test"),
]
# Hand-counted positives per label in the test split (8 images).
TEST_POSITIVES = {
    "Atelectasis": 2, "Cardiomegaly": 0, "Effusion": 2, "Infiltration": 1, "Mass": 1, "Nodule": 1,
    "Pneumonia": 1, "Pneumothorax": 1, "Consolidation": 1, "Edema": 1, "Emphysema": 0, "Fibrosis": 1,
    "Pleural_Thickening": 1, "Hernia": 0,
}


def make_nih(root: Path, rows=ROWS, size: int = 48, manifest: str = "Data_Entry_2017_v2020.csv",
             varied: bool = False) -> Path:
    """The NIH download unpacked: manifest (the real column names), split lists,
    images_00N/images/*.png; ``varied``: ages, sexes and views differ between patients."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    df = pd.DataFrame(
        {
            "Image Index": [r[0] for r in rows],
            "Finding Labels": [r[1] for r in rows],
            "Follow-up #": [int(r[0][9:12]) for r in rows],
            "Patient ID": [r[2] for r in rows],
            "Patient Age": [f"{20 + 7 * int(r[2]) % 70:03d}Y" if varied else 50 for r in rows],
            "Patient Gender": [("M", "F")[int(r[2]) % 2] if varied else "M" for r in rows],
            "View Position": [("PA", "AP")[i % 3 == 0] if varied else "PA" for i, r in enumerate(rows)],
            "OriginalImage[Width": 1024,
            "Height]": 1024,
            "OriginalImagePixelSpacing[x": 0.143,
            "y]": 0.143,
        }
    )
    df.to_csv(root / manifest, index=False)
    for split, fname in (("test", "test_list.txt"), ("train_val", "train_val_list.txt")):
        (root / fname).write_text("".join(f"{r[0]}\n" for r in rows if r[3] == split))
    for i, r in enumerate(rows):
        d = root / f"images_{1 + i % 2:03d}" / "images"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8)).save(d / r[0])
    return root


@pytest.fixture
def nih(tmp_path) -> Path:
    return make_nih(tmp_path / "nih")


def test_labels_splits_and_ids_match_hand_counts(nih):
    t = read_chestxray14(nih)
    assert t.task == "multilabel" and t.classes == list(LABELS) and len(LABELS) == 14
    assert LABELS[:3] == ("Atelectasis", "Cardiomegaly", "Effusion") and LABELS[-1] == "Hernia"  # CheXNet order
    from medray.data.synthetic import CHESTXRAY14_CLASSES

    assert list(LABELS) == CHESTXRAY14_CLASSES  # the 14-label demo's outputs are these
    test = t.split("test")
    assert len(test) == 8 and len(t.split("train_val")) == 6
    y = t.targets(test)
    assert dict(zip(LABELS, y.sum(axis=0).tolist())) == TEST_POSITIVES
    by_id = dict(zip(test["sample_id"], map(tuple, y)))
    assert sum(by_id["00000009_000.png"]) == 0  # No Finding
    assert [LABELS[j] for j in np.flatnonzero(by_id["00000005_001.png"])] == ["Atelectasis", "Effusion", "Infiltration"]
    assert t.samples.set_index("sample_id").loc["00000004_000.png", "path"] == str(nih / "images_001/images/00000004_000.png")
    assert t.samples.set_index("sample_id").loc["00000002_000.png", "path"].startswith(str(nih / "images_002"))


def test_parse_findings_rules():
    assert parse_findings("Effusion|Mass", "x") == {"Effusion", "Mass"}
    assert parse_findings("No Finding", "x") == set()
    with pytest.raises(ConfigError, match=r"image x has findings \['Covid'\] that are not ChestX-ray14 labels"):
        parse_findings("Effusion|Covid", "x")
    with pytest.raises(ConfigError, match=r"'No Finding' together with \['Mass'\]"):
        parse_findings("No Finding|Mass", "x")


def test_label_subset_and_order(nih):
    t = read_chestxray14(nih, labels=["Effusion", "Atelectasis"])
    assert t.classes == ["Effusion", "Atelectasis"]
    assert t.targets(t.split("test")).sum(axis=0).tolist() == [2, 2]
    with pytest.raises(ConfigError, match=r"\['Covid'\] are not ChestX-ray14 labels"):
        read_chestxray14(nih, labels=["Covid"])


def test_older_manifest_and_several_manifests(tmp_path, caplog):
    old = make_nih(tmp_path / "old", manifest="Data_Entry_2017.csv")
    assert len(read_chestxray14(old).samples) == 14
    (old / "Data_Entry_2017_v2020.csv").write_text((old / "Data_Entry_2017.csv").read_text())
    read_chestxray14(old)
    assert "using Data_Entry_2017_v2020.csv" in caplog.text


def test_layout_errors_name_what_is_wrong(tmp_path):
    with pytest.raises(ConfigError, match=r"no Data_Entry_2017\*\.csv"):
        read_chestxray14(tmp_path)
    root = make_nih(tmp_path / "a")
    (root / "train_val_list.txt").unlink()
    with pytest.raises(ConfigError, match=r"train_val_list.txt is missing"):
        read_chestxray14(root)
    root = make_nih(tmp_path / "b")
    (root / "train_val_list.txt").write_text((root / "train_val_list.txt").read_text() + "00000004_000.png\n")
    with pytest.raises(ConfigError, match=r"image 00000004_000.png is in both test_list.txt and train_val_list.txt"):
        read_chestxray14(root)
    root = make_nih(tmp_path / "c")
    (root / "test_list.txt").write_text((root / "test_list.txt").read_text() + "99999999_000.png\n")
    with pytest.raises(ConfigError, match=r"1 images of the split lists are not in Data_Entry_2017_v2020.csv"):
        read_chestxray14(root)


def test_missing_images(nih):
    (nih / "images_001/images/00000004_000.png").unlink()  # test
    (nih / "images_001/images/00000001_000.png").unlink()  # train_val
    with pytest.raises(ConfigError, match=r"data.split=test: 1 of its images are not under .*00000004_000.png"):
        read_chestxray14(nih, evaluated_split="test")
    (nih / "images_001/images/00000004_000.png").write_bytes(b"")  # present (bad file: decode error later)
    t = read_chestxray14(nih, evaluated_split="test")
    assert len(t.split("train_val")) == 5 and "{'train_val': 1}" in t.notes[-1]


def test_calibration_default_and_patient_overlap(nih):
    t = read_chestxray14(nih)
    assert resolve_calibration_split(t, None, "test") == "train_val"
    check_patient_overlap(t, "test", "train_val")  # the official split is patient-wise
    rows = ROWS + [("00000005_002.png", "Mass", "5", "train_val"), ("00000006_001.png", "No Finding", "6", "train_val")]
    leaky = read_chestxray14(make_nih(nih.parent / "leaky", rows))
    with pytest.raises(ConfigError) as e:
        check_patient_overlap(leaky, "test", "train_val")
    msg = str(e.value)
    assert "2 of 7 patients of the evaluated split 'test' also have images in the calibration split 'train_val' (5 patients)" in msg
    assert "3 evaluated images are affected" in msg and "00000005_000.png" in msg


def test_config_rules(tmp_path):
    with pytest.raises(ConfigError, match=r"data.check_patient_overlap=True: data=imagefolder has no patient IDs"):
        DataConfig(name="imagefolder", root=str(tmp_path), check_patient_overlap=True)
    with pytest.raises(ConfigError, match=r"data.classes=\['A'\]: data=synthetic has fixed classes"):
        DataConfig(name="synthetic", classes=["A"])
    with pytest.raises(ConfigError, match=r"data.root=None: data=chestxray14"):
        DataConfig(name="chestxray14")


def test_prepare_runs_the_patient_check_before_ray(tmp_path, tiny_checkpoint):
    from medray.pipeline.prepare import prepare

    rows = ROWS + [("00000005_002.png", "Mass", "5", "train_val")]
    root = make_nih(tmp_path / "leaky", rows)
    cfg = EvalConfig(
        backend=OnnxRuntimeConfig(),
        data=DataConfig(name="chestxray14", root=str(root), check_patient_overlap=True),
        model=ModelConfig(name="t", arch=TINY_ARCH, checkpoint=str(tiny_checkpoint), input_size=TINY_SIZE),
        cache_dir=str(tmp_path / "cache"),
        output_dir=str(tmp_path / "out"),
    )
    with pytest.raises(ConfigError, match=r"1 of 7 patients of the evaluated split 'test'"):
        prepare(cfg)


def test_demo_for_chestxray14_is_the_14_label_demo(tmp_path, nih, monkeypatch):
    import medray.data.load as sources
    from medray.models.resolve import DEMO_DATA, demo_source

    seen = []
    monkeypatch.setattr(sources, "load_table", lambda data, root: seen.append((data.name, data.n_train)) or "T")
    cfg = EvalConfig(backend=OnnxRuntimeConfig(), data=DataConfig(name="chestxray14", root=str(nih)), cache_dir=str(tmp_path))
    assert demo_source(cfg, read_chestxray14(nih)) == "T"
    assert seen == [("synthetic_multilabel", DEMO_DATA["multilabel"]["n_train"])]
    with pytest.raises(ConfigError, match=r"dataset chestxray14 is multilabel with 2 classes"):
        demo_source(cfg, read_chestxray14(nih, labels=["Mass", "Nodule"]))


def test_load_table_dispatch(nih):
    t = load_table(DataConfig(name="chestxray14", root=str(nih)), str(nih))
    assert t.name == "chestxray14" and len(t.samples) == 14


# --------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def tiny_multilabel_checkpoint(tmp_path_factory) -> Path:
    import torch

    from medray.models.factory import build_model, save_checkpoint

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt14") / "tiny14.pt"
    meta = {"arch": TINY_ARCH, "classes": list(LABELS), "task": "multilabel", "input_size": TINY_SIZE}
    return save_checkpoint(build_model(TINY_ARCH, 14, 3), path, meta)


@pytest.mark.slow
def test_evaluate_on_an_nih_folder_with_tencrop_writes_the_output_contract(ray_local, tmp_path, tiny_multilabel_checkpoint):
    """`python jobs/evaluate.py data=chestxray14 data.root=<dir> tta=tencrop` (composed as the CLI does)."""
    import pyarrow.parquet as pq
    from hydra import compose, initialize_config_dir

    from medray.cli import register_configs
    from medray.config import to_config
    from medray.pipeline.evaluate import run

    root = make_nih(tmp_path / "nih")
    register_configs()
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        cfg = compose("evaluate", overrides=[
            "data=chestxray14", f"data.root={root}", "data.check_patient_overlap=true", "tta=tencrop",
            "baseline=null", "model.name=tiny14", f"model.arch={TINY_ARCH}",
            f"model.checkpoint={tiny_multilabel_checkpoint}", f"model.input_size={TINY_SIZE}",
            "batch_size=4", f"output_dir={tmp_path}/out", f"cache_dir={tmp_path}/cache", "warmup_batches=1",
        ])
    run(to_config(cfg))
    out = tmp_path / "out"
    m = json.loads((out / "metrics.json").read_text())
    assert m["dataset"]["task"] == "multilabel" and m["dataset"]["classes"] == list(LABELS)
    (run_,) = m["runs"]
    assert run_["n_samples"] == 8 and run_["tta"] == "tencrop"
    # AUC over the labels with both outcomes in the 8 test images; the rest listed as skipped
    both = sorted(k for k, v in TEST_POSITIVES.items() if 0 < v < 8)
    assert sorted(k for k, v in run_["metrics"]["auc_per_class"].items() if v is not None) == both
    assert sorted(run_["metrics"]["auc_skipped"]) == sorted(set(LABELS) - set(both))
    report = (out / "report.md").read_text()
    assert "Test-time augmentation: tencrop" in report
    assert all(f"| {c} |" in report for c in LABELS)  # the 14-row per-label table
    pred = pq.read_table(out / "predictions" / "onnxruntime-fp32.parquet").to_pandas()
    assert set(pred["sample_id"]) == {r[0] for r in ROWS if r[3] == "test"}
    assert np.stack(pred["probs"].to_numpy()).shape == (8, 14)


def nih_rows(n_patients: int = 24, per: int = 3, seed: int = 0) -> list[tuple[str, str, str, str]]:
    """Several images per patient, split by patient (half train_val, half test)."""
    rng = np.random.default_rng(seed)
    rows = []
    for pid in range(1, n_patients + 1):
        for k in range(per):
            found = [lab for lab in ("Effusion", "Mass", "Atelectasis") if rng.random() < 0.4]
            rows.append((f"{pid:08d}_{k:03d}.png", "|".join(found) or "No Finding", str(pid),
                         "train_val" if pid <= n_patients // 2 else "test"))
    return rows


@pytest.mark.slow
def test_chestxray14_report_has_subgroups_threshold_transfer_calibration_and_plots(ray_local, tmp_path,
                                                                                   tiny_multilabel_checkpoint):
    """The reviewer's sections on the NIH layout: subgroups from the manifest's columns,
    a threshold chosen on train_val (Youden) applied to both runs, calibration, PNGs."""
    from hydra import compose, initialize_config_dir

    from medray.cli import register_configs
    from medray.config import to_config
    from medray.pipeline.evaluate import run

    rows = nih_rows()
    root = make_nih(tmp_path / "nih", rows=rows, varied=True)
    register_configs()
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        cfg = compose("evaluate", overrides=[
            "data=chestxray14", f"data.root={root}", "model.name=tiny14", f"model.arch={TINY_ARCH}",
            f"model.checkpoint={tiny_multilabel_checkpoint}", f"model.input_size={TINY_SIZE}",
            "threshold.method=youden", "report.min_subgroup_size=2", "batch_size=4",
            f"output_dir={tmp_path}/out", f"cache_dir={tmp_path}/cache", "warmup_batches=1",
        ])
    doc = run(to_config(cfg))
    out = tmp_path / "out"
    m = json.loads((out / "metrics.json").read_text())
    assert m == json.loads(json.dumps(doc, default=str))
    thr = m["threshold"]
    assert thr["method"] == "youden" and thr["chosen_on"]["split"] == "train_val" and thr["chosen_on"]["n"] == 36
    base, cand = m["runs"]
    assert set(base["subgroups"]) == {"Patient Gender", "Age band", "View Position"}
    sexes = {g["group"]: g["n"] for g in cand["subgroups"]["Patient Gender"]}
    assert sexes == {"F": 18, "M": 18}
    assert all("delta_auc" in g for gs in cand["subgroups"].values() for g in gs)
    for r in (base, cand):
        assert set(r["threshold"]) == set(LABELS) and 0 <= r["calibration"]["ece"] <= 1
    assert cand["flips"]["n_samples"] == 36 and "delta" in cand["calibration"]
    report = (out / "report.md").read_text()
    for section in ("## Threshold transfer", "## Calibration", "## Subgroups", "| Patient Gender | F | 18 |", "## Plots"):
        assert section in report, section
    for name, f in m["plots"].items():
        assert (out / f).is_file() and f"![{name}]({f})" in report

