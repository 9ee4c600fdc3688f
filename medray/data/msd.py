"""Medical Segmentation Decathlon task folders: ``dataset.json`` + NIfTI volumes.

Layout (as published, e.g. ``Task09_Spleen/``)::

    dataset.json      {"labels": {"0": "background", "1": "spleen"}, "modality": {"0": "CT"},
                       "training": [{"image": "./imagesTr/x.nii.gz", "label": "./labelsTr/x.nii.gz"}],
                       "test": ["./imagesTs/y.nii.gz", ...]}
    imagesTr/ labelsTr/ imagesTs/ [labelsTs/]

``training`` → split ``train``, ``test`` → ``test`` (``validation`` → ``val`` and
``calibration`` → ``calibration`` where a folder has them).  Test entries are bare image
paths in MSD; their labels are used when ``labelsTs/<same name>`` exists (otherwise the
split is evaluated without labels: Dice vs the baseline only).

Volumes are read with nibabel through MONAI's transforms, which keep the affine so that
reorientation and resampling use the file's real voxel spacing.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from medray.data.table import SampleTable
from medray.data.volumes import SKIP_HINT, VolumeError, check_headers  # noqa: F401  (re-exported: the 3-D layouts' screen)
from medray.errors import ConfigError

if TYPE_CHECKING:
    from medray.data.config import DataConfig, VolumeConfig

log = logging.getLogger("medray.data")

SPLIT_KEYS = {"training": "train", "validation": "val", "calibration": "calibration", "test": "test"}


# --------------------------------------------------------------------------- table


def read_dataset_json(root: str | Path) -> dict:
    path = Path(root) / "dataset.json"
    if not path.is_file():
        raise ConfigError(
            f"data.root={root}: no dataset.json; point data.root at an MSD task folder "
            "(dataset.json, imagesTr/labelsTr, imagesTs)"
        )
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"data.root={root}: {path} is not valid JSON ({e})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("labels"), dict):
        raise ConfigError(f"data.root={root}: {path} has no \"labels\" mapping (e.g. {{\"0\": \"background\", \"1\": \"spleen\"}})")
    return meta


def label_names(meta: dict, where: str = "dataset.json") -> list[str]:
    """Label names in label-value order; values must be 0..K-1 (0 = background)."""
    try:
        labels = {int(k): str(v) for k, v in meta["labels"].items()}
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: \"labels\" keys must be integers, got {list(meta['labels'])}") from None
    if sorted(labels) != list(range(len(labels))) or len(labels) < 2:
        raise ConfigError(
            f"{where}: \"labels\" must map 0..K-1 (0 = background, at least one foreground class), got {sorted(labels)}"
        )
    return [labels[i] for i in range(len(labels))]


def modalities(meta: dict) -> list[str]:
    """Channel modalities in channel order (``["CT"]``, ``["FLAIR", "T1w", ...]``)."""
    mod = meta.get("modality") or {"0": "unknown"}
    return [str(mod[k]) for k in sorted(mod, key=int)]


def _case_id(path: str) -> str:
    name = Path(path).name
    for ext in (".nii.gz", ".nii"):
        if name.endswith(ext):
            return name[: -len(ext)]
    return name


def read_msd(root: str | Path) -> SampleTable:
    """Read an MSD task folder into a :class:`SampleTable` (task ``segmentation``).

    ``samples`` columns: sample_id (file name without .nii.gz), path, label_path ("" if
    unlabelled), split, target (= label_path), problem ("" or why the case cannot be used).
    ``classes`` are all label names, background first (the model's output channels).
    """
    root = Path(root).expanduser().resolve()
    meta = read_dataset_json(root)
    classes = label_names(meta, str(root / "dataset.json"))
    rows = []
    for key, split in SPLIT_KEYS.items():
        for entry in meta.get(key) or []:
            if isinstance(entry, str):
                image, label = entry, None
                # MSD lists test images only; use labelsXx/<same name> where it exists.
                p = Path(entry)
                cand = p.parent.with_name(p.parent.name.replace("images", "labels", 1)) / p.name
                if p.parent.name.startswith("images") and (root / cand).is_file():
                    label = str(cand)
            elif isinstance(entry, dict) and "image" in entry:
                image, label = entry["image"], entry.get("label")
            else:
                raise ConfigError(f"{root / 'dataset.json'}: entry {entry!r} of {key!r} is neither a path nor {{\"image\", \"label\"}}")
            img_path = str((root / image).resolve())
            lab_path = str((root / label).resolve()) if label else ""
            problem = ""
            if not Path(img_path).is_file():
                problem = f"image file not found: {img_path}"
            elif lab_path and not Path(lab_path).is_file():
                problem = f"label file not found: {lab_path}"
            rows.append((_case_id(img_path), img_path, lab_path, split, problem))
    if not rows:
        raise ConfigError(f"data.root={root}: dataset.json lists no cases under {', '.join(SPLIT_KEYS)}")
    df = pd.DataFrame(rows, columns=["sample_id", "path", "label_path", "split", "problem"])
    dup = df["sample_id"].duplicated(keep=False)
    if dup.any():  # same file name in two folders: keep ids unique with the folder
        df.loc[dup, "sample_id"] = [f"{Path(p).parent.name}__{s}" for p, s in zip(df.loc[dup, "path"], df.loc[dup, "sample_id"])]
    if df["sample_id"].duplicated().any():
        raise ConfigError(f"{root / 'dataset.json'}: lists the same image more than once: {sorted(df.loc[df['sample_id'].duplicated(), 'path'])[:3]}")
    df["target"] = df["label_path"]
    notes = [f"modality: {', '.join(modalities(meta))}"]
    return SampleTable(str(meta.get("name") or root.name), "segmentation", classes, str(root), df, notes,
                       channels=modalities(meta))


def load_msd_table(data: DataConfig, root: str | Path) -> SampleTable:
    """``data=msd``: the folder at ``data.root``, or (root unset) the phantom set in the cache."""
    if data.root is None:
        from medray.data.phantoms import ensure_phantoms, phantom_tag

        tag = phantom_tag(data.n_train, data.n_calibration, data.n_test, data.image_size, data.seed)
        target = Path(root) / tag
        if not (target / "dataset.json").is_file():
            log.info("generating the synthetic MSD phantom set in %s (once; cached)", target)
        root = ensure_phantoms(target, data.n_train, data.n_calibration, data.n_test, data.image_size, data.seed)
    elif not Path(root).expanduser().is_dir():
        raise ConfigError(f"data.root={root}: not a directory; point it at an MSD task folder")
    return read_msd(root)


# --------------------------------------------------------------------------- preprocessing


@dataclass
class Preprocessing:
    """Resolved volume preprocessing (``auto`` decided from the modality): plain values."""

    intensity: str
    a_min: float
    a_max: float
    b_min: float
    b_max: float
    clip: bool
    spacing: list[float] | None
    orientation: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def resolve_preprocessing(volume: VolumeConfig, modality: list[str]) -> Preprocessing:
    """``intensity=auto`` → window for CT, z-score for anything else."""
    mode = volume.intensity
    if mode == "auto":
        mode = "window" if [m.upper() for m in modality] == ["CT"] else "zscore"
    return Preprocessing(mode, volume.a_min, volume.a_max, volume.b_min, volume.b_max, volume.clip,
                         list(volume.spacing) if volume.spacing else None, volume.orientation)


def _load(path: str):
    """One NIfTI file as a channel-first MONAI MetaTensor carrying the file's affine.

    nibabel applies the header's scaling (``scl_slope``/``scl_inter``); a 4D file is
    channels-last (MSD multi-modal tasks) and becomes channels-first.
    """
    import nibabel as nib
    import torch
    from monai.data import MetaTensor

    try:
        img = nib.load(path)
        if len(img.shape) not in (3, 4):
            raise VolumeError(f"{path}: expected a 3D volume (or 4D with channels last), got shape {list(img.shape)}")
        arr = img.get_fdata(dtype=np.float32)
    except VolumeError:
        raise
    except Exception as e:  # nibabel raises many types (truncated gzip, bad header...)
        raise VolumeError(f"{path}: cannot be read as a NIfTI volume ({_reason(e)})") from None
    arr = arr[None] if arr.ndim == 3 else np.moveaxis(arr, -1, 0)
    return MetaTensor(torch.from_numpy(np.ascontiguousarray(arr)), affine=torch.as_tensor(img.affine, dtype=torch.float64))


def _reason(e: BaseException) -> str:
    while e.__cause__ is not None:  # MONAI wraps the reader's error
        e = e.__cause__
    return f"{type(e).__name__}: {str(e).strip()[:300]}"


def load_case(image_path: str, label_path: str | None, prep: Preprocessing | dict, num_classes: int | None = None) -> dict:
    """Read and preprocess one case.

    Returns ``image`` float32 ``(C, X, Y, Z)`` (model space: reoriented, resampled,
    normalised), ``label`` uint8 ``(X, Y, Z)`` or None, ``orig_shape`` / ``orig_spacing``
    of the file and ``spacing`` after resampling.  A label whose shape differs from the
    image's, or whose values exceed the label list, raises :class:`VolumeError`.
    """
    from monai.transforms import NormalizeIntensity, Orientationd, ScaleIntensityRange, Spacingd

    p = prep if isinstance(prep, Preprocessing) else Preprocessing(**prep)
    img = _load(image_path)
    orig_shape = [int(v) for v in img.shape[1:]]
    orig_spacing = [float(v) for v in _spacing(img.affine)]
    data = {"image": img}
    if label_path:
        lab = _load(label_path)
        if lab.shape[0] != 1:
            raise VolumeError(f"{label_path}: a label volume must have one channel, got shape {tuple(lab.shape[1:])}+{lab.shape[0]} channels")
        if list(lab.shape[1:]) != orig_shape:
            raise VolumeError(
                f"{label_path}: label shape {list(lab.shape[1:])} does not match the shape {orig_shape} of its image {image_path}"
            )
        data["label"] = lab
    keys = list(data)
    if p.orientation:
        # Axis labels given explicitly: MONAI's default is changing to the tensor's 'space'.
        data = Orientationd(keys=keys, axcodes=p.orientation, labels=(('L', 'R'), ('P', 'A'), ('I', 'S')))(data)
    if p.spacing:
        modes = ["bilinear", "nearest"][: len(keys)]
        data = Spacingd(keys=keys, pixdim=p.spacing, mode=modes)(data)
    x = data["image"]
    if p.intensity == "window":
        x = ScaleIntensityRange(a_min=p.a_min, a_max=p.a_max, b_min=p.b_min, b_max=p.b_max, clip=p.clip)(x)
    elif p.intensity == "zscore":
        x = NormalizeIntensity(nonzero=True, channel_wise=True)(x)
    image = np.ascontiguousarray(np.asarray(x.detach().cpu() if hasattr(x, "detach") else x, dtype=np.float32))
    out = {"image": image, "label": None, "orig_shape": orig_shape, "orig_spacing": orig_spacing,
           "spacing": [float(v) for v in _spacing(data["image"].affine)],
           # The file's voxel grid and the network's: the way back to the original geometry.
           "affine": _matrix(img.affine), "model_affine": _matrix(data["image"].affine), "label_original": None}
    if label_path:
        out["label"] = _label_values(np.asarray(data["label"].detach().cpu())[0], label_path, num_classes)
        out["label_original"] = _label_values(np.asarray(lab.detach().cpu())[0], label_path, num_classes)
    if not np.isfinite(image).all():
        raise VolumeError(f"{image_path}: the volume contains NaN or infinite values after preprocessing")
    return out


def _label_values(raw: np.ndarray, label_path: str, num_classes: int | None) -> np.ndarray:
    """A label volume as uint8 label values, checked against the dataset's labels."""
    label = np.rint(raw)
    if label.min() < 0 or (num_classes is not None and label.max() >= num_classes):
        found = np.unique(label).astype(int).tolist()
        raise VolumeError(
            f"{label_path}: label values {found[:10]} outside 0..{(num_classes or 0) - 1} (the labels of dataset.json)"
        )
    return np.ascontiguousarray(label.astype(np.uint8))


def _matrix(affine) -> np.ndarray:
    return np.asarray(affine.detach().cpu() if hasattr(affine, "detach") else affine, dtype=np.float64)


def _spacing(affine) -> np.ndarray:
    a = np.asarray(affine.detach().cpu() if hasattr(affine, "detach") else affine, dtype=np.float64)
    return np.sqrt((a[:3, :3] ** 2).sum(axis=0))
