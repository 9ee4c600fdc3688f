"""``data=chestxray14``: NIH ChestX-ray14 read as published.

Layout (the NIH download, unpacked into ``data.root``)::

    Data_Entry_2017_v2020.csv   (or Data_Entry_2017.csv) "Image Index", "Finding Labels", "Patient ID", ...
    test_list.txt               one Image Index per line -> split "test"
    train_val_list.txt          one Image Index per line -> split "train_val"
    images_001/images/*.png ... (any folder named images* at the root, searched recursively)

``Finding Labels`` holds ``|``-separated findings or ``No Finding``; the task is
multi-label over the 14 findings in the CheXNet order (``data.classes`` may choose and
order a subset).  ``sample_id`` is the Image Index (the file name).  Patient IDs are
kept in memory for the patient-overlap check and the patient-clustered bootstrap; they are
never written out.  Patient Gender, View Position and the Patient Age's band are the
dataset's subgroups.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from medray.data.table import SampleTable
from medray.errors import ConfigError

if TYPE_CHECKING:
    from medray.data.config import DataConfig

log = logging.getLogger("medray.data")

# The 14 findings in the CheXNet order (Rajpurkar et al.), = the model's output order.
LABELS = (
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
    "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia",
)
NO_FINDING = "No Finding"
SPLIT_LISTS = {"test": "test_list.txt", "train_val": "train_val_list.txt"}
COLUMNS = ("Image Index", "Finding Labels", "Patient ID")
# Manifest columns kept as subgroups when present (NIH names); ages become bands.
METADATA = ("Patient Gender", "Patient Age", "View Position")
AGE_BAND = "Age band"


def find_manifest(root: Path) -> Path:
    """The ``Data_Entry_2017*.csv`` of ``root`` (the newest name if several)."""
    found = sorted(root.glob("Data_Entry_2017*.csv"))
    if not found:
        raise ConfigError(
            f"data.root={root}: no Data_Entry_2017*.csv; point data.root at the unpacked NIH ChestX-ray14 "
            "folder (Data_Entry_2017_v2020.csv, test_list.txt, train_val_list.txt, images_*/)"
        )
    if len(found) > 1:
        # Data_Entry_2017_v2020.csv (relabelled) sorts after Data_Entry_2017.csv.
        log.warning("chestxray14: several manifests %s; using %s", [p.name for p in found], found[-1].name)
    return found[-1]


def parse_findings(text: str, image: str) -> set[str]:
    """``"Effusion|Mass"`` → ``{"Effusion", "Mass"}``; ``"No Finding"`` → ``set()``."""
    names = {t.strip() for t in str(text).split("|") if t.strip()}
    if not names:
        raise ConfigError(f"chestxray14: image {image} has an empty 'Finding Labels'")
    if NO_FINDING in names:
        if len(names) > 1:
            raise ConfigError(f"chestxray14: image {image} has 'No Finding' together with {sorted(names - {NO_FINDING})}")
        return set()
    unknown = names - set(LABELS)
    if unknown:
        raise ConfigError(
            f"chestxray14: image {image} has findings {sorted(unknown)} that are not ChestX-ray14 labels {list(LABELS)}"
        )
    return names


def _read_list(path: Path) -> list[str]:
    if not path.is_file():
        raise ConfigError(f"data.root={path.parent}: {path.name} is missing (it defines the official split)")
    return [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]


def index_images(root: Path) -> dict[str, str]:
    """File name → absolute path of every file under ``root/images*/`` (recursive)."""
    out: dict[str, str] = {}
    dup: list[str] = []
    for top in sorted(p for p in root.glob("images*") if p.is_dir()):
        for d, subdirs, files in os.walk(top):
            subdirs[:] = sorted(s for s in subdirs if not s.startswith("."))
            for f in files:
                if f.startswith("."):
                    continue
                if f in out:
                    dup.append(f)
                    continue
                out[f] = os.path.join(d, f)
    if dup:
        raise ConfigError(
            f"data.root={root}: {len(dup)} image names appear in more than one images*/ folder (e.g. {dup[:3]}); "
            "keep one copy of each image"
        )
    return out


def read_chestxray14(
    root: str | Path, labels: list[str] | None = None, evaluated_split: str | None = None
) -> SampleTable:
    """Read the NIH layout into a multi-label :class:`SampleTable` (splits test / train_val).

    Images of ``evaluated_split`` missing on disk are an error (the metrics would not be
    those of the split); missing images of other splits are left out with a warning.
    """
    root = Path(root)
    labels = list(labels) if labels is not None else list(LABELS)
    bad = [c for c in labels if c not in LABELS]
    if bad:
        raise ConfigError(f"data.classes={labels}: {bad} are not ChestX-ray14 labels; choose among {list(LABELS)}")
    manifest = find_manifest(root)
    df = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    missing_cols = [c for c in COLUMNS if c not in df.columns]
    if missing_cols:
        raise ConfigError(f"chestxray14: {manifest} has no column(s) {missing_cols} (has {list(df.columns)[:8]})")
    meta = [c for c in METADATA if c in df.columns]
    df = df[list(COLUMNS) + meta].rename(columns={"Image Index": "sample_id", "Finding Labels": "findings", "Patient ID": "patient_id"})
    df["sample_id"] = df["sample_id"].str.strip()
    dup = df["sample_id"][df["sample_id"].duplicated()]
    if len(dup):
        raise ConfigError(f"chestxray14: {manifest.name} lists {len(dup)} images twice (e.g. {list(dup[:3])})")

    split_of: dict[str, str] = {}
    for split, fname in SPLIT_LISTS.items():
        for img in _read_list(root / fname):
            if split_of.setdefault(img, split) != split:
                raise ConfigError(f"chestxray14: image {img} is in both {SPLIT_LISTS[split_of[img]]} and {fname}")
    in_csv = set(df["sample_id"])
    unknown = [i for i in split_of if i not in in_csv]
    if unknown:
        raise ConfigError(
            f"chestxray14: {len(unknown)} images of the split lists are not in {manifest.name} (e.g. {unknown[:3]}); "
            "use the lists and manifest of the same release"
        )
    df["split"] = [split_of.get(i, "unlisted") for i in df["sample_id"]]
    notes = []
    n_unlisted = int((df["split"] == "unlisted").sum())
    if n_unlisted:
        notes.append(f"{n_unlisted} images of {manifest.name} are in neither split list (split 'unlisted')")
        log.warning("chestxray14: %s", notes[-1])

    targets = []
    for img, text in zip(df["sample_id"], df["findings"]):
        found = parse_findings(text, img)
        targets.append(tuple(int(c in found) for c in labels))
    df["target"] = targets

    files = index_images(root)
    df["path"] = [files.get(i, "") for i in df["sample_id"]]
    absent = df["path"] == ""
    if absent.any():
        per_split = df[absent].groupby("split").size().to_dict()
        if evaluated_split is not None and per_split.get(evaluated_split):
            ex = sorted(df[absent & (df["split"] == evaluated_split)]["sample_id"])[:3]
            raise ConfigError(
                f"data.split={evaluated_split}: {per_split[evaluated_split]} of its images are not under "
                f"{root}/images*/ (e.g. {ex}); unpack every images_*.tar.gz of the release into data.root"
            )
        notes.append(f"images listed but not found under images*/, left out: {per_split}")
        log.warning("chestxray14: %s", notes[-1])
        df = df[~absent]
    groups = [c for c in meta if c != "Patient Age"]
    if "Patient Age" in meta:
        from medray.metrics.clinical import age_band

        df[AGE_BAND] = [age_band(a) for a in df["Patient Age"]]
        groups.insert(1, AGE_BAND)
    df = df[["sample_id", "path", "split", "target", "patient_id", *groups]].reset_index(drop=True)
    counts = df.groupby("split").size().to_dict()
    log.info("chestxray14 %s: %s (manifest %s), %d labels", root, counts, manifest.name, len(labels))
    return SampleTable("chestxray14", "multilabel", labels, str(root), df, notes, subgroup_columns=groups)


def read_folder(data: DataConfig, root: str) -> SampleTable:
    """``data=chestxray14`` (the registry's reader)."""
    return read_chestxray14(root, labels=data.classes, evaluated_split=data.split)
