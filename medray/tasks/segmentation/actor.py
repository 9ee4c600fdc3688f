"""What a segmentation actor does around the backend: the model's recipe runs its windows
with the backend's sessions as its network calls (one per member network: nnU-Net's
folds) and gives the mask in the original geometry; then TP/FP/FN/TN, Dice and IoU per
label or region (nnU-Net's numbers), HD95 / surface Dice, the case's timings and the
actor's peak memory while it ran."""

from __future__ import annotations

import hashlib
import time
from typing import TYPE_CHECKING

import numpy as np

from medray.tasks.segmentation.masks import mask_name, pack_mask
from medray.tasks.segmentation.read import VECTORS

if TYPE_CHECKING:
    from medray.backends.base import Backend
    from medray.specs import RunSpec


def member_calls(backend: Backend, spec: RunSpec, times: list[float]) -> list:
    """One network call per member session, each call's backend time appended to ``times``."""
    def call(session):
        def run(x: np.ndarray) -> np.ndarray:
            out = session.infer(x)
            times.append(session.last_ms)
            return out
        return run

    return [call(backend.member(i)) for i in range(max(1, len(spec.model.members)))]


def segment(settings: dict, backend: Backend, spec: RunSpec, image: np.ndarray, geometry: bytes) -> tuple[np.ndarray, dict]:
    """``image`` → the label map (the masks' geometry) and its timings: ``latency_ms`` sums
    the backend calls, ``sw_ms`` is the whole segmentation (windows, blending, the way back)."""
    from medray.models.recipes import recipe_of

    times: list[float] = []
    t0 = time.perf_counter()
    mask, info = recipe_of(spec.model).segment(spec.model, settings, member_calls(backend, spec, times), image,
                                               geometry, spec.batch_size)
    sw_ms = (time.perf_counter() - t0) * 1e3
    return mask, {"latency_ms": float(sum(times)), "sw_ms": sw_ms, "n_calls": len(times), "n_windows": int(info["n_windows"]),
                  "post_ms": float(info.get("post_ms", 0.0)), "model_shape": np.asarray(info["model_shape"], dtype=np.float64)}


def reset_peak_memory() -> bool:
    """Start measuring this process's peak memory afresh (Linux: clear_refs 5 resets VmHWM)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def peak_memory_mb() -> float:
    """This process's peak resident memory (MiB) since the last reset (else since its start)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def warm_metrics(task) -> None:
    """Run :func:`case_metrics` once on a toy case: its first call imports MONAI (seconds),
    which belongs to the actor's start-up, not to the first case's time."""
    if not task.regions:
        return
    toy = np.zeros((4, 4, 4), np.uint8)
    toy[1:3, 1:3, 1:3] = task.regions[0][0]  # present in the reference: the surface metrics run
    case_metrics(toy, {"has_label": [True], "label": [toy], "mask_spacing": [(1.0, 1.0, 1.0)]}, 0, task)


def case_metrics(mask: np.ndarray, batch: dict, i: int, task) -> dict:
    """TP/FP/FN/TN, Dice and IoU per label or region, HD95 and surface Dice of one case."""
    from medray.metrics.segmentation import dice_iou, overlap_counts, region_surface_distances

    blank = np.full(len(task.regions), np.nan)
    if not bool(batch["has_label"][i]):
        return {"dice": blank, "iou": blank, "counts": np.full((len(task.regions), 4), -1, np.int64),
                "hd95": blank, "surface_dice": blank}
    label = np.asarray(batch["label"][i])
    counts = overlap_counts(mask, label, task.regions, task.ignore_label)
    dice, iou = dice_iou(counts)
    hd, nsd = blank, blank
    if task.surface_tolerance_mm is not None:
        hd, nsd = region_surface_distances(mask, label, task.regions, np.asarray(batch["mask_spacing"][i]),
                                           task.surface_tolerance_mm)
    return {"dice": dice, "iou": iou, "counts": counts, "hd95": hd, "surface_dice": nsd}


def predict(task, backend: Backend, spec: RunSpec, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Outputs of the readable cases of ``batch`` (one row per case)."""
    rows = []
    for i in range(len(batch["sample_id"])):
        exact = reset_peak_memory()
        mask, timing = segment(task.settings, backend, spec, np.asarray(batch["image"][i], dtype=np.float32),
                               bytes(batch["geometry"][i]))
        metrics = case_metrics(mask, batch, i, task)
        blob = pack_mask(mask)
        rows.append({**metrics, **timing, "peak_rss_mb": peak_memory_mb() if exact else np.nan, "mask": blob,
                     "mask_sha256": hashlib.sha256(blob).hexdigest(), "mask_file": mask_name(batch["sample_id"][i], batch["path"][i] if "path" in batch else "")})
    out = columns(rows)
    # The case's latency is its backend time; every case is its own "batch".
    out["batch_ms"] = out["latency_ms"].astype(np.float64)
    out["batch_size"] = np.ones(len(rows), dtype=np.int32)
    for key in ("has_label", "geometry", *VECTORS):
        out[key] = np.asarray(batch[key], dtype=object) if key == "geometry" else np.asarray(batch[key])
    return out


def placeholder(regions: int, n: int) -> dict[str, np.ndarray]:
    """The columns of :func:`predict` for ``n`` cases that could not be read, blank."""
    blank = np.full(regions, np.nan)
    row = {"dice": blank, "iou": blank, "counts": np.full((regions, 4), -1, np.int64), "hd95": blank,
           "surface_dice": blank, "latency_ms": 0.0, "sw_ms": 0.0, "n_calls": 0, "n_windows": 0, "post_ms": 0.0,
           "model_shape": np.zeros(3), "peak_rss_mb": np.nan, "mask": b"", "mask_sha256": "", "mask_file": ""}
    out = columns([row] * n)
    out["batch_ms"] = np.zeros(n, dtype=np.float64)
    out["batch_size"] = np.zeros(n, dtype=np.int32)
    out["has_label"] = np.zeros(n, dtype=bool)
    out["geometry"] = np.array([b""] * n, dtype=object)
    for k in VECTORS:
        out[k] = np.zeros((n, 3))
    return out


def columns(rows: list[dict]) -> dict[str, np.ndarray]:
    """Row dicts → columns (vectors stacked, bytes as an object array)."""
    out = {}
    for k in rows[0] if rows else ():
        vals = [r[k] for r in rows]
        if isinstance(vals[0], np.ndarray):
            out[k] = np.stack(vals)
        elif isinstance(vals[0], (bytes, str)):  # object, not a fixed-width dtype a longer value would not fit
            out[k] = np.array(vals, dtype=object)
        else:
            out[k] = np.asarray(vals)
    return out
