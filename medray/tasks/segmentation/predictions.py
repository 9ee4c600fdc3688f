"""``predictions/<run>.parquet`` (one row per case: Dice, IoU, TP/FP/FN/TN, n_pred, n_ref per
label or region, HD95, surface Dice, timings) and ``predictions/<run>_masks/`` (the masks
as files of the input's format with its geometry)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from medray.results import RunResult


def write(out: str, result: RunResult, classes: list[str]) -> None:
    """predictions/<run>.parquet (one row per case) and predictions/<run>_masks/<case><ending>."""
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
    if "counts" in df.columns and n:
        counts = np.stack(df["counts"].to_numpy()).astype(np.int64)
        iou = np.stack(df["iou"].to_numpy()).astype(np.float64)
        for j, c in enumerate(classes):  # nnU-Net's per-case numbers (-1: the case has no labels)
            cols[f"iou_{c}"] = pa.array(iou[:, j], pa.float64())
            for k, what in enumerate(("tp", "fp", "fn", "tn")):
                cols[f"{what}_{c}"] = pa.array(counts[:, j, k], pa.int64())
            cols[f"n_pred_{c}"] = pa.array(np.where(counts[:, j, 0] < 0, -1, counts[:, j, 0] + counts[:, j, 1]), pa.int64())
            cols[f"n_ref_{c}"] = pa.array(np.where(counts[:, j, 0] < 0, -1, counts[:, j, 0] + counts[:, j, 2]), pa.int64())
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
    for k in ("orig_spacing", "spacing", "mask_spacing"):
        v = np.stack(df[k].to_numpy()).astype(np.float64) if n else np.zeros((0, 3))
        cols[k] = pa.FixedSizeListArray.from_arrays(pa.array(v.ravel()), 3)
    for k, t in (("has_label", pa.bool_()), ("latency_ms", pa.float64()), ("sw_ms", pa.float64()), ("n_calls", pa.int64()),
                 ("n_windows", pa.int64()), ("post_ms", pa.float64()), ("peak_rss_mb", pa.float64()),
                 ("mask_file", pa.string()), ("mask_sha256", pa.string()), ("node_id", pa.string()),
                 ("worker_pid", pa.int64())):
        cols[k] = pa.array(df[k].tolist() if n else [], t)
    medray_io.write_parquet(pa.table(cols), medray_io.join(out, "predictions", f"{name}.parquet"))
    write_masks(medray_io.join(out, "predictions", f"{name}_masks"), result)


def write_masks(mask_dir: str, result: RunResult) -> None:
    """Every case's mask as a file of the input's format with its geometry, by the model's
    recipe (through a local temporary file when the outputs are remote)."""
    import tempfile
    from pathlib import Path

    from medray import io as medray_io
    from medray.models.recipes import recipe_of
    from medray.tasks.segmentation.masks import unpack_mask

    df, model = result.predictions, result.spec.model
    recipe = recipe_of(model)
    medray_io.makedirs(mask_dir)
    with tempfile.TemporaryDirectory(prefix="medray-masks-") as tmp:
        for fname, blob, geometry in zip(df["mask_file"], df["mask"], df["geometry"]) if len(df) else ():
            target = medray_io.join(mask_dir, fname)
            local = medray_io.local_path(target) if medray_io.is_local(target) else str(Path(tmp) / fname)
            recipe.write_mask(model, unpack_mask(blob), bytes(geometry), local)
            if not medray_io.is_local(target):
                medray_io.write_bytes(target, Path(local).read_bytes())
