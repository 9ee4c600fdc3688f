"""data=nnunet: a dataset in nnU-Net's raw layout, as nnU-Net keeps it (``nnUNet_raw/DatasetXXX_Name``)::

    dataset.json   {"channel_names": {"0": "CT"}, "labels": {"background": 0, "organ": 1, ...},
                    "file_ending": ".nii.gz", "numTraining": N}
    imagesTr/<case>_0000.nii.gz (+ _0001... one file per channel)   labelsTr/<case>.nii.gz
    imagesTs/<case>_0000.nii.gz                                     labelsTs/<case>.nii.gz (optional)

``imagesTr``/``labelsTr`` → split ``train``, ``imagesTs``/``labelsTs`` → ``test``.  The class
names are dataset.json's labels (background first); a region-based dataset's labels (a
name mapping to several values, with ``regions_class_order``) are kept as the values each
name covers; ``ignore`` is the label left out of every metric.  Files are listed here and
read by the model's recipe (nnU-Net's own reader for an nnU-Net model: ``.nii.gz`` and the
other formats its readers take).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from medray.data.table import SampleTable
from medray.errors import ConfigError

if TYPE_CHECKING:
    from medray.data.config import DataConfig

SPLITS = {"train": ("imagesTr", "labelsTr"), "test": ("imagesTs", "labelsTs")}
HINT = "point data.root at an nnU-Net raw dataset folder (DatasetXXX_Name: dataset.json, imagesTr/, labelsTr/, imagesTs/)"


def read_dataset_json(root: Path) -> dict:
    """dataset.json with the keys nnU-Net needs (ConfigError naming the missing one)."""
    path = root / "dataset.json"
    if not path.is_file():
        raise ConfigError(f"data.root={root}: no dataset.json; {HINT}")
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"data.root={root}: {path} is not valid JSON ({e})") from None
    missing = [k for k in ("channel_names", "labels", "file_ending") if not isinstance(meta.get(k), (dict, str))]
    if missing:
        raise ConfigError(f"data.root={root}: {path} has no {', '.join(missing)} (nnU-Net v2's dataset.json: "
                          "channel_names, labels, file_ending); an MSD folder is data=msd")
    return meta


def labels(meta: dict, where: str) -> tuple[list[str], dict[str, list[int]], int | None]:
    """Class names (background first), the label values each covers, the ignore label."""
    raw = dict(meta["labels"])
    ignore = raw.pop("ignore", None)
    values = {str(k): [int(x) for x in v] if isinstance(v, (list, tuple)) else [int(v)] for k, v in raw.items()}
    regions = any(len(v) > 1 for v in values.values()) or "regions_class_order" in meta
    if values.get("background") != [0]:
        raise ConfigError(f"{where}: \"labels\" must map \"background\" to 0 (nnU-Net's convention), got {meta['labels']}")
    if not regions:
        if sorted(v[0] for v in values.values()) != list(range(len(values))):
            raise ConfigError(f"{where}: label values must be 0..K-1, got {sorted(v[0] for v in values.values())}")
        names = sorted(values, key=lambda k: values[k][0])
    else:
        names = list(values)
    if len(names) < 2:
        raise ConfigError(f"{where}: at least one foreground label is needed, got {meta['labels']}")
    return names, values, None if ignore is None else int(ignore)


def read_folder(data: DataConfig, root: str) -> SampleTable:
    """The dataset at ``data.root`` (see the module docstring); a case whose channel or label
    file is missing gets a ``problem`` (data.on_error decides)."""
    base = Path(root).expanduser().resolve()
    meta = read_dataset_json(base)
    where = str(base / "dataset.json")
    names, values, ignore = labels(meta, where)
    ending = str(meta["file_ending"])
    channel_names = [str(meta["channel_names"][k]) for k in sorted(meta["channel_names"], key=int)]
    rows = []
    for split, (images, labs) in SPLITS.items():
        folder = base / images
        if not folder.is_dir():
            continue
        first = sorted(p.name[: -len("_0000" + ending)] for p in folder.iterdir() if p.name.endswith("_0000" + ending))
        for case in first:
            files = [folder / f"{case}_{i:04d}{ending}" for i in range(len(channel_names))]
            label = base / labs / f"{case}{ending}"
            problem = next((f"channel {i} ({channel_names[i]}) missing: {f} not found" for i, f in enumerate(files)
                            if not f.is_file()), "")
            extra = folder / f"{case}_{len(channel_names):04d}{ending}"
            if not problem and extra.is_file():
                problem = f"{extra}: more channel files than dataset.json's {len(channel_names)} channel_names"
            if not problem and split == "train" and not label.is_file():
                problem = f"label file not found: {label}"
            rows.append((case, str(files[0]), "\n".join(map(str, files)), str(label) if label.is_file() else "", split,
                         problem))
    if not rows:
        raise ConfigError(f"data.root={base}: no <case>_0000{ending} in imagesTr/ or imagesTs/; {HINT}")
    df = pd.DataFrame(rows, columns=["sample_id", "path", "channels", "label_path", "split", "problem"])
    if df["sample_id"].duplicated().any():  # the same case in imagesTr and imagesTs: ids stay unique by split
        dup = df["sample_id"].duplicated(keep=False)
        df.loc[dup, "sample_id"] = [f"{s}__{sid}" for s, sid in zip(df.loc[dup, "split"], df.loc[dup, "sample_id"])]
    df["target"] = df["label_path"]
    notes = [f"channels: {', '.join(channel_names)}", f"file ending: {ending}"]
    if any(len(v) > 1 for v in values.values()):
        notes.append("region-based labels: " + ", ".join(f"{k}={v}" for k, v in values.items() if k != "background"))
    return SampleTable(str(meta.get("name") or base.name), "segmentation", names, str(base), df, notes,
                       channels=channel_names, values=values, ignore_label=ignore)
