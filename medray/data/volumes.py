"""What every 3-D layout shares: the error a bad volume raises, and the driver's screen of
the cases from their headers only (no voxel data read) before Ray starts.

A case is its image (one file, or one per channel: ``channels``, newline-separated) and
its label.  The screen names what would fail later: an unreadable header, channels of
different shapes or geometry, a label whose shape, spacing, origin or direction differs
from its image's (nnU-Net's own dataset check refuses these too).
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

log = logging.getLogger("medray.data")

SKIP_HINT = "set data.on_error=skip to evaluate the other cases and list this one as skipped"
# Geometry tolerance: mm of spacing / origin, and of the direction cosines.
ATOL_MM = 1e-3
ATOL_DIRECTION = 1e-4


class VolumeError(ValueError):
    """A volume or label file cannot be used; the message names the file."""


def header(path: str) -> tuple[tuple[int, ...], np.ndarray]:
    """``(shape, affine)`` of a volume from its header: NIfTI with nibabel (the file's voxel
    order and RAS affine), other formats (``.mha``, ``.nrrd``...) with SimpleITK (LPS)."""
    name = str(path).lower()
    try:
        if name.endswith((".nii", ".nii.gz")):
            import nibabel as nib

            img = nib.load(path)
            shape, affine = tuple(int(v) for v in img.shape), np.asarray(img.affine, dtype=np.float64)
        else:
            import SimpleITK as sitk

            r = sitk.ImageFileReader()
            r.SetFileName(str(path))
            r.ReadImageInformation()
            shape = tuple(int(v) for v in r.GetSize())
            n = len(shape)
            affine = np.eye(4)
            d = np.asarray(r.GetDirection(), dtype=np.float64).reshape(n, n)[:3, :3]
            affine[:3, :3] = d * np.asarray(r.GetSpacing(), dtype=np.float64)[:3][None]
            affine[:3, 3] = r.GetOrigin()[:3]
    except Exception as e:  # nibabel / SimpleITK raise many types (truncated gzip, bad header...)
        kind = "a NIfTI volume" if name.endswith((".nii", ".nii.gz")) else "a volume"
        raise VolumeError(f"{path}: cannot be read as {kind} ({type(e).__name__}: {str(e).strip()[:300]})") from None
    if len(shape) not in (3, 4):
        raise VolumeError(f"{path}: expected a 3D volume (or 4D with channels last), got shape {list(shape)}")
    return shape, affine


def _same_grid(a: np.ndarray, b: np.ndarray) -> bool:
    spacing_a, spacing_b = np.linalg.norm(a[:3, :3], axis=0), np.linalg.norm(b[:3, :3], axis=0)
    return (np.allclose(spacing_a, spacing_b, atol=ATOL_MM) and np.allclose(a[:3, 3], b[:3, 3], atol=ATOL_MM)
            and np.allclose(a[:3, :3] / spacing_a, b[:3, :3] / spacing_b, atol=ATOL_DIRECTION))


def case_problem(image: str, label: str, channels: str = "") -> str:
    """Why a case cannot be evaluated from its headers ("" = fine)."""
    files = [c for c in channels.split("\n") if c] or [image]
    try:
        shape, affine = header(files[0])
        for other in files[1:]:
            s, a = header(other)
            if s[:3] != shape[:3] or not _same_grid(a, affine):
                return f"{other}: channel shape {list(s)} / geometry differ from the first channel's {files[0]}"
        if label:
            s, a = header(label)
            if s[:3] != shape[:3] or len(s) > 3 and any(v != 1 for v in s[3:]):
                return f"{label}: label shape {list(s)} does not match the shape {list(shape)} of its image {files[0]}"
            if not _same_grid(a, affine):
                sp = lambda m: [round(float(v), 4) for v in np.linalg.norm(m[:3, :3], axis=0)]  # noqa: E731
                return (f"{label}: label spacing / origin / direction {sp(a)}, {a[:3, 3].round(3).tolist()} disagree with "
                        f"its image's {sp(affine)}, {affine[:3, 3].round(3).tolist()} ({files[0]})")
    except VolumeError as e:
        return str(e)
    return ""


def check_headers(samples: pd.DataFrame, on_error: str = "fail") -> pd.DataFrame:
    """Driver-side screening from the headers only (see the module docstring): with
    ``on_error=fail`` the first bad case raises :class:`VolumeError` naming the file; with
    ``skip`` the case gets a ``problem`` and is listed as skipped."""
    samples = samples.copy()
    if "problem" not in samples.columns:
        samples["problem"] = ""
    channels = samples["channels"] if "channels" in samples.columns else [""] * len(samples)
    samples["problem"] = [p or case_problem(str(i), str(lab), str(c)) for i, lab, c, p in
                          zip(samples["path"], samples["label_path"], channels, samples["problem"])]
    bad = samples[samples["problem"] != ""]
    if len(bad) and on_error != "skip":
        more = f" (and {len(bad) - 1} more bad cases)" if len(bad) > 1 else ""
        raise VolumeError(f"{bad['problem'].iat[0]}{more}; {SKIP_HINT}")
    if len(bad):
        log.warning("data.on_error=skip: %d cases skipped (e.g. %s)", len(bad), bad["problem"].iat[0])
    return samples
