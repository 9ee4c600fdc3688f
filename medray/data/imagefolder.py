"""``data=imagefolder``: the Kermany et al. chest X-ray layout, ``<root>/<split>/<CLASS>/<image>``.

As published (seed 001): ``train/ test/ val/``, each with ``NORMAL/`` and ``PNEUMONIA/``
holding JPEGs.  Any split and class names work; images are JPEG, PNG (8/16-bit, L or
RGB) or DICOM (``.dcm``).  Classes are the class folder names in sorted order — the
order torchvision's ``ImageFolder`` gives, so a model trained with it maps one to one —
unless ``data.classes`` fixes them.  ``sample_id`` is the path relative to the root
(``test/NORMAL/IM-0001-0001.jpeg``): unique, readable, never from an image's tags.

What is not an image is not silently dropped: hidden files and macOS ``__MACOSX`` folders
are skipped (archive litter), anything else that is skipped is counted in a warning.
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

IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png", ".dcm")
# Archive litter (macOS zip resource forks); skipped without a warning.
_LITTER = ("__MACOSX",)


def _visible(entry: os.DirEntry) -> bool:
    return not entry.name.startswith(".") and entry.name not in _LITTER


def _dirs(path: str) -> list[os.DirEntry]:
    with os.scandir(path) as it:
        return sorted((e for e in it if e.is_dir() and _visible(e)), key=lambda e: e.name)


def scan(root: str | Path) -> tuple[dict[str, dict[str, list[str]]], list[str]]:
    """``{split: {class: [image file names]}}`` and a list of what was skipped.

    A split is a folder under ``root`` with at least one class folder that holds images;
    images are the files directly inside a class folder with an image suffix.
    """
    root = str(root)
    layout: dict[str, dict[str, list[str]]] = {}
    skipped: list[str] = []
    for split in _dirs(root):
        classes: dict[str, list[str]] = {}
        for cls in _dirs(split.path):
            files, other = [], []
            with os.scandir(cls.path) as it:
                for e in it:
                    if not _visible(e):
                        continue
                    if e.is_file() and e.name.lower().endswith(IMAGE_SUFFIXES):
                        files.append(e.name)
                    else:
                        other.append(f"{split.name}/{cls.name}/{e.name}{'/' if e.is_dir() else ''}")
            skipped += sorted(other)
            classes[cls.name] = sorted(files)
        if any(classes.values()):
            layout[split.name] = classes
        else:
            skipped.append(f"{split.name}/ (no <class>/<image> inside)")
    return layout, skipped


def read_imagefolder(root: str | Path, classes: list[str] | None = None, name: str = "imagefolder") -> SampleTable:
    """Read a ``<root>/<split>/<CLASS>/<image>`` folder into a multiclass :class:`SampleTable`."""
    root = Path(root)
    layout, skipped = scan(root)
    if not layout:
        raise ConfigError(
            f"data.root={root}: no <split>/<CLASS>/<image> folders found (images: "
            f"{', '.join(IMAGE_SUFFIXES)}); point data.root at the folder holding train/ test/ ..."
        )
    found = sorted({c for per_split in layout.values() for c in per_split})
    if classes is None:
        classes = found
    else:
        classes = list(classes)
        extra = [c for c in found if c not in classes]
        if extra:
            raise ConfigError(
                f"data.classes={classes}: the folder has class folders {extra} that are not listed; "
                f"list every class folder ({found}) in model-output order, or remove data.classes"
            )
        absent = [c for c in classes if c not in found]
        if absent:
            log.warning("imagefolder: classes %s of data.classes have no folder in any split", absent)
    index = {c: i for i, c in enumerate(classes)}
    rows = []
    for split, per_class in layout.items():
        for cls, files in per_class.items():
            for f in files:
                rel = f"{split}/{cls}/{f}"
                rows.append((rel, str(root / split / cls / f), split, index[cls]))
    df = pd.DataFrame(rows, columns=["sample_id", "path", "split", "target"])
    notes = []
    if skipped:
        notes.append(f"{len(skipped)} entries skipped (not an image in a <split>/<CLASS>/ folder), e.g. {skipped[:3]}")
        log.warning("imagefolder %s: %s", root, notes[-1])
    counts = df.groupby(["split", "target"]).size()
    summary = "; ".join(
        f"{s}: " + ", ".join(f"{classes[t]} {int(counts.get((s, t), 0))}" for t in range(len(classes)))
        for s in sorted(layout)
    )
    log.info("imagefolder %s: %d images, classes %s (%s)", root, len(df), classes, summary)
    return SampleTable(name, "multiclass", classes, str(root), df, notes)


def read_folder(data: DataConfig, root: str) -> SampleTable:
    """``data=imagefolder`` (the registry's reader)."""
    return read_imagefolder(root, classes=data.classes)
