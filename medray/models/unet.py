"""MONAI 3D UNet: the model factory branch, the segmentation demo model and its resolution.

The demo is a small ``monai.networks.nets.UNet`` trained by medray on the train split of
the synthetic MSD phantoms with *exactly* the evaluation preprocessing
(:func:`medray.data.msd.load_case`) on random ROI-sized crops, so that evaluating it
measures the backend, not a preprocessing mismatch.

    python -m medray.models.unet --root <MSD folder> --out /tmp/unet.pt
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medray.models.config import TrainConfig
from medray.models.factory import build_unet

if TYPE_CHECKING:
    from medray.data.msd import Preprocessing
    from medray.data.table import SampleTable
    from medray.models.config import ModelRequest
    from medray.specs import ModelSpec

log = logging.getLogger("medray.train")

ARCH = "monai_unet"
SEGMENTATION_ARCHS = (ARCH,)
# Chosen by measurement on a 2-core CPU: ~150 k parameters, a few ms per 48³ voxel window.
DEMO_NET: dict[str, Any] = {"channels": [8, 16, 32, 64], "strides": [2, 2, 2], "num_res_units": 1}
DEMO_ROI = [48, 48, 48]
# What the demo trains with when `model=demo` (the classification demo's config) is given
# with task=segmentation; conf/model/demo_unet.yaml sets the same values.
DEMO_TRAIN = {"epochs": 12, "batch_size": 2, "lr": 1e-2}
def total_stride(net: dict) -> int:
    """Every ROI axis must be a multiple of this (the UNet's down-sampling factor)."""
    return int(np.prod([int(s) for s in net.get("strides", [])] or [1]))


# --------------------------------------------------------------------------- training


def _cpu_count() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


# Preprocessed training volumes held in memory at most (a real MSD task is tens of GB).
TRAIN_MEMORY_BYTES = 2 << 30


def load_split(table: SampleTable, split: str, prep: Preprocessing, max_bytes: int | None = None) -> list[dict]:
    """Preprocessed cases of ``split``, in order, until ``max_bytes`` of volumes are loaded."""
    from medray.data.msd import load_case

    df = table.split(split)
    cases, total = [], 0
    for p, lp in zip(df["path"], df["label_path"]):
        if max_bytes is not None and cases and total >= max_bytes:
            log.warning("demo UNet: training on the first %d of %d %s cases (%.1f GiB of volumes in memory)",
                        len(cases), len(df), split, total / 2**30)
            break
        cases.append(load_case(p, lp or None, prep, len(table.classes)))
        total += cases[-1]["image"].nbytes + (cases[-1]["label"].nbytes if cases[-1]["label"] is not None else 0)
    return cases


def _pad_to(x: np.ndarray, roi) -> np.ndarray:
    """Pad the spatial axes up to ``roi`` (as sliding_window_inference does: constant 0)."""
    pad = [(0, 0)] * (x.ndim - 3) + [(0, max(0, r - s)) for s, r in zip(x.shape[-3:], roi)]
    return np.pad(x, pad) if any(p[1] for p in pad) else x


def _crops(cases: list[dict], roi, n: int, rng: np.random.Generator, pos_ratio: float = 2 / 3):
    """``n`` random ROI crops; ``pos_ratio`` of them centred on a foreground voxel."""
    xs, ys = [], []
    for _ in range(n):
        case = cases[rng.integers(len(cases))]
        img, lab = _pad_to(case["image"], roi), _pad_to(case["label"], roi)
        shape = lab.shape
        fg = case.setdefault("_fg", np.argwhere(lab > 0))
        if len(fg) and rng.random() < pos_ratio:
            c = fg[rng.integers(len(fg))]
            start = [int(np.clip(ci - r // 2, 0, s - r)) for ci, r, s in zip(c, roi, shape)]
        else:
            start = [int(rng.integers(0, s - r + 1)) for r, s in zip(roi, shape)]
        sl = tuple(slice(a, a + r) for a, r in zip(start, roi))
        xs.append(img[(slice(None), *sl)])
        ys.append(lab[sl][None])
    return np.stack(xs), np.stack(ys)


def _evaluate(model, cases: list[dict], roi, num_classes: int) -> float:
    """Mean Dice (MONAI, background excluded) of sliding-window predictions."""
    import torch
    from monai.inferers import sliding_window_inference

    from medray.metrics.segmentation import dice_per_class

    scores = []
    with torch.inference_mode():
        for c in cases:
            out = sliding_window_inference(torch.from_numpy(c["image"][None]), roi, 4, model, overlap=0.25)
            mask = out[0].argmax(0).numpy().astype(np.uint8)
            scores.append(dice_per_class(mask, c["label"], num_classes))
    return float(np.nanmean(np.stack(scores))) if scores else float("nan")


def train_demo_unet(
    table: SampleTable,
    prep: Preprocessing,
    out_path: str | Path,
    *,
    net: dict | None = None,
    roi=DEMO_ROI,
    train: TrainConfig | None = None,
    val_split: str | None = "calibration",
) -> dict:
    """Train the demo UNet on ``table``'s train split and save a medray checkpoint
    (``train``: epochs, batch size, learning rate, seed; default :data:`DEMO_TRAIN`).

    One epoch = ``ceil(n_train / batch_size)`` steps of ``batch_size`` random ROI crops
    (two thirds centred on foreground), DiceCE loss, Adam with a cosine schedule.
    Returns a summary (steps, seconds, validation Dice on ``val_split`` when present).
    """
    import torch
    from monai.losses import DiceCELoss

    from medray.models.factory import save_checkpoint

    train = train or TrainConfig(**DEMO_TRAIN)
    epochs, batch_size, lr, seed = train.epochs, train.batch_size, train.lr, train.seed

    net = dict(net or DEMO_NET)
    roi = [int(v) for v in roi]
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    torch.set_num_threads(_cpu_count())
    rng = np.random.default_rng(seed)
    if not len(table.split("train")) or (table.split("train")["label_path"] == "").any():
        raise ValueError(f"{table.name}: the demo UNet needs a labelled train split (dataset.json 'training')")
    train = load_split(table, "train", prep, TRAIN_MEMORY_BYTES)
    if any(c["label"] is None for c in train):
        raise ValueError(f"{table.name}: the demo UNet needs a labelled train split (dataset.json 'training')")
    k = len(table.classes)
    in_chans = int(train[0]["image"].shape[0])
    model = build_unet(k, in_chans, **net)
    steps = max(1, epochs * math.ceil(len(train) / batch_size))
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    log.info("demo UNet: %d train cases, %d steps of %d×%s crops, %d parameters", len(train), steps, batch_size,
             "×".join(map(str, roi)), sum(p.numel() for p in model.parameters()))
    model.train()
    losses = []
    for step in range(steps):
        x, y = _crops(train, roi, batch_size, rng)
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(torch.from_numpy(x)), torch.from_numpy(y.astype(np.int64)))
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        if (step + 1) % max(1, steps // 10) == 0:
            log.info("demo UNet: step %d/%d loss %.3f (%.0fs)", step + 1, steps, np.mean(losses[-20:]), time.perf_counter() - t0)
    model.eval()
    summary: dict[str, Any] = {"steps": steps, "train_s": time.perf_counter() - t0, "final_loss": float(np.mean(losses[-20:]))}
    val = table.split(val_split) if val_split else None
    if val is not None and len(val) and (val["label_path"] != "").all():
        summary["val_dice"] = _evaluate(model, load_split(table, val_split, prep), roi, k)
        summary["val_split"] = val_split
    meta = {
        "arch": ARCH,
        "task": "segmentation",
        "classes": list(table.classes),
        "num_classes": k,
        "in_chans": in_chans,
        "net": net,
        "roi_size": roi,
        "preprocessing": prep.to_dict(),
        "trained_on": table.name,
        "train": {"epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed, **{k2: v for k2, v in summary.items() if k2 != "val_split"}},
    }
    save_checkpoint(model, out_path, meta)
    summary["total_s"] = time.perf_counter() - t0
    log.info("demo UNet: saved %s (%s)", out_path, {k2: round(v, 3) if isinstance(v, float) else v for k2, v in summary.items()})
    return summary


# --------------------------------------------------------------------------- resolution


def _hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:10]


def resolve_segmentation_model(cfg: ModelRequest, table: SampleTable) -> ModelSpec:
    """Config + MSD table → :class:`ModelSpec` with the ROI shape and the resolved volume
    preprocessing (trains the demo if absent).

    ``model=demo`` always means the UNet demo here (whatever arch the classification demo
    config names); a user's checkpoint must be a MONAI UNet with ``net`` settings from
    ``model.net`` or its meta, and is checked against the dataset's labels.
    """
    from medray.data.config import VolumeConfig
    from medray.data.msd import resolve_preprocessing
    from medray.errors import ConfigError
    from medray.io import file_sha256
    from medray.models.factory import CheckpointError, read_checkpoint
    from medray.models.resolve import check_class_count
    from medray.specs import ModelSpec

    if table.values is not None and any(len(v) > 1 for v in table.values.values()):
        raise ConfigError(f"dataset {table.name} has region-based labels {table.values}; a MONAI UNet predicts one "
                          "label per voxel (argmax): evaluate it on label-per-class data, or an nnU-Net model (model=nnunet)")
    prep = resolve_preprocessing(cfg.volume or VolumeConfig(), list(table.channels) or ["unknown"])
    m = cfg.model
    k = check_class_count(m, table)
    checkpoint = m.checkpoint
    if checkpoint is None:  # the demo
        use_cfg = m.arch in SEGMENTATION_ARCHS
        if not use_cfg:
            log.info("model=demo with task=segmentation: using the MONAI UNet demo (model.arch=%s is a classifier)", m.arch)
        net = dict(m.net) if (use_cfg and m.net) else dict(DEMO_NET)
        roi = list(cfg.roi_size or DEMO_ROI)
        train = {"epochs": m.train.epochs, "batch_size": m.train.batch_size, "lr": m.train.lr} if use_cfg else dict(DEMO_TRAIN)
        train["seed"] = m.train.seed
        gen = json.loads((Path(table.root) / "dataset.json").read_text()).get("generator") or {"root": table.root}
        tag = f"{ARCH}-{_hash([net, roi, train, prep.to_dict(), gen, table.classes])}"
        path = Path(cfg.cache_dir) / "models" / f"demo-seg-{table.name}-{tag}.pt"
        if not path.is_file():
            _check_roi(roi, net, "sliding_window.roi_size")
            log.info("demo UNet not cached: training on %s (about 2-3 minutes on 2 CPUs)", table.name)
            try:
                summary = train_demo_unet(table, prep, path, net=net, roi=roi, train=TrainConfig(**train))
            except ValueError as e:
                if "labelled train split" not in str(e):
                    raise
                raise ConfigError(
                    f"model=demo: {e}; the demo UNet is trained on the dataset's labelled cases — pass your model: "
                    "model.arch=monai_unet model.checkpoint=<state dict> (+ model.net if it has no medray meta)"
                ) from None
            log.info("demo UNet trained: %s", {a: b for a, b in summary.items() if not isinstance(b, (list, dict))})
        checkpoint = str(path)
    elif m.arch not in SEGMENTATION_ARCHS:
        raise ConfigError(f"model.arch={m.arch!r}: segmentation models supported: {', '.join(SEGMENTATION_ARCHS)}")
    try:
        sd, meta = read_checkpoint(checkpoint, trust=m.trust_checkpoint)
    except CheckpointError as e:
        raise ConfigError(str(e)) from None
    # The checkpoint's own record wins: model.net (which conf/model/demo_unet.yaml sets) is
    # for state dicts saved without medray's meta.
    net = dict(meta.get("net") or m.net or {})
    if m.net and meta.get("net") and dict(m.net) != dict(meta["net"]) and m.checkpoint is not None:
        log.info("model.net=%s differs from the checkpoint's meta %s: using the checkpoint's", dict(m.net), meta["net"])
    if not net:
        raise ConfigError(
            f"model.checkpoint={checkpoint}: no UNet settings in its meta; give them, e.g. "
            "model.net='{channels: [16, 32, 64, 128], strides: [2, 2, 2], num_res_units: 2}'"
        )
    roi = cfg.roi_size or meta.get("roi_size")
    if not roi:
        raise ConfigError(f"sliding_window.roi_size=None: the checkpoint {checkpoint} records no training ROI; set e.g. sliding_window.roi_size=[96,96,96]")
    roi = [int(v) for v in roi]
    _check_roi(roi, net, "sliding_window.roi_size")
    if meta.get("classes") and list(meta["classes"]) != list(table.classes):
        raise ConfigError(
            f"model.checkpoint={checkpoint}: trained on labels {meta['classes']} but dataset {table.name} has "
            f"{table.classes}; the label order must match"
        )
    in_chans = int(meta.get("in_chans") or m.in_chans)
    try:  # build once on the driver: a wrong net / class count fails here, not in an actor
        model = build_unet(k, in_chans, **net)
        missing, unexpected = model.load_state_dict(sd, strict=False)
    except (ValueError, RuntimeError, TypeError) as e:
        raise ConfigError(f"model.checkpoint={checkpoint}: does not fit a MONAI UNet with {k} labels and net={net}: {str(e)[:300]}") from None
    if missing or unexpected:
        raise ConfigError(
            f"model.checkpoint={checkpoint}: does not fit model.net={net} (missing keys {missing[:3]}, "
            f"unexpected {unexpected[:3]}); set model.net to the settings it was trained with"
        )
    del model
    trained_prep = meta.get("preprocessing")
    if trained_prep and trained_prep != prep.to_dict():
        diff = {a: (trained_prep.get(a), b) for a, b in prep.to_dict().items() if trained_prep.get(a) != b}
        log.warning("model trained with other preprocessing than configured (trained, configured): %s", diff)
    return ModelSpec(
        arch=ARCH,
        num_classes=k,
        in_chans=in_chans,
        input_size=roi[0],
        checkpoint=checkpoint,
        checkpoint_sha256=file_sha256(checkpoint),
        trust_checkpoint=m.trust_checkpoint,
        task="segmentation",
        spatial=tuple(roi),
        net=net,
        preprocess=prep.to_dict(),
        recipe="monai",
    )


def _check_roi(roi, net: dict, key: str) -> None:
    from medray.errors import ConfigError

    s = total_stride(net)
    if any(r % s for r in roi):
        raise ConfigError(f"{key}={list(roi)}: each size must be a multiple of {s} (the UNet's strides {net.get('strides')})")


def main() -> None:  # pragma: no cover - manual tool
    import argparse

    from medray.data.config import VolumeConfig
    from medray.data.msd import modalities, read_dataset_json, read_msd, resolve_preprocessing

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--epochs", type=int, default=DEMO_TRAIN["epochs"])
    ap.add_argument("--batch-size", type=int, default=DEMO_TRAIN["batch_size"])
    ap.add_argument("--lr", type=float, default=DEMO_TRAIN["lr"])
    a = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    table = read_msd(a.root)
    prep = resolve_preprocessing(VolumeConfig(), modalities(read_dataset_json(a.root)))
    log.info("demo UNet trained: %s", train_demo_unet(table, prep, a.out, train=TrainConfig(epochs=a.epochs, batch_size=a.batch_size, lr=a.lr)))


if __name__ == "__main__":  # pragma: no cover
    main()
