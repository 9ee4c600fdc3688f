"""``predictions/<run>.parquet`` (one row per case) and ``predictions/<run>_masks/``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from medray.results import RunResult


def write(out: str, result: RunResult, classes: list[str]) -> None:
    """predictions/<run>.parquet (one row per case) and predictions/<run>_masks/<case>.npz."""
    import pyarrow as pa

    from medray import io as medray_io

    df = result.predictions
    name = result.spec.name
    n = len(df)
    dice = np.stack(df["dice"].to_numpy()) if n else np.zeros((0, len(classes)))
    cols: dict[str, Any] = {"sample_id": pa.array(df["sample_id"].astype(str) if n else [], pa.string())}
    for j, c in enumerate(classes):
        cols[f"dice_{c}"] = pa.array(dice[:, j].astype(np.float64), pa.float64())
    for key in ("hd95", "surface_dice"):
        if key in df.columns and n:
            v = np.stack(df[key].to_numpy()).astype(np.float64)
            for j, c in enumerate(classes):
                cols[f"{key}_{c}"] = pa.array(v[:, j], pa.float64())
    with np.errstate(all="ignore"):
        cols["dice_mean"] = pa.array([float(np.nanmean(d)) if np.isfinite(d).any() else np.nan for d in dice], pa.float64())
    if "dice_vs_baseline" in df.columns:
        vb = np.stack([np.asarray(v, dtype=np.float64) if isinstance(v, np.ndarray) else np.full(len(classes), np.nan)
                       for v in df["dice_vs_baseline"]]) if n else np.zeros((0, len(classes)))
        for j, c in enumerate(classes):
            cols[f"dice_vs_baseline_{c}"] = pa.array(vb[:, j], pa.float64())
        cols["voxel_agreement"] = pa.array(df["voxel_agreement"].astype(float) if n else [], pa.float64())
    for k, col in (("orig_shape", "shape"), ("model_shape", "model_shape")):
        v = np.stack(df[k].to_numpy()).astype(np.int64) if n else np.zeros((0, 3), np.int64)
        cols[col] = pa.FixedSizeListArray.from_arrays(pa.array(v.ravel()), 3)
    for k in ("orig_spacing", "spacing"):
        v = np.stack(df[k].to_numpy()).astype(np.float64) if n else np.zeros((0, 3))
        cols[k] = pa.FixedSizeListArray.from_arrays(pa.array(v.ravel()), 3)
    for k, t in (("has_label", pa.bool_()), ("latency_ms", pa.float64()), ("sw_ms", pa.float64()), ("n_calls", pa.int64()),
                 ("n_windows", pa.int64()), ("mask_file", pa.string()), ("mask_sha256", pa.string()),
                 ("node_id", pa.string()), ("worker_pid", pa.int64())):
        cols[k] = pa.array(df[k].tolist() if n else [], t)
    medray_io.write_parquet(pa.table(cols), medray_io.join(out, "predictions", f"{name}.parquet"))
    mask_dir = medray_io.join(out, "predictions", f"{name}_masks")
    medray_io.makedirs(mask_dir)
    for fname, blob in zip(df["mask_file"], df["mask"]) if n else ():
        medray_io.write_bytes(medray_io.join(mask_dir, fname), blob)
