"""Train a small demo classifier on a dataset's train split (CPU, a minute or two).

The demo model exists so that medray can be tried end to end without downloading a
model: it is trained with *exactly* the evaluation preprocessing
(:func:`medray.data.preprocess.decode_gray` then :func:`~medray.data.preprocess.to_model_input`),
so an evaluation of its checkpoint measures the backend, not a preprocessing mismatch.

    python -m medray.models.demo --kind binary --root /tmp/syn --out /tmp/demo.pt
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import numpy as np

from medray.data.preprocess import decode_gray, to_model_input
from medray.data.table import SampleTable
from medray.models.config import TrainConfig

log = logging.getLogger("medray.train")

# Chosen by measurement on a 2-core CPU (python -m medray.models.demo): resnet10t trains
# reliably from scratch (plain convs + BN + ReLU, also INT8-friendly for the backends);
# MobileNetV3 / LCNet are 2-4x faster per image but learned far slower from scratch, and
# regnetx_002 at 128 px reached a lower AUC in more time.  96 px is ~1.8x cheaper than
# 128 px and enough for these findings.  Batch 32 beat 64 at equal epochs (more steps).
DEFAULT_ARCH = "resnet10t"
DEFAULT_INPUT_SIZE = 96
DEFAULT_EPOCHS = {"binary": 6, "multilabel": 5}


def _cpu_count() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def decode_split(df, input_size: int, threads: int | None = None) -> np.ndarray:
    """Decode every image of ``df["path"]`` to one ``(N, size, size)`` uint8 array."""
    from concurrent.futures import ThreadPoolExecutor

    paths = list(df["path"])
    out = np.empty((len(paths), input_size, input_size), dtype=np.uint8)
    if not paths:
        return out

    def one(i: int) -> None:
        out[i] = decode_gray(paths[i], input_size)

    # PIL releases the GIL while decoding / resizing, so threads scale on the cores.
    with ThreadPoolExecutor(threads or _cpu_count()) as ex:
        list(ex.map(one, range(len(paths))))
    return out


def _shift_batch(x: np.ndarray, rng: np.random.Generator, max_shift: int) -> np.ndarray:
    """Random translation per image (edge-padded): the only augmentation.

    Applied to the uint8 images *before* ``to_model_input`` so the model still sees
    evaluation preprocessing; no flips (the heart is on one side, findings lateralised).
    """
    if max_shift <= 0:
        return x
    n, h, w = x.shape
    pad = np.pad(x, ((0, 0), (max_shift, max_shift), (max_shift, max_shift)), mode="edge")
    dy, dx = rng.integers(0, 2 * max_shift + 1, size=(2, n))
    return np.stack([pad[i, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])


def auc_score(task: str, targets: np.ndarray, logits: np.ndarray) -> tuple[float, dict[str, float]]:
    """Test AUC from raw logits: binary → AUC of softmax[:, 1]; multi-class → macro
    one-vs-rest; multi-label → macro over labels with both outcomes (per-label dict too)."""
    import torch
    from sklearn.metrics import roc_auc_score

    t = torch.from_numpy(logits)
    if task == "multilabel":
        probs = torch.sigmoid(t).numpy()
        per = {j: float(roc_auc_score(targets[:, j], probs[:, j]))
               for j in range(targets.shape[1]) if 0 < targets[:, j].sum() < len(targets)}
        return (float(np.mean(list(per.values()))) if per else float("nan")), per
    probs = torch.softmax(t, dim=1).numpy()
    if probs.shape[1] == 2:
        return float(roc_auc_score(targets, probs[:, 1])), {}
    return float(roc_auc_score(targets, probs, multi_class="ovr", labels=list(range(probs.shape[1])))), {}


def train_demo(
    table: SampleTable,
    arch: str,
    input_size: int,
    in_chans: int,
    out_path: str | Path,
    train: TrainConfig,
    *,
    threads: int | None = None,
) -> dict:
    """Train ``arch`` (timm, random init) on ``table``'s train split and save a medray
    checkpoint to ``out_path``; return a summary with the test-split AUC.  ``train``:
    epochs, batch size, learning rate and seed.

    Cross-entropy for multi-class, BCE-with-logits for multi-label; AdamW with a
    one-cycle schedule; seeded, so the same arguments give the same model on one machine.
    ``threads``: torch threads (default: the usable cores).  On a machine that is already
    busy, fewer is faster: with 2 threads on 2 oversubscribed cores, steps were 3-5x
    slower than with 1 (each thread waits for the other at every op).
    """
    import torch

    from medray.models.factory import build_model, save_checkpoint

    epochs, batch_size, seed, lr = train.epochs, train.batch_size, train.seed, train.lr
    if table.task not in ("multiclass", "multilabel"):
        raise ValueError(f"train_demo: task={table.task!r} is not supported (multiclass or multilabel)")
    train_df, test_df = table.split("train"), table.split("test")
    if len(train_df) < batch_size:
        raise ValueError(
            f"train_demo: the train split of {table.name} has {len(train_df)} samples, fewer "
            f"than batch_size={batch_size}; make it larger or lower the batch size"
        )
    t0 = time.perf_counter()
    threads = threads or _cpu_count()
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(seed)
        rng = np.random.default_rng(seed)
        x_train = decode_split(train_df, input_size, threads)
        y_train = table.targets(train_df)
        x_test = decode_split(test_df, input_size, threads)
        y_test = table.targets(test_df)
        decode_s = time.perf_counter() - t0
        log.info("decoded %d train + %d test images at %d px in %.1f s", len(x_train), len(x_test),
                 input_size, decode_s)

        multilabel = table.task == "multilabel"
        num_classes = len(table.classes)
        model = build_model(arch, num_classes, in_chans)
        # channels_last: ~20-35 % faster convolutions on CPU for these nets.
        model = model.to(memory_format=torch.channels_last).train()
        steps_per_epoch = len(x_train) // batch_size  # drop the last partial batch (BN)
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=lr, total_steps=epochs * steps_per_epoch, pct_start=0.25
        )
        loss_fn = torch.nn.BCEWithLogitsLoss() if multilabel else torch.nn.CrossEntropyLoss()
        bar = _progress(epochs * steps_per_epoch, f"train {arch}")
        loss_v = float("nan")
        for epoch in range(epochs):
            te = time.perf_counter()
            order = rng.permutation(len(x_train))
            total = 0.0
            for b in range(steps_per_epoch):
                idx = order[b * batch_size:(b + 1) * batch_size]
                xb = _shift_batch(x_train[idx], rng, max_shift=input_size // 16)
                x = torch.from_numpy(to_model_input(xb, in_chans)).contiguous(
                    memory_format=torch.channels_last)
                y = torch.from_numpy(y_train[idx].astype(np.float32) if multilabel else y_train[idx])
                loss = loss_fn(model(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total += loss.item()
                if bar is not None:
                    bar.update(1)
            loss_v = total / steps_per_epoch
            log.info("epoch %d/%d: loss %.4f (%.1f s)", epoch + 1, epochs, loss_v,
                     time.perf_counter() - te)
        if bar is not None:
            bar.close()
        train_s = time.perf_counter() - t0 - decode_s

        model = model.to(memory_format=torch.contiguous_format).eval()
        logits = _predict(model, x_test, in_chans, batch_size)
        try:
            auc, per = auc_score(table.task, y_test, logits)
        except ValueError as e:  # e.g. an empty or one-class test split: no AUC to give
            log.warning("no test AUC: %s", e)
            auc, per = float("nan"), {}
        log.info("test AUC %.4f on %d images", auc, len(x_test))
        meta = {
            "arch": arch, "num_classes": num_classes, "in_chans": int(in_chans),
            "input_size": int(input_size), "task": table.task, "classes": list(table.classes),
            "dataset": table.name, "trained_on": "train split", "epochs": int(epochs),
            "seed": int(seed), "test_auc": auc,
        }
        path = save_checkpoint(model, out_path, meta)
    finally:
        torch.set_num_threads(prev_threads)
    summary = {
        **meta, "checkpoint": str(path), "n_train": len(x_train), "n_test": len(x_test),
        "final_loss": loss_v, "decode_s": round(decode_s, 2), "train_s": round(train_s, 2),
        "total_s": round(time.perf_counter() - t0, 2),
    }
    if per:
        summary["test_auc_per_class"] = {table.classes[j]: a for j, a in per.items()}
    return summary


def _predict(model, x_u8: np.ndarray, in_chans: int, batch_size: int) -> np.ndarray:
    import torch

    outs = []
    with torch.inference_mode():
        for b in range(0, len(x_u8), batch_size):
            outs.append(model(torch.from_numpy(to_model_input(x_u8[b:b + batch_size], in_chans))).float().numpy())
    n_out = getattr(model, "num_classes", 0)
    return np.concatenate(outs) if outs else np.zeros((0, n_out), np.float32)


def _progress(total: int, desc: str):
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    # disable=None: no bar when stderr is not a terminal (CI logs, Ray workers).
    return tqdm(total=total, desc=desc, unit="batch", disable=None, leave=False)


def main(argv: list[str] | None = None) -> dict:
    """CLI: make a synthetic dataset (if needed), train the demo model, print a summary."""
    import argparse
    import json
    import resource

    from medray.data.synthetic import ensure_synthetic
    from medray.data.table import read_manifest_dir

    p = argparse.ArgumentParser(prog="python -m medray.models.demo", description=main.__doc__)
    p.add_argument("--kind", choices=["binary", "multilabel"], default="binary")
    p.add_argument("--root", required=True, help="synthetic dataset directory (made if absent)")
    p.add_argument("--out", required=True, help="checkpoint path to write")
    p.add_argument("--n-train", type=int, default=2000)
    p.add_argument("--n-calibration", type=int, default=300)
    p.add_argument("--n-test", type=int, default=1000)
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--arch", default=DEFAULT_ARCH)
    p.add_argument("--input-size", type=int, default=DEFAULT_INPUT_SIZE)
    p.add_argument("--in-chans", type=int, default=3)
    p.add_argument("--epochs", type=int, default=None, help=f"default: {DEFAULT_EPOCHS}")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    t0 = time.perf_counter()
    root = ensure_synthetic(a.kind, a.root, a.n_train, a.n_calibration, a.n_test, a.image_size, a.seed)
    gen_s = time.perf_counter() - t0
    epochs = a.epochs if a.epochs is not None else DEFAULT_EPOCHS[a.kind]
    summary = train_demo(read_manifest_dir(root), a.arch, a.input_size, a.in_chans, a.out,
                         TrainConfig(epochs=epochs, batch_size=a.batch_size, lr=a.lr, seed=a.seed), threads=a.threads)
    summary["generate_s"] = round(gen_s, 2)
    summary["wall_s"] = round(time.perf_counter() - t0, 2)
    # CPU seconds too: on a shared machine wall time says more about the neighbours.
    ru = resource.getrusage(resource.RUSAGE_SELF)
    summary["cpu_s"] = round(ru.ru_utime + ru.ru_stime, 1)
    summary["load_avg_1m"] = round(os.getloadavg()[0], 2)
    log.info("demo trained: %s", json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
