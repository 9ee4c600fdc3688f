"""Synthetic 3D CT phantoms in the Medical Segmentation Decathlon layout (demo and tests).

Each case is an abdomen-like volume in Hounsfield units: air around an elliptic body
cylinder of soft tissue, a bright spine, one organ-like blob (a lumpy ellipsoid, label 1)
and, in most cases, a brighter lesion inside it (label 2), softened by a small blur and
overlaid with noise.  The output is exactly what an MSD task folder looks like
(``dataset.json`` + ``imagesTr``/``labelsTr`` + ``imagesTs``/``labelsTs``, NIfTI .nii.gz
with the voxel spacing in the affine), read by :mod:`medray.data.msd` like a real one.

Every case is drawn from an RNG seeded by ``(seed, split, index)`` only, so the same
arguments always give the same volumes and a test case does not change when the train
split grows.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from medray.data.generated import write_once

log = logging.getLogger("medray.data")

# Bump when the rendering changes: volumes of another version are another dataset.
GENERATOR_VERSION = 1
LABELS = {"0": "background", "1": "organ", "2": "lesion"}
SPACING = (1.5, 1.5, 2.0)  # mm, x y z
# Hounsfield units of each tissue; the noise is added after a 0.7-voxel blur.
HU = {"air": -1000.0, "tissue": 10.0, "bone": 450.0, "organ": 100.0, "lesion": 190.0}
NOISE_HU = 20.0
LESION_RATE = 0.8
MIN_SIZE = 16
# split name in medray → dataset.json list, image folder, label folder, file prefix
_SPLITS = {
    "train": ("training", "imagesTr", "labelsTr", "phantom"),
    "calibration": ("calibration", "imagesTr", "labelsTr", "phantom_cal"),
    "test": ("test", "imagesTs", "labelsTs", "phantom_test"),
}


def phantom_tag(n_train: int, n_calibration: int, n_test: int, size: int, seed: int, n_classes: int = 2) -> str:
    """Folder name of a phantom set (different arguments never share a folder)."""
    return f"phantom-v{GENERATOR_VERSION}-s{size}-c{n_classes}-tr{n_train}-ca{n_calibration}-te{n_test}-g{seed}"


def render_phantom(rng: np.random.Generator, size: int, n_classes: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """One case: ``(image int16 HU, label uint8)`` of shape ``(size, size, depth)``."""
    from scipy.ndimage import gaussian_filter

    depth = int(rng.integers(3 * size // 4, 5 * size // 4 + 1))
    shape = (size, size, depth)
    x, y, z = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in shape), indexing="ij")
    cx, cy = (size - 1) / 2 + rng.uniform(-0.03, 0.03, 2) * size
    # Body: elliptic cylinder along z.
    rx, ry = rng.uniform(0.40, 0.46) * size, rng.uniform(0.32, 0.38) * size
    body = ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 <= 1
    img = np.where(body, HU["tissue"], HU["air"]).astype(np.float32)
    # Spine: a bright cylinder at the back of the body.
    sx, sy, sr = cx, cy + 0.7 * ry, 0.07 * size
    img[((x - sx) ** 2 + (y - sy) ** 2) <= sr**2] = HU["bone"]

    label = np.zeros(shape, dtype=np.uint8)
    organ = _blob(rng, (x, y, z), shape, centre_box=((cx - 0.45 * rx, cx + 0.45 * rx), (cy - 0.55 * ry, cy + 0.25 * ry)),
                  radii=(0.15 * size, 0.24 * size))
    organ &= body
    img[organ] = HU["organ"]
    label[organ] = 1
    if n_classes >= 2 and rng.random() < LESION_RATE:
        from scipy.ndimage import binary_erosion

        # Centre well inside the organ so that most of the lesion lies within it.
        core = binary_erosion(organ, iterations=max(1, size // 16))
        idx = np.argwhere(core if core.any() else organ)
        c = idx[rng.integers(len(idx))].astype(np.float32)
        r = rng.uniform(0.07, 0.11, 3) * size
        lesion = (((x - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((z - c[2]) / r[2]) ** 2 <= 1) & organ
        img[lesion] = HU["lesion"]
        label[lesion] = 2
    img = gaussian_filter(img, 0.7)
    img += rng.normal(0.0, NOISE_HU, shape).astype(np.float32)
    return np.clip(np.round(img), -1024, 3071).astype(np.int16), label


def _blob(rng, grid, shape, centre_box, radii) -> np.ndarray:
    """A lumpy ellipsoid: the level set of an ellipsoid perturbed by low-frequency waves."""
    x, y, z = grid
    c = [rng.uniform(*centre_box[0]), rng.uniform(*centre_box[1]), rng.uniform(0.35, 0.65) * (shape[2] - 1)]
    r = rng.uniform(radii[0], radii[1], 3)
    d = ((x - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((z - c[2]) / r[2]) ** 2
    for _ in range(3):
        k = rng.uniform(0.05, 0.15, 3)
        d = d + 0.12 * np.sin(k[0] * x + k[1] * y + k[2] * z + rng.uniform(0, 2 * np.pi))
    return d <= 1


def ensure_phantoms(root: str | Path, n_train: int, n_calibration: int, n_test: int, size: int = 64, seed: int = 0,
                    n_classes: int = 2) -> Path:
    """Write (once) a phantom MSD task folder at ``root``; return ``root``.

    Returns at once when ``root/dataset.json`` records the same arguments; raises
    ValueError when ``root`` holds something else.  Written to a temporary folder and
    renamed into place, so a killed process never leaves half a dataset.
    """
    if int(size) < MIN_SIZE:
        raise ValueError(f"phantom size={size}: must be >= {MIN_SIZE} voxels")
    if n_classes not in (1, 2):
        raise ValueError(f"phantom n_classes={n_classes}: use 1 (organ) or 2 (organ + lesion)")
    for key, n in (("n_train", n_train), ("n_calibration", n_calibration), ("n_test", n_test)):
        if int(n) < 0:
            raise ValueError(f"phantom {key}={n}: must be >= 0")
    root = Path(root).expanduser().resolve()
    gen = {"kind": "msd_phantom", "version": GENERATOR_VERSION, "n_train": int(n_train),
           "n_calibration": int(n_calibration), "n_test": int(n_test), "size": int(size),
           "seed": int(seed), "n_classes": int(n_classes)}
    return write_once(root, gen, lambda tmp: _write(tmp, gen), "phantom set")


def _write(tmp: Path, gen: dict) -> None:
    import nibabel as nib

    labels = {k: v for k, v in LABELS.items() if int(k) <= gen["n_classes"]}
    meta: dict = {
        "name": "Phantom",
        "description": "medray synthetic abdominal CT phantoms (organ + lesion blobs in noise)",
        "reference": "generated by medray.data.phantoms",
        "licence": "CC0",
        "tensorImageSize": "3D",
        "modality": {"0": "CT"},
        "labels": labels,
        "numTraining": gen["n_train"],
        "numTest": gen["n_test"],
    }
    affine = np.diag([*SPACING, 1.0])
    n_total = 0
    for code, (split, (key, img_dir, lab_dir, prefix)) in enumerate(_SPLITS.items()):
        entries = []
        (tmp / img_dir).mkdir(parents=True, exist_ok=True)
        (tmp / lab_dir).mkdir(parents=True, exist_ok=True)
        for i in range(gen[f"n_{split}"]):
            img, lab = render_phantom(np.random.default_rng([gen["seed"], code, i]), gen["size"], gen["n_classes"])
            name = f"{prefix}_{i:03d}.nii.gz"
            nib.save(nib.Nifti1Image(img, affine), tmp / img_dir / name)
            nib.save(nib.Nifti1Image(lab, affine), tmp / lab_dir / name)
            # MSD lists test cases as bare image paths (their labels, here, in labelsTs).
            entries.append(f"./{img_dir}/{name}" if key == "test" else {"image": f"./{img_dir}/{name}", "label": f"./{lab_dir}/{name}"})
            n_total += 1
        meta[key] = entries
    meta["generator"] = gen
    (tmp / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n")
    log.info("phantoms: wrote %d cases of %d³ voxels to %s", n_total, gen["size"], tmp.name)
