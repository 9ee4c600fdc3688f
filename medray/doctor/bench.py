"""``--bench``: DenseNet121 at 224 px (random weights) through every backend × precision that
works here, at batch 64 and 256 — through medray's own backend classes, so a figure is what
a job's actor gets from the same session (threads = the node's cores, one stream)."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np

from medray.doctor.checks import Record, TinyModel

log = logging.getLogger("medray.doctor")
BENCH = {"arch": "densenet121", "size": 224, "classes": 14}


def bench(records: list[Record], batches: tuple[int, ...] = (64, 256), iters: int = 3, workdir: str | None = None,
          arch: str = BENCH["arch"], size: int = BENCH["size"]) -> list[dict]:
    """img/s and per-sample latency of each ``ok`` record at each batch size.

    One warm-up batch, then ``iters`` timed batches (the backend's own clock: the call
    including the copy of outputs to the host); img/s = batch / median batch time.
    """
    from medray.backends import get_backend
    from medray.backends.artifacts import ArtifactCache

    rows = []
    ok = [r for r in records if r.status == "ok"]
    if not ok:
        return rows
    with tempfile.TemporaryDirectory(prefix="medray-bench-", dir=workdir) as d:
        model = TinyModel(Path(d), arch=arch, size=size, classes=BENCH["classes"], batch=max(batches))
        cache = ArtifactCache(Path(d) / "cache")
        for r in ok:
            for batch in batches:
                row = {"backend": r.backend, "precision": r.precision, "device": r.device, "batch": batch,
                       "arch": arch, "size": size}
                try:
                    spec = model.spec(r.backend, r.precision, r.device, batch=batch)
                    spec.warmup_batches = 1
                    cls = get_backend(r.backend)
                    spec.artifact = cls.prepare(spec, cache, model.context())
                    x = np.ascontiguousarray(model.inputs[:batch]) if len(model.inputs) >= batch else \
                        np.resize(model.inputs, (batch, *model.inputs.shape[1:]))
                    with cls(spec) as b:
                        ms = []
                        for _ in range(iters):
                            b.infer(x)
                            ms.append(b.last_ms)
                    med = float(np.median(ms))
                    row.update(status="ok", img_per_s=batch / med * 1e3, latency_ms_per_sample=med / batch,
                               batch_ms=ms)
                except Exception as e:
                    row.update(status="failed", reason=f"{type(e).__name__}: {e}")
                log.info("bench %s-%s b%d: %s", r.backend, r.precision, batch,
                         f"{row['img_per_s']:.1f} img/s" if row["status"] == "ok" else row["reason"])
                rows.append(row)
    return rows
