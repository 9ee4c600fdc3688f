"""data=datalist: MONAI datalist JSON files read as load_decathlon_datalist reads them."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medray.data.config import DataConfig
from medray.data.load import calibration_samples, load_table, select_samples
from medray.errors import ConfigError


def save(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.int16), np.eye(4)), path)


@pytest.fixture
def folder(tmp_path) -> Path:
    for name in ("a", "b", "c"):
        save(tmp_path / "images" / f"{name}.nii.gz")
        save(tmp_path / "labels" / f"{name}.nii.gz")
    save(tmp_path / "other" / "a.nii.gz")  # the same file name in another folder
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "datalist.json").write_text(json.dumps({
        "description": "not a list: ignored",
        "training": [{"image": "images/a.nii.gz", "label": "labels/a.nii.gz"},
                     {"image": "other/a.nii.gz", "label": "labels/a.nii.gz"}],
        "validation": [{"image": "images/b.nii.gz", "label": "labels/b.nii.gz"},
                       {"image": "images/c.nii.gz", "label": "labels/missing.nii.gz"},
                       {"image": "images/a.nii.gz", "label": "labels/a.nii.gz"}],
        "test": ["images/c.nii.gz"],
    }))
    return tmp_path


def test_every_list_is_a_split_with_paths_under_the_base_folder(folder):
    data = DataConfig(name="datalist", root=str(folder), datalist="lists/datalist.json", split="validation",
                      classes=["background", "organ"])
    table = load_table(data, data.root)
    df = table.samples
    assert table.task == "segmentation" and table.classes == ["background", "organ"]
    assert sorted(df["split"].unique()) == ["test", "training", "validation"]
    val = select_samples(table, "validation", None, 0)
    assert list(val["sample_id"]) == ["b", "c", "images__a"]
    b = val.set_index("sample_id").loc["b"]
    assert b["path"] == str(folder / "images" / "b.nii.gz") and b["label_path"] == str(folder / "labels" / "b.nii.gz")
    assert val.set_index("sample_id").loc["c", "problem"].startswith("label file not found")
    test = table.split("test")
    assert list(test["label_path"]) == [""] and list(test["sample_id"]) == ["c"]
    # The same image in training and validation is the same sample: calibrating on it is refused.
    with pytest.raises(ConfigError, match="shares 1 samples"):
        calibration_samples(table, None, 10, 0, val)


def test_classes_null_are_left_to_the_model_and_errors_name_the_key(folder, tmp_path):
    table = load_table(DataConfig(name="datalist", root=str(folder), datalist=str(folder / "lists" / "datalist.json")),
                       str(folder))
    assert table.classes == [] and any("the model's" in n for n in table.notes)
    with pytest.raises(ConfigError, match="data.datalist=None"):
        load_table(DataConfig(name="datalist", root=str(folder)), str(folder))
    with pytest.raises(ConfigError, match="data.datalist=nope.json: file not found"):
        load_table(DataConfig(name="datalist", root=str(folder), datalist="nope.json"), str(folder))
    with pytest.raises(ConfigError, match="data.datalist"):
        DataConfig(name="msd", datalist="x.json")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"validation": [{"label": "x"}]}))
    with pytest.raises(ConfigError, match="neither a path nor"):
        load_table(DataConfig(name="datalist", root=str(folder), datalist=str(bad)), str(folder))
