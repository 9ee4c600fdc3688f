"""Deterministic synthetic chest-X-ray-like datasets (demo and tests, no download).

Two kinds:

* ``binary``: NORMAL vs PNEUMONIA (focal, fuzzy opacities inside the lung fields);
* ``multilabel``: the 14 ChestX-ray14 labels in CheXNet order, each drawn with its own
  visible pattern (location, shape, texture), several per image, some images with none.

Every image is rendered from an RNG seeded by ``(seed, split, index)`` only, so the same
arguments always give byte-identical files, and a test image does not change when the
train split is made larger.  The output is medray's manifest layout (``dataset.json`` +
``manifest.csv`` + PNGs), read by :func:`medray.data.table.read_manifest_dir`.
"""

from __future__ import annotations

import json
import logging
import os
from functools import lru_cache
from pathlib import Path

import numpy as np

from medray.data.generated import write_once

log = logging.getLogger("medray.data")

# Bump when the rendering changes: a dataset made by another version is a different
# dataset, and must not be silently reused.
GENERATOR_VERSION = 2

BINARY_CLASSES = ["NORMAL", "PNEUMONIA"]
CHESTXRAY14_CLASSES = [
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
    "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening",
    "Hernia",
]
# Marginal prevalence per label (10-30 %), in CHESTXRAY14_CLASSES order.
_PREVALENCE = np.array(
    [0.22, 0.15, 0.25, 0.28, 0.14, 0.18, 0.13, 0.14, 0.15, 0.13, 0.13, 0.13, 0.15, 0.10]
)
# A share of images is drawn "healthy" (no finding at all), as in real chest X-ray sets;
# the others draw each label with prevalence / (1 - _HEALTHY) so the marginals stay as above.
_HEALTHY = 0.25
_PNEUMONIA_RATE = 0.5
SPLITS = ("train", "calibration", "test")
KINDS = {"binary": ("synthetic", "multiclass", BINARY_CLASSES),
         "multilabel": ("synthetic_multilabel", "multilabel", CHESTXRAY14_CLASSES)}


def ensure_synthetic(
    kind: str,
    root: str | Path,
    n_train: int,
    n_calibration: int,
    n_test: int,
    image_size: int = 256,
    seed: int = 0,
    *,
    workers: int | None = None,
) -> Path:
    """Make (once) a synthetic dataset under ``root`` and return ``root`` as a Path.

    Returns at once when ``root/dataset.json`` already records the same arguments; raises
    ValueError when ``root`` holds something else.  The dataset is written to a temporary
    directory beside ``root`` and renamed into place, so a killed process never leaves a
    half-written dataset behind.  ``workers`` (default: CPU count, at most 8) only sets
    how many threads render; it does not change the output.
    """
    if kind not in KINDS:
        raise ValueError(f"synthetic kind={kind!r} is not one of {sorted(KINDS)}")
    for key, n in (("n_train", n_train), ("n_calibration", n_calibration), ("n_test", n_test)):
        if int(n) < 0:
            raise ValueError(f"synthetic {key}={n}: must be >= 0")
    if int(seed) < 0:
        raise ValueError(f"synthetic seed={seed}: must be >= 0")
    if int(image_size) < 32:
        raise ValueError(f"synthetic image_size={image_size}: must be >= 32")
    root = Path(root).expanduser().resolve()
    gen = {"kind": kind, "n_train": int(n_train), "n_calibration": int(n_calibration),
           "n_test": int(n_test), "image_size": int(image_size), "seed": int(seed),
           "version": GENERATOR_VERSION}
    return write_once(root, gen, lambda tmp: _write_dataset(tmp, gen, workers or min(os.cpu_count() or 1, 8)),
                      "synthetic dataset")


