"""The INT8 repair's constructed case: a classifier where full per-tensor INT8 fails.

A small residual CNN (13 Conv + 1 Gemm = 14 layer groups), deterministic random weights.
One activation gets an outlier channel: channel ``CH`` of a BatchNorm before a ReLU is
scaled by ``SCALE`` (1e3) and the matching input channel of the next conv divided by it.
ReLU is positively homogeneous, so the fp32 outputs do not change (checked), but that
conv's per-tensor INT8 input scale is now 1000x too coarse: every other channel quantizes
to 0.  ``outliers=("stem",)`` puts it before ``stem.3`` (the repair must keep that one
conv); ``("stem", "stem2")`` also before ``stem.6`` (two layers).  Both sit on the stem,
the one path no residual shortcut bypasses (behind a shortcut INT8 loses little).

The labels are the fp32 model's own decisions on smooth-noise images, the ambiguous middle
fifth left out (:func:`teacher`): fp32 has AUC 1 on them, so the gate measures exactly what
INT8 loses.  Used by ``model=python model.target=<this file>:build``.
"""

from __future__ import annotations

import numpy as np

SIZE = 32
SCALE = 1e3
CH = 3


def build(outliers: list[str] | tuple[str, ...] = ("stem",), seed: int = 0):
    """The case model (eval mode) with its outlier channels."""
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int = 1):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.relu = nn.ReLU()
            self.down = None
            if stride != 1 or cin != cout:
                self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x):
            idt = x if self.down is None else self.down(x)
            out = self.relu(self.bn1(self.conv1(x)))
            return self.relu(self.bn2(self.conv2(out)) + idt)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                                      nn.Conv2d(8, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                                      nn.Conv2d(8, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
            self.layer1 = nn.Sequential(Block(8, 8))
            self.layer2 = nn.Sequential(Block(8, 16, 2))
            self.layer3 = nn.Sequential(Block(16, 32, 2))
            self.layer4 = nn.Sequential(Block(32, 32))
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(32, 2)

        def forward(self, x):
            x = self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x)))))
            return self.fc(self.pool(x).flatten(1))

    torch.manual_seed(seed)
    model = Net().eval()
    with torch.no_grad():  # decisive logits, margin 0 at the median: probabilities mean something
        m = margin(model(torch.from_numpy(images(256, 99))).numpy())
        k = 4.0 / float(m.std())
        model.fc.weight *= k
        model.fc.bias *= k
        model.fc.bias[1] -= k * float(np.median(m))
    pairs = {"stem": (model.stem[1], model.stem[3]), "stem2": (model.stem[4], model.stem[6])}
    with torch.no_grad():
        for name in outliers:
            bn, conv = pairs[name]
            bn.weight[CH] *= SCALE
            bn.bias[CH] *= SCALE
            conv.weight[:, CH] /= SCALE
    return model


def images(n: int, seed: int, size: int = SIZE) -> np.ndarray:
    """Smooth-noise float images ``(n, 3, size, size)``, unit variance."""
    rng = np.random.default_rng(seed)
    noise = rng.normal(0, 1, (n, 3, size + 4, size + 4)).astype(np.float32)
    k = np.array([1, 4, 6, 4, 1], np.float32) / 16
    x = np.apply_along_axis(lambda r: np.convolve(r, k, "valid"), 3, noise)
    x = np.apply_along_axis(lambda c: np.convolve(c, k, "valid"), 2, x)
    return (x / x.std()).astype(np.float32)


def margin(logits: np.ndarray) -> np.ndarray:
    return logits[:, 1] - logits[:, 0]


def teacher(logits: np.ndarray, gap: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """(kept rows, labels): the fp32 model's decision at the median margin, without the
    ``gap`` fraction of samples nearest to it."""
    m = margin(logits)
    lo, hi = np.quantile(m, [0.5 - gap / 2, 0.5 + gap / 2])
    keep = (m < lo) | (m > hi)
    return keep, (m[keep] > np.median(m)).astype(np.int64)


def auc(logits: np.ndarray, y: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, margin(logits)))


class Validation:
    """:class:`medray.backends.onnx.repair.ValidationData` of the case: AUC on teacher labels."""

    def __init__(self, inputs: np.ndarray, y: np.ndarray):
        self.inputs, self.y = inputs, y

    def score(self, infer) -> dict:
        logits = np.concatenate([infer(self.inputs[i : i + 64]) for i in range(0, len(self.inputs), 64)])
        return {"auc_macro": auc(logits, self.y) if np.isfinite(logits).all() else None}

    def score_outputs(self, logits: np.ndarray, idx: np.ndarray) -> tuple[dict, list[float]]:
        y = self.y[idx]
        z = margin(logits)
        p_true = 1 / (1 + np.exp(-np.where(y == 1, z, -z)))
        return ({"auc_macro": auc(logits, y) if len(set(y.tolist())) == 2 else None}, p_true.tolist())


def validation(outliers=("stem",), n: int = 400, seed: int = 3) -> Validation:
    """Teacher-labelled validation inputs of the case model."""
    import torch

    x = images(n, seed)
    with torch.no_grad():
        logits = build(outliers)(torch.from_numpy(x)).numpy()
    keep, y = teacher(logits)
    return Validation(x[keep], y)


def imagefolder(root, outliers=("stem",), n: int = 700, seed: int = 5, model=None, size: int = SIZE) -> dict:
    """A ``data=imagefolder`` set of grey PNGs labelled by the fp32 decisions of the case
    model (or ``model``, fed ``size`` px) on them, as medray preprocesses them: ``train/``
    (calibration + validation) and ``test/``.  Returns the split sizes."""
    from pathlib import Path

    import pandas as pd
    import torch
    from PIL import Image

    from medray.data.calibration import load_calibration

    root = Path(root)
    raw = root.parent / f"{root.name}-raw"
    raw.mkdir(parents=True, exist_ok=True)
    x = images(n, seed, size)[:, 0]
    # 64 grey levels per unit: medray's preset (mean 0.5, std 0.25) hands the model unit-variance
    # inputs, the scale its margins were centred on (else every probability saturates at 1.0).
    pix = np.clip(128 + 64 * x, 0, 255).astype(np.uint8)
    paths = []
    for i, p in enumerate(pix):
        paths.append(raw / f"img{i:04d}.png")
        Image.fromarray(p).save(paths[-1])
    cs = load_calibration(pd.DataFrame({"sample_id": [p.name for p in paths], "path": paths}), size, 3)
    model = build(outliers) if model is None else model.eval()
    with torch.no_grad():
        logits = np.concatenate([model(torch.from_numpy(cs.inputs[i : i + 32])).numpy() for i in range(0, n, 32)])
    keep, y = teacher(logits)
    names = np.asarray(cs.sample_ids)[keep]
    sizes: dict = {}
    for j, (name, label) in enumerate(zip(names, y)):
        split = "test" if j % 5 < 2 else "train"
        d = root / split / ("positive" if label else "negative")  # sorted: class 1 = positive
        d.mkdir(parents=True, exist_ok=True)
        (raw / name).rename(d / name)
        sizes[split] = sizes.get(split, 0) + 1
    return sizes
