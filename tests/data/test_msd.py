"""MSD task folders: layout parsing, NIfTI reading with spacing, preprocessing, bad files."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medray.config import ConfigError
from medray.data.config import DataConfig, VolumeConfig
from medray.data.msd import (
    VolumeError,
    check_headers,
    load_case,
    load_msd_table,
    read_msd,
    resolve_preprocessing,
)
from medray.data.phantoms import ensure_phantoms

WINDOW = resolve_preprocessing(VolumeConfig(), ["CT"])  # -175..250 HU → 0..1, RAS


def save(path: Path, arr: np.ndarray, spacing=(1.5, 1.5, 2.0), affine=None) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(arr, np.diag([*spacing, 1.0]) if affine is None else affine), path)
    return str(path)


def volume(seed: int, shape=(10, 12, 8)) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    img = rng.integers(-400, 400, size=shape).astype(np.int16)
    lab = np.zeros(shape, np.uint8)
    lab[2:6, 3:8, 1:5] = 1
    lab[3:5, 4:6, 2:4] = 2
    return img, lab


def write_msd(root: Path, modality="CT") -> Path:
    """2 training cases (dict entries), 3 test cases (bare paths; 2 with labelsTs)."""
    training = []
    for i in range(2):
        img, lab = volume(i)
        save(root / "imagesTr" / f"case_{i}.nii.gz", img)
        save(root / "labelsTr" / f"case_{i}.nii.gz", lab)
        training.append({"image": f"./imagesTr/case_{i}.nii.gz", "label": f"./labelsTr/case_{i}.nii.gz"})
    test = []
    for i in range(3):
        img, lab = volume(10 + i)
        save(root / "imagesTs" / f"t_{i}.nii.gz", img)
        if i < 2:
            save(root / "labelsTs" / f"t_{i}.nii.gz", lab)
        test.append(f"./imagesTs/t_{i}.nii.gz")
    meta = {"name": "Toy", "modality": {"0": modality}, "labels": {"0": "background", "1": "liver", "2": "tumour"},
            "numTraining": 2, "numTest": 3, "training": training, "test": test}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def test_layout_is_parsed_as_published(tmp_path):
    t = read_msd(write_msd(tmp_path / "Task00_Toy"))
    assert t.name == "Toy" and t.task == "segmentation"
    assert t.classes == ["background", "liver", "tumour"]
    assert t.samples["split"].value_counts().to_dict() == {"train": 2, "test": 3}
    test = t.split("test").set_index("sample_id")
    assert list(test.index) == ["t_0", "t_1", "t_2"]
    # MSD lists test images only; labelsTs/<same name> is found where it exists
    assert test.loc["t_0", "label_path"].endswith("labelsTs/t_0.nii.gz")
    assert test.loc["t_2", "label_path"] == ""
    assert (t.split("train")["label_path"].str.endswith(".nii.gz")).all()
    assert (t.samples["problem"] == "").all()


def test_window_orientation_and_labels_are_exact(tmp_path):
    img, lab = volume(0)
    # x axis stored flipped (L→R instead of R→L in RAS terms): reorienting to RAS flips it back
    affine = np.diag([-1.5, 1.5, 2.0, 1.0])
    ip = save(tmp_path / "i.nii.gz", img, affine=affine)
    lp = save(tmp_path / "l.nii.gz", lab, affine=affine)
    c = load_case(ip, lp, WINDOW, 3)
    expected = np.clip((img.astype(np.float64) + 175) / 425, 0, 1)[::-1]
    assert c["image"].shape == (1, 10, 12, 8) and c["image"].dtype == np.float32
    np.testing.assert_allclose(c["image"][0], expected, atol=1e-6)
    np.testing.assert_array_equal(c["label"], lab[::-1])
    assert c["orig_shape"] == [10, 12, 8] and c["orig_spacing"] == pytest.approx([1.5, 1.5, 2.0])
    # orientation=null keeps the stored axes
    keep = resolve_preprocessing(VolumeConfig(orientation=None), ["CT"])
    np.testing.assert_array_equal(load_case(ip, lp, keep, 3)["label"], lab)


def test_zscore_for_mr_and_resampling_to_spacing(tmp_path):
    root = write_msd(tmp_path / "mr", modality="MRI")
    t = read_msd(root)
    prep = resolve_preprocessing(VolumeConfig(), ["MRI"])
    assert prep.intensity == "zscore"
    row = t.split("train").iloc[0]
    x = load_case(row["path"], row["label_path"], prep, 3)["image"][0]
    nz = x[volume(0)[0] != 0]
    assert abs(nz.mean()) < 1e-5 and abs(nz.std() - 1) < 1e-4
    # 1.5/1.5/2.0 mm → 3/3/4 mm halves every axis (±1 voxel at the border); the label
    # is resampled with the image and stays a label map
    coarse = resolve_preprocessing(VolumeConfig(spacing=[3.0, 3.0, 4.0]), ["CT"])
    c = load_case(row["path"], row["label_path"], coarse, 3)
    assert c["image"].shape[1:] == c["label"].shape
    assert all(abs(n - h) <= 1 for n, h in zip(c["label"].shape, (5, 6, 4))), c["label"].shape
    assert c["spacing"] == pytest.approx([3.0, 3.0, 4.0])
    assert set(np.unique(c["label"])) <= {0, 1, 2} and (c["label"] > 0).any()


def test_shape_mismatch_names_both_files(tmp_path):
    root = write_msd(tmp_path / "bad")
    save(root / "labelsTs" / "t_1.nii.gz", np.zeros((10, 12, 9), np.uint8))
    t = read_msd(root)
    test = t.split("test")
    with pytest.raises(VolumeError) as e:
        check_headers(test, "fail")
    assert "labelsTs/t_1.nii.gz: label shape [10, 12, 9] does not match the shape [10, 12, 8]" in str(e.value)
    assert "imagesTs/t_1.nii.gz" in str(e.value) and "data.on_error=skip" in str(e.value)
    screened = check_headers(test, "skip")
    assert (screened["problem"] != "").tolist() == [False, True, False]
    row = test.iloc[1]
    with pytest.raises(VolumeError, match="does not match the shape"):
        load_case(row["path"], row["label_path"], WINDOW, 3)


def test_unreadable_and_truncated_files_are_named(tmp_path):
    root = write_msd(tmp_path / "broken")
    junk = root / "imagesTs" / "t_0.nii.gz"
    junk.write_bytes(b"this is not a NIfTI file")
    t = read_msd(root)
    with pytest.raises(VolumeError, match=r"imagesTs/t_0\.nii\.gz: cannot be read as a NIfTI volume"):
        check_headers(t.split("test"), "fail")
    # header fine, voxel data cut short: found when the case is read
    full = gzip.decompress((root / "imagesTs" / "t_1.nii.gz").read_bytes())
    (root / "imagesTs" / "t_1.nii.gz").write_bytes(gzip.compress(full[: len(full) // 2]))
    row = t.split("test").iloc[1]
    with pytest.raises(VolumeError, match=r"imagesTs/t_1\.nii\.gz: cannot be read as a NIfTI volume"):
        load_case(row["path"], row["label_path"], WINDOW, 3)


def test_label_values_outside_the_label_list(tmp_path):
    img, lab = volume(0)
    lab[0, 0, 0] = 5
    ip, lp = save(tmp_path / "i.nii.gz", img), save(tmp_path / "l.nii.gz", lab)
    with pytest.raises(VolumeError, match=r"l\.nii\.gz: label values \[0, 1, 2, 5\] outside 0\.\.2"):
        load_case(ip, lp, WINDOW, 3)


def test_missing_files_and_bad_dataset_json(tmp_path):
    root = write_msd(tmp_path / "m")
    (root / "imagesTs" / "t_2.nii.gz").unlink()
    t = read_msd(root)
    assert t.split("test")["problem"].iat[2].startswith("image file not found")
    with pytest.raises(VolumeError, match="image file not found"):
        check_headers(t.split("test"), "fail")
    with pytest.raises(ConfigError, match="no dataset.json"):
        read_msd(tmp_path)
    meta = json.loads((root / "dataset.json").read_text())
    meta["labels"] = {"0": "background", "2": "tumour"}
    (root / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match="must map 0..K-1"):
        read_msd(root)


def test_nibabel_real_nifti_file(tmp_path):
    """nibabel ships real scanner volumes: read anatomical.nii in an MSD layout."""
    from nibabel.testing import data_path

    root = tmp_path / "real"
    (root / "imagesTs").mkdir(parents=True)
    shutil.copy(Path(data_path) / "anatomical.nii", root / "imagesTs" / "anatomical.nii")
    (root / "dataset.json").write_text(json.dumps(
        {"name": "nibabel", "modality": {"0": "T1"}, "labels": {"0": "background", "1": "brain"}, "test": ["./imagesTs/anatomical.nii"]}
    ))
    t = read_msd(root)
    assert t.samples["sample_id"].tolist() == ["anatomical"] and t.samples["label_path"].tolist() == [""]
    assert check_headers(t.samples)["problem"].tolist() == [""]
    c = load_case(t.samples["path"].iat[0], None, resolve_preprocessing(VolumeConfig(orientation=None), ["T1"]), 2)
    raw = nib.load(root / "imagesTs" / "anatomical.nii").get_fdata()
    assert c["image"].shape == (1, *raw.shape) == (1, 33, 41, 25)
    assert c["orig_spacing"] == pytest.approx([2.0, 2.0, 2.0]) and c["label"] is None
    x = c["image"][0][raw != 0]
    assert abs(x.mean()) < 1e-4 and abs(x.std() - 1) < 1e-3  # z-scored over the non-zero voxels


def test_phantoms_are_deterministic_and_msd_shaped(tmp_path):
    a = ensure_phantoms(tmp_path / "a", 2, 1, 2, size=24, seed=3)
    b = ensure_phantoms(tmp_path / "b", 2, 1, 2, size=24, seed=3)
    t = read_msd(a)
    assert t.classes == ["background", "organ", "lesion"]
    assert t.samples["split"].value_counts().to_dict() == {"train": 2, "test": 2, "calibration": 1}
    assert (t.samples["label_path"] != "").all()  # test labels come from labelsTs
    for rel in ("imagesTs/phantom_test_001.nii.gz", "labelsTr/phantom_000.nii.gz"):
        np.testing.assert_array_equal(np.asarray(nib.load(a / rel).dataobj), np.asarray(nib.load(b / rel).dataobj))
    lab = np.asarray(nib.load(a / "labelsTr/phantom_000.nii.gz").dataobj)
    assert lab.shape[:2] == (24, 24) and (lab == 1).sum() > 50
    assert nib.load(a / "imagesTr/phantom_000.nii.gz").header.get_zooms() == pytest.approx((1.5, 1.5, 2.0))
    assert ensure_phantoms(a, 2, 1, 2, size=24, seed=3) == a  # cached
    with pytest.raises(ValueError, match="not the phantom set asked for"):
        ensure_phantoms(a, 3, 1, 2, size=24, seed=3)


def test_data_msd_without_root_uses_the_cache(tmp_path):
    data = DataConfig(name="msd", n_train=1, n_calibration=1, n_test=1, image_size=16)
    t = load_msd_table(data, str(tmp_path / "data" / "msd"))
    assert Path(t.root).parent == tmp_path / "data" / "msd" and len(t.samples) == 3
    with pytest.raises(ConfigError, match="not a directory"):
        load_msd_table(DataConfig(name="msd", root=str(tmp_path / "nope")), str(tmp_path / "nope"))
