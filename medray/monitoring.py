"""Live monitoring: Ray custom metrics from the actors, progress of long driver steps.

Metrics (``ray.util.metrics``) are exported by every node's Ray agent in Prometheus
format (``ray start --metrics-export-port``) and shown in the dashboard's Metrics view
when Prometheus/Grafana are set up.  Prometheus sees them with Ray's ``ray_`` prefix
(counters also get ``_total``):

=====================================  =========  =========================================
name                                   kind       meaning
=====================================  =========  =========================================
``ray_medray_samples_processed_total`` counter    samples through a Predictor (warm-up not
                                                  counted)
``ray_medray_batch_latency_ms``        histogram  backend compute time per batch, ms
``ray_medray_samples_per_second``      gauge      one actor's rate over the last 2 s
``ray_medray_errors_total``            counter    failed batches / decode tasks (``stage``)
=====================================  =========  =========================================

All are tagged ``run`` (e.g. ``onnxruntime-fp32``), ``backend``, ``precision`` and ``node``
(Ray node id); Ray adds ``WorkerId``, ``SessionName`` and ``NodeAddress``.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

log = logging.getLogger("medray.monitoring")

PREFIX = "medray_"
TAG_KEYS = ("run", "backend", "precision", "node")
# Batch compute time spans ~0.5 ms (tiny model, small batch, GPU) to tens of seconds
# (big 3-D volumes on a CPU): roughly 1-2-5 steps over that range.
LATENCY_BOUNDARIES_MS = [0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 30000]
# The gauge is a rate over at least this window (one batch can take less than 1 ms).
RATE_WINDOW_S = 2.0

T = TypeVar("T")


def _ray_worker() -> bool:
    """True inside a connected Ray process (metrics are no-ops elsewhere, e.g. unit tests)."""
    if "ray" not in sys.modules:
        return False
    import ray

    return ray.is_initialized()


def node_id() -> str:
    """This process's Ray node id ("local" outside Ray)."""
    if not _ray_worker():
        return "local"
    import ray

    return ray.get_runtime_context().get_node_id()


class PredictorMetrics:
    """The custom metrics of one Predictor actor (no-ops outside a Ray worker)."""

    def __init__(self, run: str, backend: str, precision: str, node: str | None = None):
        self.tags = {"run": run, "backend": backend, "precision": precision, "node": node or node_id()}
        self.enabled = _ray_worker()
        self._window: deque[tuple[float, int]] = deque()  # (end time, samples) of recent batches
        self._t_ready = time.perf_counter()  # the actor's model is loaded
        if not self.enabled:
            return
        from ray.util.metrics import Counter, Gauge, Histogram

        self.samples = Counter(
            PREFIX + "samples_processed",
            description="Samples processed by medray Predictor actors (warm-up excluded).",
            tag_keys=TAG_KEYS,
        ).set_default_tags(self.tags)
        self.latency = Histogram(
            PREFIX + "batch_latency_ms",
            description="Backend compute time of one batch, milliseconds.",
            boundaries=LATENCY_BOUNDARIES_MS,
            tag_keys=TAG_KEYS,
        ).set_default_tags(self.tags)
        self.rate = Gauge(
            PREFIX + "samples_per_second",
            description=f"Samples per second of one Predictor actor over the last ~{RATE_WINDOW_S:g} s.",
            tag_keys=TAG_KEYS,
        ).set_default_tags(self.tags)
        self.errors = error_counter()

    def batch(self, n: int, latency_ms: float) -> None:
        """Record one processed batch of ``n`` samples."""
        if not self.enabled:
            return
        self.samples.inc(n)
        self.latency.observe(latency_ms)
        self.rate.set(self._rate(n))

    def _rate(self, n: int) -> float:
        """Samples/s over the last RATE_WINDOW_S (since the actor was ready, at first): its
        real rate, waits for input included."""
        now = time.perf_counter()
        self._window.append((now, n))
        while self._window and self._window[0][0] < now - RATE_WINDOW_S:
            self._window.popleft()
        start = max(now - RATE_WINDOW_S, self._t_ready)
        return sum(k for _, k in self._window) / max(now - start, 1e-6)

    def error(self, stage: str = "predict") -> None:
        if self.enabled:
            self.errors.inc(1, tags={**self.tags, "stage": stage})

    def idle(self) -> None:
        """The actor is done: its rate is 0, not the last value seen."""
        if self.enabled:
            self.rate.set(0.0)


_error_counter = None


def error_counter():
    """Process-wide ``medray_errors`` counter (tagged with the failing ``stage``)."""
    global _error_counter
    if _error_counter is None:
        from ray.util.metrics import Counter

        _error_counter = Counter(
            PREFIX + "errors",
            description="Failed medray batches or decode tasks.",
            tag_keys=(*TAG_KEYS, "stage"),
        )
    return _error_counter


def count_error(stage: str, **tags: str) -> None:
    """Count one failure outside a Predictor (e.g. in a decode task); no-op outside Ray."""
    if not _ray_worker():
        return
    full = {k: tags.get(k, "") for k in TAG_KEYS}
    full["node"] = full["node"] or node_id()
    full["stage"] = stage
    error_counter().inc(1, tags=full)


# --------------------------------------------------------------------------- driver progress


@contextmanager
def step(what: str, logger: logging.Logger | None = None, heartbeat_s: float = 30.0):
    """Log the start and end of a long driver step, and a line every ``heartbeat_s``
    while it runs (artifact builds, calibration, demo training have no progress bar of
    Ray Data's; a silent ten-minute TensorRT build looks like a hang)."""
    logger = logger or log
    t0 = time.perf_counter()
    done = threading.Event()

    def beat():
        while not done.wait(heartbeat_s):
            logger.info("%s: still running (%.0fs)", what, time.perf_counter() - t0)

    logger.info("%s ...", what)
    thread = threading.Thread(target=beat, name="medray-step", daemon=True)
    thread.start()
    try:
        yield
    except BaseException:
        logger.error("%s: failed after %.1fs", what, time.perf_counter() - t0)
        raise
    else:
        logger.info("%s: done in %.1fs", what, time.perf_counter() - t0)
    finally:
        done.set()


def progress(items: Iterable[T], desc: str, total: int | None = None, unit: str = "it") -> Iterator[T]:
    """A tqdm progress bar on a terminal; on a pipe (Ray job logs, CI) a plain log line
    every ~10 % instead of carriage-return redraws."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    if sys.stderr.isatty():
        from tqdm.auto import tqdm

        yield from tqdm(items, desc=desc, total=total, unit=unit)
        return
    t0 = time.perf_counter()
    every = max(1, (total or 0) // 10) if total else 0
    n = 0
    for n, item in enumerate(items, 1):
        yield item
        if every and n % every == 0 and n < (total or 0):
            log.info("%s: %d/%d %s (%.0fs)", desc, n, total, unit, time.perf_counter() - t0)
    log.info("%s: %d%s %s in %.1fs", desc, n, f"/{total}" if total else "", unit, time.perf_counter() - t0)
