"""data=imagefolder: the Kermany layout, decoding of every image kind, classes, demo choice."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import REPO, TINY_ARCH, TINY_SIZE
from PIL import Image

from medray.backends.onnxruntime.config import OnnxRuntimeConfig
from medray.config import ConfigError, EvalConfig
from medray.data.config import DataConfig
from medray.data.imagefolder import read_imagefolder
from medray.data.load import calibration_samples, load_table, resolve_calibration_split, select_samples
from medray.data.preprocess import decode_gray
from medray.errors import DecodeError
from medray.models.config import ModelConfig

# Hand-counted layout: split -> class -> number of images.
COUNTS = {"train": {"NORMAL": 4, "PNEUMONIA": 6}, "test": {"NORMAL": 3, "PNEUMONIA": 5}, "val": {"NORMAL": 2, "PNEUMONIA": 2}}


def write_image(path: Path, rng: np.random.Generator, kind: int) -> None:
    """Rotate through the kinds the issue names: JPEG L/RGB, PNG 8-bit L/RGB, PNG 16-bit."""
    h, w = 40 + 3 * kind, 50
    a = rng.integers(0, 256, (h, w), dtype=np.uint8)
    if kind % 5 == 0:
        Image.fromarray(a).save(path.with_suffix(".jpeg"), quality=92)
    elif kind % 5 == 1:
        Image.fromarray(a).convert("RGB").save(path.with_suffix(".jpeg"), quality=92)
    elif kind % 5 == 2:
        Image.fromarray(a).save(path.with_suffix(".png"))
    elif kind % 5 == 3:
        Image.fromarray(np.stack([a, a, a], -1)).save(path.with_suffix(".png"))
    else:
        Image.fromarray(a.astype(np.uint16) * 200).save(path.with_suffix(".png"))  # 16-bit


def make_kermany(root: Path, counts=COUNTS, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    k = 0
    for split, per_class in counts.items():
        for cls, n in per_class.items():
            d = root / split / cls
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                write_image(d / f"{cls.lower()}_{i:03d}", rng, k)
                k += 1
    return root


@pytest.fixture
def kermany(tmp_path) -> Path:
    root = make_kermany(tmp_path / "chest_xray")
    # What real downloads carry: macOS litter, a hidden file, a stray note, an empty folder.
    (root / "__MACOSX" / "test" / "NORMAL").mkdir(parents=True)
    (root / "__MACOSX" / "test" / "NORMAL" / "._x.jpeg").write_bytes(b"junk")
    (root / "test" / "NORMAL" / ".DS_Store").write_bytes(b"junk")
    (root / "test" / "PNEUMONIA" / "notes.txt").write_text("not an image")
    (root / "empty_split" / "NORMAL").mkdir(parents=True)
    return root


def test_layout_classes_splits_ids_and_targets(kermany):
    t = read_imagefolder(kermany)
    assert t.task == "multiclass" and t.classes == ["NORMAL", "PNEUMONIA"]
    assert sorted(t.samples["split"].unique()) == ["test", "train", "val"]
    for split, per_class in COUNTS.items():
        df = t.split(split)
        assert len(df) == sum(per_class.values())
        assert (df["target"] == 0).sum() == per_class["NORMAL"] and (df["target"] == 1).sum() == per_class["PNEUMONIA"]
    row = t.samples.set_index("sample_id").loc["test/PNEUMONIA/pneumonia_004.png"]
    assert row["target"] == 1 and row["split"] == "test" and row["path"] == str(kermany / "test/PNEUMONIA/pneumonia_004.png")
    assert t.samples["sample_id"].is_unique and len(t.samples) == 22
    # nothing silently dropped: the stray note and the empty split are reported
    assert "2 entries skipped" in t.notes[0] and "notes.txt" in t.notes[0]


def test_kaggle_nested_duplicate_is_reported_not_read(kermany):
    # The Kaggle zip holds chest_xray/{train,test,val} and a copy in chest_xray/chest_xray/.
    make_kermany(kermany / "chest_xray", {"test": {"NORMAL": 2, "PNEUMONIA": 1}})
    t = read_imagefolder(kermany)
    assert sorted(t.samples["split"].unique()) == ["test", "train", "val"] and len(t.samples) == 22
    assert "chest_xray/ (no <class>/<image> inside)" in t.notes[0]


def test_classes_fixed_by_config_reorder_targets_and_reject_unlisted(kermany):
    t = read_imagefolder(kermany, classes=["PNEUMONIA", "NORMAL"])
    assert t.classes == ["PNEUMONIA", "NORMAL"]
    assert (t.split("test")["target"] == 0).sum() == COUNTS["test"]["PNEUMONIA"]
    with pytest.raises(ConfigError, match=r"class folders \['PNEUMONIA'\] that are not listed"):
        read_imagefolder(kermany, classes=["NORMAL"])


def test_sorted_like_torchvision_imagefolder(kermany):
    from torchvision.datasets import ImageFolder

    (kermany / "test" / "BACTERIAL").mkdir()
    write_image(kermany / "test" / "BACTERIAL" / "b0", np.random.default_rng(1), 0)
    ours = read_imagefolder(kermany)
    tv = ImageFolder(str(kermany / "test"))
    assert ours.classes == tv.classes == ["BACTERIAL", "NORMAL", "PNEUMONIA"]
    ours_test = dict(zip(ours.split("test")["path"], ours.split("test")["target"]))
    assert {p: t for p, t in tv.samples} == ours_test


def test_config_needs_an_existing_root(tmp_path):
    with pytest.raises(ConfigError, match=r"data.root=None: data=imagefolder reads your copy"):
        DataConfig(name="imagefolder")
    with pytest.raises(ConfigError, match=r"not a directory"):
        DataConfig(name="imagefolder", root=str(tmp_path / "nope"))
    with pytest.raises(ConfigError, match=r"data.classes=\['A', 'A'\].*duplicates: A"):
        DataConfig(name="imagefolder", root=str(tmp_path), classes=["A", "A"])
    with pytest.raises(ConfigError, match=r"no <split>/<CLASS>/<image> folders found"):
        load_table(DataConfig(name="imagefolder", root=str(tmp_path)), str(tmp_path))


def test_calibration_split_defaults_to_another_split_folder(kermany):
    t = read_imagefolder(kermany)
    assert resolve_calibration_split(t, None, "test") == "train"
    assert resolve_calibration_split(t, None, "train") == "val"
    assert resolve_calibration_split(t, "val", "test") == "val"
    evaluated = select_samples(t, "test", None, 0)
    cal = calibration_samples(t, None, 5, 0, evaluated)
    assert len(cal) == 5 and set(cal["split"]) == {"train"}
    assert not set(cal["sample_id"]) & set(evaluated["sample_id"])
    with pytest.raises(ConfigError, match="shares 8 samples with the evaluated split"):
        calibration_samples(t, "test", 5, 0, evaluated)


# --------------------------------------------------------------------------- decoding


def test_every_image_kind_decodes_to_the_reference(kermany):
    """Each file equals PIL's own full decode → grey → bilinear resize (16-bit: min-max)."""
    t = read_imagefolder(kermany)
    kinds = set()
    for p in t.samples["path"]:
        with Image.open(p) as im:
            kinds.add((im.format, im.mode))
            im.load()
            if im.mode.startswith("I"):
                a = np.asarray(im, dtype=np.float64)
                ref = np.rint((a - a.min()) / (a.max() - a.min()) * 255).astype(np.uint8)
            else:
                ref = np.asarray(im.convert("L"))
        ref = np.asarray(Image.fromarray(ref).resize((24, 24), Image.BILINEAR))
        got = decode_gray(p, 24, draft=False)  # draft mode: tested on a large JPEG below
        assert got.dtype == np.uint8 and got.shape == (24, 24)
        np.testing.assert_array_equal(got, ref, err_msg=p)
        assert decode_gray(p, 24).shape == (24, 24)
    assert {("JPEG", "L"), ("JPEG", "RGB"), ("PNG", "L"), ("PNG", "RGB")} <= kinds
    assert any(m.startswith("I") for f, m in kinds if f == "PNG")  # a 16-bit PNG


