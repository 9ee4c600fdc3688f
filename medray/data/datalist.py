"""``data=datalist``: a MONAI datalist JSON (``{"training": [...], "validation": [...]}``), read
as ``monai.data.load_decathlon_datalist`` reads it — every list in the file is a split, an
entry is ``{"image": path or [paths], "label": path}`` (or a bare image path), relative paths
are joined to the base folder ``data.root``.  MONAI bundles are evaluated on their
validation lists this way, not on an MSD ``imagesTs`` folder.

The label values are ``0..K-1``: ``data.classes`` names them (background first); null = the
model's class names (a MONAI bundle's ``metadata.json``, else ``model.num_classes``).
A case is identified by its image file (its name without ``.nii.gz``; the path under the base
folder when two files share a name), so an image listed in two splits is the same sample in
both and a calibration split can never share a case with the evaluated one unnoticed.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd

from medray.data.table import SampleTable
from medray.errors import ConfigError

log = logging.getLogger("medray.data")

IMAGE_ENDINGS = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr")


def datalist_file(data, root: str) -> Path:
    """``data.datalist``: absolute, or relative to ``data.root``."""
    if not data.datalist:
        raise ConfigError("data.datalist=None: data=datalist needs data.datalist=<the datalist JSON> "
                          "(absolute, or relative to data.root)")
    path = Path(data.datalist).expanduser()
    path = path if path.is_absolute() else Path(root) / path
    if not path.is_file():
        raise ConfigError(f"data.datalist={data.datalist}: file not found ({path}); give the MONAI datalist JSON")
    return path.resolve()


def case_id(path: str) -> str:
    name = Path(path).name
    return next((name[: -len(e)] for e in IMAGE_ENDINGS if name.endswith(e)), name)


def read_splits(path: Path, root: Path) -> dict[str, list[dict]]:
    """Every list of the datalist as ``load_decathlon_datalist`` returns it (absolute paths)."""
    from monai.data import load_decathlon_datalist

    try:
        content = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"data.datalist={path}: not valid JSON ({e})") from None
    keys = [k for k, v in content.items() if isinstance(v, list)] if isinstance(content, dict) else []
    if not keys:
        raise ConfigError(f"data.datalist={path}: no lists of cases; expected {{\"training\": [...], \"validation\": [...]}}")
    out = {}
    for key in keys:
        bad = next((e for e in content[key] if not isinstance(e, (str, dict)) or isinstance(e, dict) and "image" not in e),
                   None)
        if bad is not None:
            raise ConfigError(f"data.datalist={path}: entry {bad!r} of {key!r} is neither a path nor {{\"image\": ..., \"label\": ...}}")
        out[key] = load_decathlon_datalist(str(path), is_segmentation=True, data_list_key=key, base_dir=str(root))
    return out


def read_datalist(data, root: str) -> SampleTable:
    """The samples of every split of ``data.datalist`` (see the module docstring); a case whose
    image or label file is missing gets a ``problem`` (data.on_error decides)."""
    base = Path(root).expanduser().resolve()
    path = datalist_file(data, str(base))
    rows = []
    for split, entries in read_splits(path, base).items():
        for e in entries:
            images = [str(Path(p).resolve()) for p in (e["image"] if isinstance(e["image"], list) else [e["image"]])]
            label = str(Path(e["label"]).resolve()) if e.get("label") else ""
            missing = next((p for p in [*images, label] if p and not Path(p).is_file()), None)
            problem = "" if missing is None else f"{'label' if missing == label else 'image'} file not found: {missing}"
            rows.append((case_id(images[0]), images[0], "\n".join(images) if len(images) > 1 else "", label, split,
                         problem))
    if not rows:
        raise ConfigError(f"data.datalist={path}: its lists are empty")
    df = pd.DataFrame(rows, columns=["sample_id", "path", "channels", "label_path", "split", "problem"])
    # Two different files of one name: their path under the base folder tells them apart.
    clash = df.groupby("sample_id")["path"].transform("nunique") > 1
    df.loc[clash, "sample_id"] = [_relative(p, base) for p in df.loc[clash, "path"]]
    twice = df.duplicated(["split", "sample_id"])
    if twice.any():
        raise ConfigError(f"data.datalist={path}: lists the same image twice in one split: "
                          f"{sorted(df.loc[twice, 'path'])[:3]}")
    df["target"] = df["label_path"]
    classes = [str(c) for c in data.classes] if data.classes else []
    notes = [f"datalist {path} (base folder {base}): " + ", ".join(f"{s} {n}" for s, n in df["split"].value_counts(sort=False).items())]
    if not classes:
        notes.append("label names: the model's (data.classes=null)")
    return SampleTable(path.stem, "segmentation", classes, str(base), df, notes)


def _relative(path: str, base: Path) -> str:
    p = Path(path)
    rel = p.relative_to(base) if p.is_relative_to(base) else p
    return str(rel.parent / case_id(str(rel))).replace("/", "__")
