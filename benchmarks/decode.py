"""Decode throughput of large radiograph JPEGs: full-size vs reduced-scale (draft) decoding.

Decoding is usually the bottleneck of image batch inference: a ≈2000 px chest X-ray JPEG
takes tens of ms to decode in full, while the model wants 128-224 px.  medray's
``decode_gray`` asks libjpeg to decode at 1/2, 1/4 or 1/8 scale (PIL draft mode) when the
model input is small enough; this script measures what that buys, in images/s per core
(one process, one thread: each decode task of the pipeline uses one core).

    python benchmarks/decode.py --num-images 64 --repeats 3 --json decode.json

The images are written by the script (smooth anatomy-like structure + film noise,
quality 90, grey and RGB-encoded grey as in the Kermany set); both modes go through
``medray.data.preprocess.decode_gray`` — decode + grey + bilinear resize to the input size.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from medray.backends import library_modules
from medray.machine import machine


def machine_with_decoder() -> dict:
    """The shared machine description plus whether Pillow decodes with libjpeg-turbo."""
    from PIL import features

    return {**machine(modules=library_modules()), "libjpeg_turbo": bool(features.check_feature("libjpeg_turbo"))}


def write_radiographs(
    root: Path, n: int, width: int, height: int, noise: float = 1.5, rgb_every: int = 2, seed: int = 0
) -> list[Path]:
    """``n`` JPEGs that compress like radiographs (every ``rgb_every``-th one RGB-encoded)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    yy /= height
    xx /= width
    base = 110 + 50 * np.sin(5 * xx) * np.cos(3 * yy) - 60 * np.exp(-(((xx - 0.3) / 0.15) ** 2 + ((yy - 0.5) / 0.3) ** 2))
    base -= 60 * np.exp(-(((xx - 0.7) / 0.15) ** 2 + ((yy - 0.5) / 0.3) ** 2))
    ribs = 12 * (np.cos(2 * np.pi * 7 * (yy - 0.3 * (xx - 0.5) ** 2)) > 0.6)
    paths = []
    for i in range(n):
        # Mottled soft-tissue texture (coarse) + fine film grain: sized so that the files
        # are as large as real chest X-ray JPEGs of this size (~0.2-0.5 MB at 2000 px).
        coarse = np.asarray(
            Image.fromarray(rng.normal(0, 1, (height // 16, width // 16)).astype(np.float32)).resize(
                (width, height), Image.BICUBIC
            )
        )
        img = base + ribs + 8 * coarse + rng.normal(0, noise, (height, width)).astype(np.float32)
        a = np.clip(img + rng.uniform(-15, 15), 0, 255).astype(np.uint8)
        im = Image.fromarray(a)
        if rgb_every and i % rgb_every == 1:
            im = im.convert("RGB")
        p = root / f"cxr_{i:04d}.jpeg"
        im.save(p, quality=90)
        paths.append(p)
    return paths


def time_decode(paths: list[Path], size: int, draft: bool) -> float:
    """Seconds to decode every path once (one thread)."""
    from medray.data.preprocess import decode_gray

    t0 = time.perf_counter()
    for p in paths:
        decode_gray(str(p), size, draft=draft)
    return time.perf_counter() - t0


def decoded_size(path: Path, size: int) -> list[int]:
    from PIL import Image

    with Image.open(path) as im:
        im.draft("L", (size, size))
        return list(im.size)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--num-images", type=int, default=64)
    p.add_argument("--width", type=int, default=2000)
    p.add_argument("--height", type=int, default=2000)
    p.add_argument("--input-sizes", type=int, nargs="+", default=[224, 128])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--noise", type=float, default=1.5, help="film grain (std of 8-bit values); sets the file size")
    p.add_argument("--json", help="also write the result here")
    p.add_argument("--workdir", help="where to write the images (default: a temp dir)")
    a = p.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    with tempfile.TemporaryDirectory(dir=a.workdir) as tmp:
        t0 = time.perf_counter()
        paths = write_radiographs(Path(tmp), a.num_images, a.width, a.height, a.noise)
        mb = sum(q.stat().st_size for q in paths) / len(paths) / 1e6
        gen_s = time.perf_counter() - t0
        time_decode(paths[: min(4, len(paths))], a.input_sizes[0], True)  # warm imports / caches
        results = []
        for size in a.input_sizes:
            row = {"input_size": size, "decoded_px_draft": decoded_size(paths[0], size)}
            for mode, draft in (("full", False), ("draft", True)):
                runs = [time_decode(paths, size, draft) for _ in range(a.repeats)]
                ips = [len(paths) / s for s in runs]
                row[mode] = {
                    "images_per_s_per_core": statistics.median(ips),
                    "ms_per_image": 1e3 * statistics.median(runs) / len(paths),
                    "repeats": [round(v, 2) for v in ips],
                }
            row["speedup"] = row["draft"]["images_per_s_per_core"] / row["full"]["images_per_s_per_core"]
            results.append(row)
    doc = {
        "benchmark": "decode",
        "machine": machine_with_decoder(),
        "images": {"n": a.num_images, "width": a.width, "height": a.height, "mean_mb": round(mb, 3),
                   "quality": 90, "noise": a.noise, "grey_and_rgb": True, "generate_s": round(gen_s, 2)},
        "results": results,
    }
    text = json.dumps(doc, indent=2)
    print(text)
    if a.json:
        Path(a.json).write_text(text + "\n")
    return doc


if __name__ == "__main__":
    main()
