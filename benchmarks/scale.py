"""A 20,000-image test set at native resolution through the real job: is memory bounded?

Writes an imagefolder set (``test/NORMAL``, ``test/PNEUMONIA``; ``val/`` for INT8 calibration) of radiograph-like images of
1024-2048 px — 8-bit JPEG and 16-bit PNG, as seed 000's LTCXR test set mixes them — then runs
``jobs/evaluate.py`` twice as a user would (cold: decoding and filling the decoded cache;
warm: reading it), with a DenseNet121-size model (random weights, ``preprocess=imagenet``),
and records per run: wall time, img/s, the driver's peak RSS (the job's own process, sampled
every 0.2 s) and the peak of /dev/shm in use (Ray's object store lives there).

    python benchmarks/scale.py --num-images 20000 --distinct 400 --json scale.json

``--distinct`` different images are drawn and the rest of the files are hard links to them
under other names: every file is a separate sample, read and decoded (the decoded cache keys
on the path), while generation stays minutes, not hours.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np

from medray.backends import library_modules
from medray.machine import machine

REPO = Path(__file__).resolve().parents[1]


def _draw(args) -> str:
    i, folder, lo, hi = args
    from PIL import Image

    rng = np.random.default_rng(i)
    size = int(rng.integers(lo, hi + 1))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    img = 110 + 55 * np.sin((5 + rng.random()) * xx) * np.cos((3 + rng.random()) * yy) + rng.normal(0, 3, (size, size))
    img += 50 * np.exp(-((xx - rng.random()) ** 2 + (yy - rng.random()) ** 2) * 25)
    img = np.clip(img, 0, 255)
    if i % 5 == 4:  # one in five: a 16-bit PNG (as CR/DX exports are)
        path = Path(folder) / f"src_{i:05d}.png"
        Image.fromarray((img * 256).astype(np.uint16)).save(path)
    else:
        path = Path(folder) / f"src_{i:05d}.jpeg"
        Image.fromarray(img.astype(np.uint8)).save(path, quality=90)
    return str(path)


def write_set(root: Path, n: int, distinct: int, lo: int, hi: int, cores: int) -> dict:
    src = root / "sources"
    src.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with Pool(cores) as pool:
        files = pool.map(_draw, [(i, str(src), lo, hi) for i in range(distinct)])
    for split in ("test", "val"):
        for cls in ("NORMAL", "PNEUMONIA"):
            (root / split / cls).mkdir(parents=True, exist_ok=True)
    for k in range(min(64, distinct)):  # val: INT8 calibration (imagefolder's default calibration split)
        f = Path(files[k])
        dest = root / "val" / ("NORMAL", "PNEUMONIA")[k % 2] / f"cal_{k:05d}{f.suffix}"
        if not dest.exists():
            os.link(f, dest)
    for k in range(n):
        f = Path(files[k % distinct])
        dest = root / "test" / ("NORMAL", "PNEUMONIA")[k % 2] / f"img_{k:05d}{f.suffix}"
        if not dest.exists():
            os.link(f, dest)
    return {"seconds": time.perf_counter() - t0, "distinct": distinct, "files": n,
            "bytes_distinct": sum(Path(f).stat().st_size for f in files)}


def run_job(args, root: Path, ckpt: Path, out: Path, cache: Path) -> dict:
    """``jobs/evaluate.py`` as a subprocess; its own peak RSS and /dev/shm's peak use."""
    import psutil

    cmd = [sys.executable, "jobs/evaluate.py", "data=imagefolder", f"data.root={root}", "data.cache=on",
           "model=timm", f"model.arch={args.model}", f"model.checkpoint={ckpt}", "preprocess=imagenet",
           f"preprocess.size={args.input_size}", f"backend={args.backend}", f"precision={args.precision}",
           "baseline=null", f"batch_size={args.batch_size}", f"output_dir={out}", f"cache_dir={cache}"]
    shm0 = shutil.disk_usage("/dev/shm").used if os.path.isdir("/dev/shm") else 0
    peak = {"rss": 0, "shm": 0}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ps = psutil.Process(proc.pid)

    def watch():
        while proc.poll() is None:
            try:
                peak["rss"] = max(peak["rss"], ps.memory_info().rss)
                if os.path.isdir("/dev/shm"):
                    peak["shm"] = max(peak["shm"], shutil.disk_usage("/dev/shm").used - shm0)
            except (psutil.Error, OSError):
                pass
            time.sleep(0.2)

    th = threading.Thread(target=watch, daemon=True)
    th.start()
    log, _ = proc.communicate()
    th.join(1)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"evaluate exited {proc.returncode}:\n{log[-3000:]}")
    m = json.loads((out / "metrics.json").read_text())
    r = m["runs"][0]
    return {"wall_s": wall, "job_wall_s": m["wall_s"], "n_samples": r["n_samples"], "throughput_sps": r["throughput_sps"],
            "inference_sps": r["inference_sps"], "samples_per_wall_s": r["n_samples"] / r["wall_s"],
            "run_wall_s": r["wall_s"], "startup_s": r["startup_s"], "read_cache": r["read_cache"],
            "driver_peak_rss_gib": peak["rss"] / 2**30, "shm_peak_gib": peak["shm"] / 2**30,
            "console_lines": len(log.splitlines())}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--num-images", type=int, default=20000)
    p.add_argument("--distinct", type=int, default=400)
    p.add_argument("--min-size", type=int, default=1024)
    p.add_argument("--max-size", type=int, default=2048)
    p.add_argument("--model", default="densenet121")
    p.add_argument("--input-size", type=int, default=224)
    p.add_argument("--backend", default="openvino")
    p.add_argument("--precision", default="int8")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workdir", default=None)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    import torch

    from medray.models.factory import build_model

    cores = len(os.sched_getaffinity(0))
    work = Path(args.workdir or tempfile.mkdtemp(prefix="medray-scale-"))
    data = write_set(work / "data", args.num_images, args.distinct, args.min_size, args.max_size, cores)
    torch.manual_seed(0)
    ckpt = work / f"{args.model}-2.pt"
    torch.save(build_model(args.model, 2, 3).state_dict(), ckpt)
    shutil.rmtree(work / "cache", ignore_errors=True)
    cold = run_job(args, work / "data", ckpt, work / "out-cold", work / "cache")
    warm = run_job(args, work / "data", ckpt, work / "out-warm", work / "cache")
    out = {"data": data, "model": args.model, "input_size": args.input_size, "backend": args.backend,
           "precision": args.precision, "batch_size": args.batch_size, "cold": cold, "warm": warm, "machine": machine(modules=library_modules())}
    print(json.dumps(out, indent=1, default=str))
    for name, r in (("cold", cold), ("warm", warm)):
        print(f"| {name} | {r['n_samples']} | {r['run_wall_s']:.0f} | {r['samples_per_wall_s']:.1f} | {r['throughput_sps']:.1f} | "
              f"{r['driver_peak_rss_gib']:.2f} | {r['shm_peak_gib']:.2f} | {r['read_cache']['hits']}/{r['read_cache']['misses']} |")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2, default=str))
    return out


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
