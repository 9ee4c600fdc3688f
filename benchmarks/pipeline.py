"""How close does the medray pipeline come to the bare backend?  (issue: performance)

Measures, in one run on one machine, for one model/backend/precision/batch:
  (a) bare      — the backend loop on pre-decoded, pre-normalised tensors (model-only ceiling)
  (b) pipeline  — medray's Ray Data pipeline end to end on image files
  (c) predecoded— the same pipeline with decoding removed (uint8 tensors fed through Ray Data)
  (d) dataloader— what a user writes by hand: a PyTorch DataLoader with workers feeding the
                  same backend
and prints images/s (median and spread over repeats) with the ratios b/a, c/a, b/d (taken within
each repeat, then their median and spread), plus the FLOP utilisation of (a) against a measured fp32 matmul peak.

    python benchmarks/pipeline.py --model densenet121 --backend onnxruntime --precision fp32 \\
        --batch-size 16 --num-images 512 --json out.json

Random weights (speed does not depend on them); the images are real JPEG files of a
radiograph-like size written by the script.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from medray.machine import machine


def write_images(root: Path, n: int, size: int, seed: int = 0) -> pd.DataFrame:
    """``n`` grey JPEGs of ``size`` px with smooth structure + noise (compresses like a radiograph)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    base = 120 + 60 * np.sin(6 * xx) * np.cos(4 * yy)
    rows = []
    for i in range(n):
        img = base + rng.normal(0, 12, (size, size)) + 40 * np.exp(-((xx - rng.random()) ** 2 + (yy - rng.random()) ** 2) * 30)
        path = root / f"img_{i:05d}.jpeg"
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path, quality=90)
        rows.append({"sample_id": path.name, "path": str(path), "split": "test", "target": 0})
    return pd.DataFrame(rows)


def matmul_peak_gflops(threads: int, n: int = 2048, reps: int = 5) -> float:
    """Measured fp32 matmul peak of this machine (the physical limit for a CNN on CPU)."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.matmul(a, b)
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def model_gflops(model, input_shape) -> float:
    """Forward FLOPs of one image (2 × multiply-adds), counted by PyTorch."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(torch.zeros((1, *input_shape)))
    return fc.get_total_flops() / 1e9


def make_spec(args, ckpt: Path, sha: str, threads: int):
    from medray.config import backend_config
    from medray.specs import ModelSpec, RunSpec

    model = ModelSpec(args.model, args.num_classes, 3, args.input_size, str(ckpt), sha)
    return RunSpec(
        name=f"{args.backend}-{args.precision}",
        role="candidate",
        backend=backend_config(args.backend),
        precision=args.precision,
        device="cpu",
        batch_size=args.batch_size,
        streams=args.streams,
        model=model,
        threads=threads,
        warmup_batches=args.warmup,
    )


def bench_bare(backend, x: np.ndarray, bs: int) -> float:
    """(a) images/s of the backend alone over pre-normalised float batches."""
    n = len(x)
    t0 = time.perf_counter()
    for i in range(0, n, bs):
        backend.infer(x[i : i + bs])
    return n / (time.perf_counter() - t0)


def bench_dataloader(backend, samples: pd.DataFrame, args, workers: int) -> float:
    """(d) the hand-written loop: DataLoader workers decode, the main process infers."""
    import torch
    from torch.utils.data import DataLoader, Dataset

    from medray.data.preprocess import decode_gray, to_model_input

    class Images(Dataset):
        def __len__(self):
            return len(samples)

        def __getitem__(self, i):
            return torch.from_numpy(np.array(decode_gray(samples["path"].iat[i], args.input_size)))

    def init(_):
        torch.set_num_threads(1)

    loader = DataLoader(Images(), batch_size=args.batch_size, num_workers=workers, worker_init_fn=init, prefetch_factor=4)
    # The pipeline's end-to-end window (medray.pipeline.execute.rates): from the first
    # backend call to the end of the last, so worker start-up is left out of both.
    n, t_first = 0, None
    for batch in loader:
        if t_first is None:
            t_first = time.perf_counter()
        x = to_model_input(batch.numpy(), 3)
        backend.infer(x)
        n += len(x)
    return n / (time.perf_counter() - t_first)


def bench_pipeline(spec, samples: pd.DataFrame, images: np.ndarray | None, cores: int) -> float:
    """(b) / (c) medray's pipeline; ``images`` given = pre-decoded uint8 fed to Ray Data."""
    import ray.data

    from medray.pipeline.execute import collect, predict, rates, read_dataset
    from medray.pipeline.resources import plan_pool
    from medray.tasks.classification import ClassificationTask

    plan = plan_pool(
        device="cpu",
        streams=spec.streams,
        cluster_cpus=cores,
        cluster_gpus=0,
        node_cores=cores,
        reserve_cpus=1.0,
        threads=spec.backend.threads,
    )
    from dataclasses import replace

    spec = replace(spec, threads=plan.threads)
    task = ClassificationTask()
    block = task.block_size(len(samples), spec, plan.actors, None)
    if images is None:
        ds = read_dataset(task, samples, spec, plan.actors, block)
    else:
        ids = samples["sample_id"].to_numpy()
        blocks = [{"sample_id": ids[i : i + block], "image": images[i : i + block]} for i in range(0, len(ids), block)]
        ds = ray.data.from_items([{"sample_id": s, "image": im} for b in blocks for s, im in zip(b["sample_id"], b["image"])],
                                 override_num_blocks=len(blocks))
    df, clock = collect(predict(ds, spec, plan, task, block=block))
    assert len(df) == len(samples), (len(df), len(samples))
    return rates(df, clock)["throughput_sps"]


