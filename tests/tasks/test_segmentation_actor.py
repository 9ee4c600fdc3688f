"""The segmentation actor's start-up takes the per-case metrics' one-time imports (MONAI's
package import costs seconds), so the first case's time is only its own."""

from __future__ import annotations

import subprocess
import sys

PROBE = r"""
import sys
import numpy as np
from medray.tasks.segmentation import actor
from medray.tasks.segmentation.task import SegmentationTask

task = SegmentationTask(classes=["organ", "tumour"], regions=[(1,), (2,)], surface_tolerance_mm=2.0)
actor.warm_metrics(task)
before = set(sys.modules)
rng = np.random.default_rng(0)
mask = rng.integers(0, 3, (12, 10, 8)).astype(np.uint8)
label = rng.integers(0, 3, (12, 10, 8)).astype(np.uint8)
batch = {"has_label": np.array([True]), "label": [label], "mask_spacing": np.array([[1.5, 0.8, 0.8]])}
out = actor.case_metrics(mask, batch, 0, task)
assert np.isfinite(out["hd95"]).all() and np.isfinite(out["surface_dice"]).all(), out
print(sorted(set(sys.modules) - before))
"""


def test_the_first_case_imports_nothing_after_start_up():
    # A fresh interpreter: this test process has long imported MONAI.
    p = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.strip().splitlines()[-1] == "[]", p.stdout