def test_large_jpeg_is_decoded_at_reduced_scale_and_stays_close(tmp_path):
    # A smooth 2000 px radiograph-like image; draft decodes it at 1/8 scale for 224 px.
    y, x = np.mgrid[0:2000, 0:1800].astype(np.float32)
    a = (127 + 100 * np.sin(x / 150) * np.cos(y / 200)).astype(np.uint8)
    p = tmp_path / "big.jpeg"
    Image.fromarray(a).convert("RGB").save(p, quality=90)
    with Image.open(p) as im:
        im.draft("L", (224, 224))
        assert im.size == (225, 250) and im.mode == "L"  # libjpeg's 1/8 scale
    fast, full = decode_gray(str(p), 224), decode_gray(str(p), 224, draft=False)
    assert fast.shape == full.shape == (224, 224)
    assert np.abs(fast.astype(int) - full.astype(int)).mean() < 2.0


@pytest.mark.parametrize("case", ["truncated_jpeg", "empty", "text_as_png", "truncated_png"])
def test_bad_files_raise_decode_error_naming_the_file(tmp_path, case):
    src = tmp_path / "src.jpeg"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 300), dtype=np.uint8)).save(src, quality=90)
    png = tmp_path / "src.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 300), dtype=np.uint8)).save(png)
    bad = {
        "truncated_jpeg": ("bad.jpeg", src.read_bytes()[: len(src.read_bytes()) // 2], "corrupt or truncated image"),
        "empty": ("empty.jpeg", b"", "empty file (0 bytes)"),
        "text_as_png": ("text.png", b"hello, not an image\n" * 10, "not a JPEG, PNG or DICOM image"),
        "truncated_png": ("bad.png", png.read_bytes()[: len(png.read_bytes()) // 2], "corrupt or truncated image"),
    }[case]
    p = tmp_path / bad[0]
    p.write_bytes(bad[1])
    with pytest.raises(DecodeError) as e:
        decode_gray(str(p), 64)
    assert str(e.value).startswith(f"{p}: ") and bad[2] in str(e.value)


def test_dicom_files_in_the_folder_are_read(kermany):
    import pydicom

    src = Path(pydicom.data.__file__).parent / "test_files" / "CT_small.dcm"
    shutil.copy(src, kermany / "test" / "NORMAL" / "ct.dcm")
    t = read_imagefolder(kermany)
    row = t.samples.set_index("sample_id").loc["test/NORMAL/ct.dcm"]
    assert row["target"] == 0
    assert decode_gray(row["path"], 32).shape == (32, 32)


# --------------------------------------------------------------------------- models


def _cfg(tmp_path, root, **model) -> EvalConfig:
    return EvalConfig(
        backend=OnnxRuntimeConfig(),
        data=DataConfig(name="imagefolder", root=str(root)),
        model=ModelConfig(**model),
        cache_dir=str(tmp_path / "cache"),
        output_dir=str(tmp_path / "out"),
    )


def _fake_demo_source(tmp_path, classes, name="synthetic", task="multiclass"):
    from medray.data.table import SampleTable

    root = tmp_path / "cache" / "data" / name
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset.json").write_text(json.dumps({"generator": {"n_train": 2000, "seed": 0}}))
    import pandas as pd

    return SampleTable(name, task, classes, str(root), pd.DataFrame(columns=["sample_id", "path", "split", "target"]))


def test_demo_for_a_two_class_folder_is_the_binary_demo_mapped_by_index(tmp_path, kermany, monkeypatch, caplog):
    import medray.data.load as sources
    from medray.models.factory import build_model, save_checkpoint
    from medray.models.resolve import DEMO_DATA, demo_checkpoint_path, resolve_model

    asked = []
    source = _fake_demo_source(tmp_path, ["NORMAL", "PNEUMONIA"])

    def fake_load_table(data, root):
        asked.append((data.name, data.n_train, root))
        return source

    monkeypatch.setattr(sources, "load_table", fake_load_table)
    (kermany / "test" / "NORMAL").rename(kermany / "test" / "healthy")  # names differ: index mapping
    shutil.rmtree(kermany / "train")
    shutil.rmtree(kermany / "val")
    cfg = _cfg(tmp_path, kermany, arch=TINY_ARCH, input_size=TINY_SIZE)
    table = read_imagefolder(kermany)
    path = demo_checkpoint_path(cfg, source)
    save_checkpoint(build_model(TINY_ARCH, 2, 3), path, {"classes": ["NORMAL", "PNEUMONIA"], "task": "multiclass", "input_size": TINY_SIZE})
    caplog.set_level(logging.INFO, logger="medray.models")
    spec = resolve_model(cfg, table)
    assert asked == [("synthetic", DEMO_DATA["binary"]["n_train"], str(tmp_path / "cache" / "data" / "synthetic"))]
    assert spec.checkpoint == str(path) and spec.num_classes == 2 and spec.task == "multiclass"
    assert "by index [0: NORMAL -> PNEUMONIA, 1: PNEUMONIA -> healthy]" in caplog.text


def test_demo_refuses_a_class_count_it_has_no_demo_for(tmp_path, kermany):
    from medray.models.resolve import resolve_model

    (kermany / "test" / "COVID").mkdir()
    write_image(kermany / "test" / "COVID" / "c0", np.random.default_rng(2), 0)
    cfg = _cfg(tmp_path, kermany)
    with pytest.raises(ConfigError, match=r"model=demo: the demo models are a two-class classifier.*3 classes"):
        resolve_model(cfg, read_imagefolder(kermany))


def test_demo_data_matches_the_synthetic_yaml():
    from medray.models.resolve import DEMO_DATA

    for kind, name in (("binary", "synthetic"), ("multilabel", "synthetic_multilabel")):
        y = yaml.safe_load((REPO / "conf" / "data" / f"{name}.yaml").read_text())
        assert {k: y[k] for k in DEMO_DATA[kind]} == DEMO_DATA[kind]


def test_user_checkpoint_is_checked_against_the_folder_classes(tmp_path, kermany):
    from medray.models.factory import build_model, save_checkpoint
    from medray.models.resolve import resolve_model

    wrong_names = save_checkpoint(build_model(TINY_ARCH, 2, 3), tmp_path / "a.pt", {"classes": ["benign", "malignant"]})
    three = save_checkpoint(build_model(TINY_ARCH, 3, 3), tmp_path / "b.pt", {})
    table = read_imagefolder(kermany)
    for ckpt, msg in (
        (wrong_names, r"a.pt \(the classes it was trained on\): no dataset class is among the model's outputs.*"
                      r"model outputs \['benign', 'malignant'\]; dataset classes \['NORMAL', 'PNEUMONIA'\]"),
        (three, r"its classifier has 3 outputs but dataset imagefolder has 2 classes"),
    ):
        cfg = _cfg(tmp_path, kermany, name="mine", arch=TINY_ARCH, checkpoint=str(ckpt), input_size=TINY_SIZE)
        with pytest.raises(ConfigError, match=msg):
            resolve_model(cfg, table)


# --------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_evaluate_on_a_kermany_folder_writes_the_output_contract(ray_local, tmp_path, tiny_checkpoint):
    """`python jobs/evaluate.py data=imagefolder data.root=<dir> data.split=test` (composed as the CLI does)."""
    import pyarrow.parquet as pq
    import pydicom
    from hydra import compose, initialize_config_dir

    from medray.cli import register_configs
    from medray.config import to_config
    from medray.pipeline.evaluate import run

    root = make_kermany(tmp_path / "kermany", {"train": {"NORMAL": 2, "PNEUMONIA": 2}, "test": {"NORMAL": 7, "PNEUMONIA": 9}})
    ds = pydicom.dcmread(Path(pydicom.data.__file__).parent / "test_files" / "CT_small.dcm")
    ds.PatientName, ds.PatientID = "SECRETPATIENT^X", "SECRETPATIENT-ID"
    ds.save_as(root / "test" / "PNEUMONIA" / "scan.dcm", enforce_file_format=True)
    register_configs()
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        cfg = compose("evaluate", overrides=[
            "data=imagefolder", f"data.root={root}", "data.split=test", "model.name=tiny",
            f"model.arch={TINY_ARCH}", f"model.checkpoint={tiny_checkpoint}", f"model.input_size={TINY_SIZE}",
            "batch_size=4", f"output_dir={tmp_path}/out", f"cache_dir={tmp_path}/cache", "warmup_batches=1",
        ])
    doc = run(to_config(cfg))
    out = tmp_path / "out"
    assert {p.name for p in out.iterdir()} >= {"config.yaml", "metrics.json", "report.md", "predictions"}
    m = json.loads((out / "metrics.json").read_text())
    assert m["dataset"]["name"] == "imagefolder" and m["dataset"]["classes"] == ["NORMAL", "PNEUMONIA"]
    assert m["dataset"]["n_samples"] == 17 and [r["n_samples"] for r in m["runs"]] == [17, 17]
    assert m["runs"][1]["agreement"]["top1"] == 1.0 and m == json.loads(json.dumps(doc, default=str))
    pred = pq.read_table(out / "predictions" / "onnxruntime-fp32.parquet").to_pandas()
    assert "test/PNEUMONIA/scan.dcm" in set(pred["sample_id"])
    normal = pred["sample_id"].str.startswith("test/NORMAL/")
    assert normal.sum() == 7 and (pred["target"][normal] == 0).all() and (pred["target"][~normal] == 1).all()
    for f in out.rglob("*"):
        if f.is_file():
            assert b"SECRETPATIENT" not in f.read_bytes(), f