def summary(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": values}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="densenet121", help="timm architecture (random weights)")
    p.add_argument("--backend", default="onnxruntime")
    p.add_argument("--precision", default="fp32")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--streams", type=int, default=1)
    p.add_argument("--num-images", type=int, default=512)
    p.add_argument("--image-size", type=int, default=1024, help="side of the JPEG files written (px)")
    p.add_argument("--input-size", type=int, default=224, help="model input side (px)")
    p.add_argument("--num-classes", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: cores)")
    p.add_argument("--workdir", default=None, help="where to write images/cache (default: a temp dir)")
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args(argv)

    import ray
    import torch

    from medray.backends import get_backend
    from medray.backends.artifacts import ArtifactCache
    from medray.data.preprocess import decode_gray, to_model_input
    from medray.io import file_sha256
    from medray.models.factory import build_model, save_checkpoint

    cores = len(os.sched_getaffinity(0))
    work = Path(args.workdir or tempfile.mkdtemp(prefix="medray-bench-"))
    print(f"machine: {machine()}", flush=True)
    samples = write_images(work / "images", args.num_images, args.image_size)
    calib = write_images(work / "calibration", 32, args.image_size, seed=1)
    torch.manual_seed(0)
    model = build_model(args.model, args.num_classes, 3).eval()
    ckpt = save_checkpoint(model, work / "model.pt", {"arch": args.model})
    gflops = model_gflops(model, (3, args.input_size, args.input_size))
    del model
    spec = make_spec(args, ckpt, file_sha256(ckpt), threads=cores)
    from functools import partial

    from medray.data.calibration import CalibrationSource, load_calibration

    source = CalibrationSource(calib, partial(load_calibration, prep=args.input_size, in_chans=3))
    spec.artifact = get_backend(args.backend).prepare(spec, ArtifactCache(work / "cache"), {"calibration": source})
    artifact_path = spec.artifact["path"] if spec.artifact else str(ckpt)

    u8 = np.stack([decode_gray(p, args.input_size) for p in samples["path"]])
    x = to_model_input(u8, 3)
    backend = get_backend(args.backend)(spec).load()

    measures = {
        "bare": lambda: bench_bare(backend, x, args.batch_size),
        "dataloader": lambda: bench_dataloader(backend, samples, args, args.workers or cores),
        "pipeline": lambda: bench_pipeline(spec, samples, None, cores),
        "predecoded": lambda: bench_pipeline(spec, samples, u8, cores),
    }
    order = list(measures)
    res: dict[str, list[float]] = {k: [] for k in order}
    ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False)
    try:
        for r in range(args.repeats):
            # Rotated each repeat so that no measure always runs first (or right after Ray
            # Data's actors exit); the ratios are taken within a repeat, where drift of a
            # shared or throttled machine hits the four measures alike.
            for k in order[r % 4 :] + order[: r % 4]:
                res[k].append(measures[k]())
            print(f"repeat {r + 1}/{args.repeats}: " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in res.items()), flush=True)
    finally:
        ray.shutdown()
        backend.close()

    med = {k: statistics.median(v) for k, v in res.items()}
    pairs = {"b/a": ("pipeline", "bare"), "c/a": ("predecoded", "bare"), "b/d": ("pipeline", "dataloader")}
    paired = {name: [n / d for n, d in zip(res[num], res[den])] for name, (num, den) in pairs.items()}
    peak = matmul_peak_gflops(cores)
    out = {
        "model": args.model,
        "backend": args.backend,
        "precision": args.precision,
        "batch_size": args.batch_size,
        "streams": args.streams,
        "num_images": args.num_images,
        "image_size": args.image_size,
        "input_size": args.input_size,
        "repeats": args.repeats,
        "artifact_path": artifact_path,
        "bare_sps": med["bare"],
        "pipeline_sps": med["pipeline"],
        "pipeline_predecoded_sps": med["predecoded"],
        "dataloader_sps": med["dataloader"],
        # Median of the per-repeat ratios (both measures of a ratio from the same repeat).
        "ratios": {name: statistics.median(v) for name, v in paired.items()},
        "ratio_spread": {name: summary(v) for name, v in paired.items()},
        # The ratio of the medians, for comparison: mixes repeats, so drift can move it.
        "ratios_of_medians": {name: med[num] / med[den] for name, (num, den) in pairs.items()},
        "spread": {k: summary(v) for k, v in res.items()},
        "model_gflops_per_image": gflops,
        "matmul_peak_gflops": peak,
        "bare_flop_utilisation": gflops * med["bare"] / peak,
        "machine": machine(),
    }
    print(json.dumps({k: out[k] for k in ("bare_sps", "pipeline_sps", "pipeline_predecoded_sps", "dataloader_sps", "ratios",
                                          "ratios_of_medians")}, indent=2))
    for name, sp in out["ratio_spread"].items():
        print(f"{name}: median {sp['median']:.3f} [{sp['min']:.3f}-{sp['max']:.3f}] over {len(sp['runs'])} repeats")
    print(f"FLOP utilisation of the bare loop: {100 * out['bare_flop_utilisation']:.0f}% of a {peak:.0f} GFLOP/s matmul peak")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