def _write_dataset(tmp: Path, gen: dict, workers: int) -> None:
    import pandas as pd

    name, task, classes = KINDS[gen["kind"]]
    jobs = []
    for code, split in enumerate(SPLITS):
        (tmp / split).mkdir(parents=True, exist_ok=True)
        n = gen[f"n_{split}"]
        jobs += [(str(tmp), gen, split, code, a, min(a + _CHUNK, n)) for a in range(0, n, _CHUNK)]
    total = sum(gen[f"n_{s}"] for s in SPLITS)
    workers = max(1, min(workers, len(jobs)))
    if total < 2 * _CHUNK:
        workers = 1  # nothing to share
    log.info("synthetic %s: rendering %d images of %d px (%d thread%s)", gen["kind"], total,
             gen["image_size"], workers, "s" if workers > 1 else "")
    # One BLAS thread per renderer: the matrices are tiny, and BLAS threads spinning
    # against the other renderer (or a busy machine) made rendering 2-3x slower.  Set
    # once here: threadpoolctl's limit is process-wide, not per thread.
    with _one_blas_thread():
        rows = _render_all(jobs, workers)
    pd.DataFrame(rows, columns=["sample_id", "path", "split", "labels"]).to_csv(
        tmp / "manifest.csv", index=False
    )
    meta = {"name": name, "task": task, "classes": list(classes), "generator": gen}
    (tmp / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n")


def _render_all(jobs: list[tuple], workers: int) -> list[tuple[str, str, str, str]]:
    if workers == 1:
        return [r for job in jobs for r in _render_chunk(job)]
    from concurrent.futures import ThreadPoolExecutor

    # Threads, not processes: numpy ufuncs, zlib and file writes release the GIL, so
        # two threads give most of two processes' speed-up without their hazards (spawn
        # re-runs an unguarded __main__; fork copies the caller's torch / Ray threads).
    # Each image has its own RNG: the split between threads cannot change a pixel.
    with ThreadPoolExecutor(workers, thread_name_prefix="medray-synthetic") as ex:
        return [r for part in ex.map(_render_chunk, jobs) for r in part]


_CHUNK = 64


def _render_chunk(job: tuple) -> list[tuple[str, str, str, str]]:
    """Render and write images ``start..stop`` of one split; return their manifest rows."""
    from PIL import Image

    tmp, gen, split, code, start, stop = job
    render = render_binary if gen["kind"] == "binary" else render_multilabel
    rows = []
    for i in range(start, stop):
        img, labels = render(np.random.default_rng([gen["seed"], code, i]), gen["image_size"])
        rel = f"{split}/{split}_{i:05d}.png"
        # compress_level 1: faster than the default 6 and only ~10 % larger on noisy
        # images; PNG is lossless, so the pixels are exactly those rendered.
        Image.fromarray(img).save(Path(tmp) / rel, format="PNG", compress_level=1)
        rows.append((f"{split}_{i:05d}", rel, split, "|".join(labels)))
    return rows


def _one_blas_thread():
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # optional: only a speed matter
        import contextlib

        return contextlib.nullcontext()
    return threadpool_limits(1, user_api="blas")


# --------------------------------------------------------------------------- rendering
# Coordinates: x (columns) and y (rows, downwards) in [-1, 1]; anatomy is drawn in (u, v),
# the image coordinates moved by a per-image shift / scale / small rotation (patient
# positioning).  The image's left (u < 0) is the patient's right lung, as on a PA film.


@lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    t = np.linspace(-1.0, 1.0, size, dtype=np.float32)
    y, x = np.meshgrid(t, t, indexing="ij")
    return x, y


@lru_cache(maxsize=32)
def _interp(size: int, cells: int) -> np.ndarray:
    """(size, cells) Gaussian interpolation weights: W @ G @ W.T smooths a coarse grid G."""
    pos = np.linspace(-1.0, 1.0, size)
    knots = np.linspace(-1.2, 1.2, cells)
    w = np.exp(-0.5 * ((pos[:, None] - knots[None, :]) / (knots[1] - knots[0])) ** 2)
    return (w / w.sum(axis=1, keepdims=True)).astype(np.float32)


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Smooth random field with about ``cells`` blobs per side, zero mean, unit std."""
    w = _interp(size, cells)
    n = w @ rng.standard_normal((cells, cells), dtype=np.float32) @ w.T
    return (n - n.mean()) / (n.std() + 1e-6)


def _sig(z: np.ndarray) -> np.ndarray:
    return 0.5 + 0.5 * np.tanh(0.5 * z)


def _ellipse(u, v, cx, cy, rx, ry, edge=0.03):
    """Soft-edged filled ellipse (1 inside, 0 outside; edge in normalised radius)."""
    r = ((u - cx) / rx) ** 2 + ((v - cy) / ry) ** 2
    return _sig((1.0 - r) / edge)


def _blob(u, v, cx, cy, rx, ry):
    return np.exp(-0.5 * (((u - cx) / rx) ** 2 + ((v - cy) / ry) ** 2))


class _Chest:
    """One rendered radiograph under construction: anatomy first, then findings."""

    def __init__(self, rng: np.random.Generator, size: int, *, heart: float = 1.0,
                 emphysema: bool = False):
        self.rng, self.size = rng, size
        x, y = _grid(size)
        a = rng.uniform(-0.07, 0.07)  # radians, ~ +-4 degrees
        sc = rng.uniform(0.9, 1.06)
        dx, dy = rng.uniform(-0.07, 0.07), rng.uniform(-0.06, 0.06)
        ca, sa = np.float32(np.cos(a)), np.float32(np.sin(a))
        self.u = ((x - dx) * ca + (y - dy) * sa) / np.float32(sc)
        self.v = (-(x - dx) * sa + (y - dy) * ca) / np.float32(sc)
        u, v = self.u, self.v

        body = _ellipse(u, v, 0.0, 0.18, 1.02, 1.2, 0.12)
        att = 0.5 * body + 0.06 * body * _smooth_noise(rng, size, 4)

        # Lungs: ellipse cut below by a diaphragm dome that is lowest laterally (sharp
        # costophrenic angles).  Emphysema: bigger, darker, flatter diaphragm.
        grow = 1.12 if emphysema else 1.0
        self.lung_side = {}
        self.lung_geom = {}
        lungs = np.zeros_like(u)
        for s in (-1, 1):
            cx = s * rng.uniform(0.35, 0.39)
            cy = rng.uniform(-0.1, -0.04) + (0.04 if emphysema else 0.0)
            rx = (0.31 if s < 0 else 0.29) * grow * rng.uniform(0.95, 1.05)
            ry = 0.68 * grow * rng.uniform(0.95, 1.05)
            t = s * (u - cx) / rx
            # The patient's right hemidiaphragm (s < 0) sits a little higher.
            dome = cy + ry * ((0.86 if emphysema else 0.72) - (0.04 if s < 0 else 0.0)) + (
                0.02 if emphysema else 0.1) * t * t
            m = _ellipse(u, v, cx, cy, rx, ry, 0.08) * _sig((dome - v) / 0.012)
            self.lung_side[s] = m
            self.lung_geom[s] = (cx, cy, rx, ry)
            lungs += m
        # Heart + mediastinum cover the medial lung; cardiomegaly = bigger heart.
        self.heart_geom = (rng.uniform(0.08, 0.12), rng.uniform(0.22, 0.27),
                           0.29 * heart, 0.23 * min(heart, 1.2))
        hx, hy, hrx, hry = self.heart_geom
        med = np.maximum(
            _ellipse(u, v, hx, hy, hrx, hry, 0.08),
            _sig((0.11 - np.abs(u - 0.02)) / 0.015) * _sig((0.35 - v) / 0.03),
        )
        self.lungs = np.clip(lungs, 0, 1) * (1.0 - med)
        for s in (-1, 1):
            self.lung_side[s] = self.lung_side[s] * (1.0 - med)
        depth = rng.uniform(0.30, 0.36) + (0.08 if emphysema else 0.0)
        att = att - depth * self.lungs

        # Lung markings (vessels), denser towards the hila; they are the texture some
        # findings remove (pneumothorax) and the clutter every finding must stand out of.
        hila = _blob(u, v, -0.22, -0.02, 0.25, 0.3) + _blob(u, v, 0.22, -0.02, 0.25, 0.3)
        markings = np.clip(_smooth_noise(rng, size, 40), 0, None) * (0.3 + 0.7 * hila)
        self.markings = (0.03 if emphysema else 0.045) * markings * self.lungs
        att = att + self.markings

        # Spine (with vertebral bodies), ribs and clavicles.
        spine = _sig((0.065 - np.abs(u)) / 0.012) * body
        att = att + spine * (0.08 + 0.03 * np.cos(2 * np.pi * 7.5 * v + rng.uniform(0, 6.3)))
        curv = rng.uniform(0.25, 0.4) * (0.6 if emphysema else 1.0)
        freq = rng.uniform(6.5, 7.5) * (0.85 if emphysema else 1.0)
        phase = freq * (v - curv * u * u) + rng.uniform(0, 1)
        ribs = _sig((np.cos(2 * np.pi * phase) - 0.55) / 0.12) * _sig((np.abs(u) - 0.08) / 0.03)
        # Ribs show most over the air-filled lungs, faintly over soft tissue.
        att = att + ribs * (0.06 * self.lungs + 0.025 * body * _sig((0.55 - v) / 0.05))
        clav_y = rng.uniform(-0.66, -0.58) + 0.18 * (np.abs(u) - 0.1)
        clav = np.exp(-0.5 * ((v - clav_y) / 0.028) ** 2) * _sig((np.abs(u) - 0.08) / 0.02)
        att = att + 0.12 * clav * _sig((0.62 - np.abs(u)) / 0.03)
        self.att = att

    # Helpers for findings ------------------------------------------------------------
    def side_point(self, s: int, lo: float = -0.45, hi: float = 0.4, lat=(-0.5, 0.6)):
        """A point inside lung ``s``: vertical offset lo..hi and medial(-)/lateral(+)
        offset lat, both in units of that lung's radii."""
        cx, cy, rx, ry = self.lung_geom[s]
        return cx + s * self.rng.uniform(*lat) * rx, cy + self.rng.uniform(lo, hi) * ry

    def add(self, pattern: np.ndarray, amount: float) -> None:
        self.att = self.att + np.float32(amount) * pattern

    def finish(self) -> np.ndarray:
        """Exposure / contrast / gamma per image, pixel noise, 8-bit quantisation."""
        rng = self.rng
        img = self.att + rng.standard_normal(self.att.shape, dtype=np.float32) * np.float32(rng.uniform(0.006, 0.016))
        lo, hi = rng.uniform(-0.02, 0.06), rng.uniform(0.72, 0.92)
        img = np.clip((img - lo) / (hi - lo), 0.0, 1.0) ** np.float32(rng.uniform(0.8, 1.25))
        return (img * 255.0 + 0.5).astype(np.uint8)


def render_binary(rng: np.random.Generator, size: int) -> tuple[np.ndarray, list[str]]:
    """One NORMAL / PNEUMONIA image (uint8, size x size) and its label list."""
    pneumonia = rng.random() < _PNEUMONIA_RATE
    c = _Chest(rng, size)
    if pneumonia:
        # 1-3 fuzzy consolidation patches with mottled texture, confined to the lungs.
        # Their strength varies widely so that some positives are subtle (AUC < 1).
        for _ in range(rng.integers(1, 4)):
            s = int(rng.choice([-1, 1]))
            px, py = c.side_point(s, -0.4, 0.45)
            patch = _blob(c.u, c.v, px, py, rng.uniform(0.09, 0.17), rng.uniform(0.09, 0.19))
            tex = np.clip(0.7 + 0.3 * _smooth_noise(rng, size, 24), 0.0, 1.0)
            c.add(patch * tex * c.lungs, rng.uniform(0.15, 0.32))
    return c.finish(), [BINARY_CLASSES[int(pneumonia)]]


def render_multilabel(rng: np.random.Generator, size: int) -> tuple[np.ndarray, list[str]]:
    """One ChestX-ray14-like image with 0..n findings, each with its own pattern."""
    if rng.random() < _HEALTHY:
        has = np.zeros(len(CHESTXRAY14_CLASSES), dtype=bool)
    else:
        has = rng.random(len(CHESTXRAY14_CLASSES)) < _PREVALENCE / (1.0 - _HEALTHY)
    labels = [name for name, on in zip(CHESTXRAY14_CLASSES, has) if on]
    return draw_findings(rng, size, labels), labels


def draw_findings(rng: np.random.Generator, size: int, labels: list[str]) -> np.ndarray:
    """Render a chest with the given ChestX-ray14 findings (uint8, size x size)."""
    f = {name: name in labels for name in CHESTXRAY14_CLASSES}
    c = _Chest(rng, size, heart=rng.uniform(1.4, 1.6) if f["Cardiomegaly"] else rng.uniform(0.9, 1.08),
               emphysema=bool(f["Emphysema"]))
    u, v = c.u, c.v

    def side() -> int:
        return int(rng.choice([-1, 1]))

    if f["Pneumothorax"]:
        # Collapsed lung edge: apical/lateral rim without markings, darker, behind a thin
        # bright visceral pleural line.
        s = side()
        cx, cy, rx, ry = c.lung_geom[s]
        nu, nv = s * (u - cx) / rx, (v - cy) / ry
        r = np.sqrt(nu * nu + nv * nv)
        k = rng.uniform(0.65, 0.8)
        where = _sig((0.7 * nu - 0.7 * nv - 0.1) / 0.08) * c.lung_side[s]  # upper-lateral
        outer = _sig((r - k) / 0.03) * where
        c.add(c.markings * outer, -1.0)
        c.add(outer, -rng.uniform(0.12, 0.16))
        c.add(np.exp(-0.5 * ((r - k) / 0.015) ** 2) * where, 0.16)
    if f["Atelectasis"]:
        # Plate-like (discoid) atelectasis: thin, slightly tilted horizontal bands low down.
        for _ in range(rng.integers(1, 3)):
            s = side()
            px, py = c.side_point(s, 0.15, 0.5)
            t = rng.uniform(-0.2, 0.2)
            du, dv = u - px, v - py
            band = np.exp(-0.5 * ((du / 0.2) ** 2 + ((dv - t * du) / 0.028) ** 2))
            c.add(band * c.lungs, rng.uniform(0.3, 0.4))
    if f["Effusion"]:
        # Fluid at the base: homogeneous, meniscus rising laterally, blunted angle.
        s = side()
        cx, cy, rx, ry = c.lung_geom[s]
        level = cy + ry * rng.uniform(0.2, 0.45) - 0.3 * np.clip(s * (u - cx), 0, None)
        fluid = _sig((v - level) / 0.02) * c.lung_side[s]
        c.add(fluid, rng.uniform(0.24, 0.3))
    if f["Infiltration"]:
        # Patchy, ill-defined fine opacities over a broad zone.
        s = side()
        cx, cy, rx, ry = c.lung_geom[s]
        zone = _blob(u, v, cx, cy + rng.uniform(-0.2, 0.2), rx * 0.9, ry * 0.55)
        patchy = _sig((_smooth_noise(rng, c.size, 40) - 0.3) / 0.3)
        c.add(patchy * zone * c.lungs, rng.uniform(0.17, 0.23))
    if f["Mass"]:
        # One large, sharp-edged, slightly lobulated round opacity.
        s = side()
        px, py = c.side_point(s, -0.4, 0.3)
        rr = rng.uniform(0.09, 0.13)
        th = np.arctan2(v - py, u - px)
        rad = rr * (1 + 0.12 * np.cos(3 * th + rng.uniform(0, 6.3)))
        d = np.sqrt((u - px) ** 2 + (v - py) ** 2)
        c.add(_sig((rad - d) / 0.008) * c.lungs, rng.uniform(0.3, 0.4))
    if f["Nodule"]:
        # 1-3 small, very sharp, bright round dots.
        for _ in range(rng.integers(1, 4)):
            px, py = c.side_point(side(), -0.5, 0.35)
            d = np.sqrt((u - px) ** 2 + (v - py) ** 2)
            c.add(_sig((rng.uniform(0.03, 0.045) - d) / 0.004) * c.lungs, rng.uniform(0.35, 0.45))
    if f["Pneumonia"]:
        # Fuzzy, mottled airspace opacity, medium size, mid/lower zone.
        s = side()
        px, py = c.side_point(s, -0.1, 0.4)
        patch = _blob(u, v, px, py, rng.uniform(0.1, 0.15), rng.uniform(0.1, 0.16))
        tex = np.clip(0.7 + 0.3 * _smooth_noise(rng, c.size, 24), 0.0, 1.0)
        c.add(patch * tex * c.lungs, rng.uniform(0.24, 0.32))
    if f["Consolidation"]:
        # Lobar: dense, homogeneous, sharply bounded by a straight fissure (upper lobe).
        s = side()
        cx, cy, rx, ry = c.lung_geom[s]
        fissure = cy + rng.uniform(-0.25, -0.05) + rng.uniform(-0.25, 0.25) * (u - cx)
        c.add(_sig((fissure - v) / 0.01) * c.lung_side[s], rng.uniform(0.22, 0.3))
    if f["Edema"]:
        # Bilateral, symmetric perihilar haze ("bat wing").
        hy = rng.uniform(-0.1, 0.05)
        haze = _blob(u, v, -0.28, hy, 0.18, 0.32) + _blob(u, v, 0.28, hy, 0.18, 0.32)
        c.add(haze * c.lungs, rng.uniform(0.24, 0.3))
    if f["Fibrosis"]:
        # Reticular net, lower and peripheral zones, both sides.
        w = rng.uniform(9.0, 11.0)
        jit = 0.03 * _smooth_noise(rng, c.size, 12)
        net = np.maximum(np.cos(np.pi * w * (u + jit)) ** 8, np.cos(np.pi * w * (v - jit)) ** 8)
        zone = _sig((v - rng.uniform(-0.15, 0.1)) / 0.1) * _sig((np.abs(u) - 0.35) / 0.08)
        c.add(net * zone * c.lungs, rng.uniform(0.16, 0.22))
    if f["Pleural_Thickening"]:
        # Thick, irregular bright band just inside the lateral / apical lung border.
        s = side()
        cx, cy, rx, ry = c.lung_geom[s]
        nu, nv = s * (u - cx) / rx, (v - cy) / ry
        r = np.sqrt(nu * nu + nv * nv)
        k = rng.uniform(0.78, 0.84) + 0.03 * _smooth_noise(rng, c.size, 10)
        band = _sig((r - k) / 0.015) * _sig((k + rng.uniform(0.12, 0.18) - r) / 0.015)
        c.add(band * _sig((nu + 0.2) / 0.1) * c.lung_side[s], rng.uniform(0.28, 0.34))
    if f["Hernia"]:
        # Hiatal hernia: round retrocardiac sac with an air-fluid level (dark top, rim).
        hx, hy = rng.uniform(-0.04, 0.08), rng.uniform(0.36, 0.46)
        hr = rng.uniform(0.08, 0.11)
        d = np.sqrt((u - hx) ** 2 + (v - hy) ** 2)
        rim = np.exp(-0.5 * ((d - hr) / 0.012) ** 2)
        gas = _sig((hr - d) / 0.01) * _sig((hy - 0.2 * hr - v) / 0.008)
        c.add(rim, 0.2)
        c.add(gas, -0.22)
    return c.finish()
