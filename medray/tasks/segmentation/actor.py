"""What a segmentation actor does around the backend: MONAI's sliding window whose
predictor is the backend's session, the argmax mask, Dice / HD95 / surface Dice vs the
labels, and the case's timings."""

from __future__ import annotations

import hashlib
import time
import warnings
from typing import TYPE_CHECKING

import numpy as np

from medray.tasks.segmentation.masks import mask_name, pack_mask
from medray.tasks.segmentation.read import VECTORS

if TYPE_CHECKING:
    from medray.backends.base import Backend
    from medray.specs import RunSpec


def segment(sliding: dict, backend: Backend, spec: RunSpec, image: np.ndarray) -> tuple[np.ndarray, dict]:
    """``image`` ``(C, D, H, W)`` → uint8 mask ``(D, H, W)`` and its timings.

    The window batches are sliced out of the one volume tensor by MONAI (a copy of
    each window batch, never of the volume); ``latency_ms`` sums the backend calls.
    """
    import torch
    from monai.inferers import sliding_window_inference

    calls: list[float] = []
    windows = [0]

    def run_windows(w: torch.Tensor) -> torch.Tensor:
        x = np.ascontiguousarray(w.numpy())  # torch.cat made it contiguous: no copy
        out = backend.infer(x)
        calls.append(backend.last_ms)
        windows[0] += len(x)
        return torch.from_numpy(out)

    with warnings.catch_warnings():
        # Ray hands read-only arrays; MONAI only reads the input (slices + pad copy).
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        t = torch.from_numpy(image)[None]
    t0 = time.perf_counter()
    with torch.inference_mode():
        logits = sliding_window_inference(
            t,
            roi_size=list(spec.model.spatial),
            sw_batch_size=spec.batch_size,
            predictor=run_windows,
            overlap=sliding["overlap"],
            mode=sliding["mode"],
            sigma_scale=sliding["sigma_scale"],
        )
        mask = logits[0].argmax(0).to(torch.uint8).numpy()
    sw_ms = (time.perf_counter() - t0) * 1e3
    return mask, {"latency_ms": float(sum(calls)), "sw_ms": sw_ms, "n_calls": len(calls), "n_windows": windows[0]}


def predict(sliding: dict, k: int, tolerance_mm: float | None, backend: Backend, spec: RunSpec,
            batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Outputs of the readable cases of ``batch`` (one row per case): ``k`` labels with the
    background, HD95 / surface Dice at ``tolerance_mm`` (None = Dice only)."""
    from medray.metrics.segmentation import dice_per_class, surface_distances

    rows = []
    blank = np.full(k - 1, np.nan)
    for i in range(len(batch["sample_id"])):
        mask, timing = segment(sliding, backend, spec, np.asarray(batch["image"][i], dtype=np.float32))
        blob = pack_mask(mask)
        has = bool(batch["has_label"][i])
        hd, nsd = blank, blank
        if has and tolerance_mm is not None:  # in the model's voxel space, its spacing
            hd, nsd = surface_distances(mask, np.asarray(batch["label"][i]), k, np.asarray(batch["spacing"][i]),
                                        tolerance_mm)
        rows.append({
            "dice": dice_per_class(mask, np.asarray(batch["label"][i]), k) if has else blank,
            "hd95": hd,
            "surface_dice": nsd,
            **timing,
            "model_shape": np.asarray(mask.shape, dtype=np.float64),
            "mask": blob,
            "mask_sha256": hashlib.sha256(blob).hexdigest(),
            "mask_file": mask_name(batch["sample_id"][i]),
        })
    out = columns(rows)
    # The case's latency is its backend time; every case is its own "batch".
    out["batch_ms"] = out["latency_ms"].astype(np.float64)
    out["batch_size"] = np.ones(len(rows), dtype=np.int32)
    for key in ("has_label", *VECTORS):
        out[key] = np.asarray(batch[key])
    return out


def placeholder(num_classes: int, n: int) -> dict[str, np.ndarray]:
    """The columns of :func:`predict` for ``n`` cases that could not be read, blank."""
    blank = np.full(num_classes - 1, np.nan)
    row = {"dice": blank, "hd95": blank, "surface_dice": blank, "latency_ms": 0.0, "sw_ms": 0.0, "n_calls": 0, "n_windows": 0,
           "model_shape": np.zeros(3), "mask": b"", "mask_sha256": "", "mask_file": ""}
    out = columns([row] * n)
    out["batch_ms"] = np.zeros(n, dtype=np.float64)
    out["batch_size"] = np.zeros(n, dtype=np.int32)
    for k in ("has_label", *VECTORS):
        out[k] = np.zeros(n, dtype=bool) if k == "has_label" else np.zeros((n, 3))
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


