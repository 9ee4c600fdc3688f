"""How close is medray to what this machine can do?  (issue 16: performance at the limit)

On the same files and the same artifact, measures
  * decode   — CPU seconds to decode + preprocess one image (one process = one core);
  * bare     — the backend loop on pre-decoded tensors at the warm run's threads and batch
               (the threads medray's CPU split gave that run);
  * bare_1t  — the same at one thread: the backend's CPU seconds per image;
  * limit    — the machine limit for decode + inference of one image on all its cores:
               cores / (decode s + backend core-s per image);
  * cold     — medray's end-to-end rate (``execute``, the one pipeline), decoding (cache off);
  * warm     — the same reading the decoded cache (filled by a first run);
and prints JSON and a markdown row with cold/limit and warm/bare.

    python benchmarks/limit.py --data jpeg --image-size 1024 --model densenet121 \\
        --backend openvino --precision int8 --batch-size 64 --num-images 512 --json out.json
    python benchmarks/limit.py --data demo --model resnet10t --input-size 96 --backend onnxruntime

Random weights (speed does not depend on them).  ``--data demo``: medray's synthetic binary
test split (256 px PNG); ``--data jpeg``: grey JPEGs of ``--image-size`` px written here.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
from pipeline import make_spec, write_images

from medray.backends import library_modules
from medray.machine import machine


def images(args, work: Path) -> pd.DataFrame:
    if args.data == "jpeg":
        return write_images(work / "images", args.num_images, args.image_size)
    from medray.data.load import select_samples
    from medray.data.synthetic import ensure_synthetic
    from medray.data.table import read_manifest_dir

    root = ensure_synthetic("binary", work / "synthetic", n_train=8, n_calibration=64, n_test=args.num_images, image_size=256)
    return select_samples(read_manifest_dir(root), "test", None, 0)


def decode_cost(paths: list[str], prep: dict, repeats: int) -> float:
    """Seconds per image to decode + preprocess, in this one process (= one core)."""
    from medray.data.preprocess import decode_image

    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for p in paths:
            decode_image(p, prep)
        runs.append((time.perf_counter() - t0) / len(paths))
    return statistics.median(runs)


def bare_rate(spec, x: np.ndarray, repeats: int) -> float:
    """img/s of the backend alone (loaded once, warm), median over repeats."""
    from medray.backends import get_backend

    with get_backend(spec.backend.name)(spec) as b:
        runs = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            for i in range(0, len(x), spec.batch_size):
                b.infer(x[i : i + spec.batch_size])
            runs.append(len(x) / (time.perf_counter() - t0))
    return statistics.median(runs)


def end_to_end(cfg, spec, samples: pd.DataFrame) -> dict:
    """medray's one pipeline (execute) on the files: its two rates and the cache counts."""
    from medray.pipeline.execute import execute
    from medray.tasks.classification import ClassificationTask

    (r,) = execute(cfg, ClassificationTask(), samples.assign(problem=""), [spec])
    return {"throughput_sps": r.throughput_sps, "inference_sps": r.inference_sps, "wall_s": r.wall_s,
            "startup_s": r.startup_s, "read_cache": r.read_cache, "pool": r.pool.describe(), "threads": r.pool.threads}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", choices=["demo", "jpeg"], default="demo")
    p.add_argument("--model", default="resnet10t", help="timm architecture (random weights)")
    p.add_argument("--backend", default="openvino")
    p.add_argument("--precision", default="int8")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--streams", type=int, default=1)
    p.add_argument("--num-images", type=int, default=4000)
    p.add_argument("--image-size", type=int, default=1024, help="--data jpeg: side of the files (px)")
    p.add_argument("--input-size", type=int, default=96, help="model input side (px)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--num-classes", type=int, default=2)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--workdir", default=None)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    import ray
    import torch

    from medray.backends import get_backend
    from medray.backends.artifacts import ArtifactCache
    from medray.config import EvalConfig, RayConfig, backend_config
    from medray.data.calibration import CalibrationSource, load_calibration
    from medray.data.config import DataConfig
    from medray.data.preprocess import decode_image, medray_preset, to_model_input
    from medray.io import file_sha256
    from medray.models.factory import build_model, save_checkpoint

    cores = len(os.sched_getaffinity(0))
    work = Path(args.workdir or tempfile.mkdtemp(prefix="medray-limit-"))
    samples = images(args, work)
    prep = medray_preset(args.input_size, exact=True)  # the default preprocessing (exact decode)
    torch.manual_seed(0)
    ckpt = save_checkpoint(build_model(args.model, args.num_classes, 3).eval(), work / "model.pt", {"arch": args.model})
    spec = make_spec(args, ckpt, file_sha256(ckpt), threads=cores)
    spec.model.preprocess = prep
    calib = CalibrationSource(samples.head(64), partial(load_calibration, prep=prep, in_chans=3))
    spec.artifact = get_backend(args.backend).prepare(spec, ArtifactCache(work / "cache"), {"calibration": calib})

    t_dec = decode_cost(list(samples["path"]), prep, args.repeats)
    x = to_model_input(np.stack([decode_image(p, prep) for p in samples["path"]]), 3, prep)
    bare_1t = bare_rate(replace(spec, threads=1), x, args.repeats)
    limit = cores / (t_dec + 1.0 / bare_1t)
    ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False)
    try:
        base = dict(backend=backend_config(args.backend),
                    precision=args.precision, data=DataConfig(name="synthetic"), ray=RayConfig(num_cpus=cores),
                    batch_size=args.batch_size, streams=args.streams, cache_dir=str(work / "cache"), baseline=None,
                    warmup_batches=2, output_dir=str(work / "out"))
        cold = []
        cfg_off = EvalConfig(**base)
        cfg_off.data.cache = "off"
        for _ in range(args.repeats):
            cold.append(end_to_end(cfg_off, spec, samples))
        cfg_on = EvalConfig(**base)
        cfg_on.data.cache = "on"
        fill = end_to_end(cfg_on, spec, samples)  # decodes and writes the shards
        warm = [end_to_end(cfg_on, spec, samples) for _ in range(args.repeats)]
    finally:
        ray.shutdown()
    threads = warm[0]["threads"]  # the bare loop at the threads the warm runs were given
    bare = bare_rate(replace(spec, threads=threads), x, args.repeats)
    med = lambda runs: statistics.median(r["throughput_sps"] for r in runs)  # noqa: E731
    out = {
        "data": args.data, "image_size": args.image_size if args.data == "jpeg" else 256, "num_images": len(samples),
        "model": args.model, "input_size": args.input_size, "backend": args.backend, "precision": args.precision,
        "batch_size": args.batch_size, "streams": args.streams, "cores": cores,
        "cold_pool": cold[0]["pool"], "warm_pool": warm[0]["pool"], "bare_threads": threads,
        "decode_ms_per_image": 1e3 * t_dec,
        "bare_sps": bare, "bare_1thread_sps": bare_1t, "backend_core_ms_per_image": 1e3 / bare_1t,
        "machine_limit_sps": limit,
        "cold_sps": med(cold), "warm_sps": med(warm),
        "cold_over_limit": med(cold) / limit, "warm_over_bare": med(warm) / bare,
        "cold_runs": cold, "warm_runs": warm, "cache_fill": fill, "repeats": args.repeats,
        "machine": machine(modules=library_modules()),
    }
    row = (f"| {args.data} {out['image_size']} px | {args.model} {args.input_size} | {args.backend}-{args.precision} b{args.batch_size} | "
           f"{out['decode_ms_per_image']:.2f} | {out['backend_core_ms_per_image']:.2f} | {bare:.0f} | {limit:.0f} | "
           f"{med(cold):.0f} ({out['cold_over_limit']:.2f}×) | {med(warm):.0f} ({out['warm_over_bare']:.2f}×) |")
    out["markdown_row"] = row
    print(json.dumps({k: v for k, v in out.items() if not k.endswith("_runs") and k not in ("machine", "cache_fill")}, indent=1))
    print("| data | model | run | decode ms/img (1 core) | backend core-ms/img | bare img/s | limit img/s | cold img/s (/limit) | warm img/s (/bare) |")
    print("|---|---|---|---|---|---|---|---|---|")
    print(row)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2, default=str))
    return out


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
