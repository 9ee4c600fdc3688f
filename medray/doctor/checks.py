"""Can backend × precision × device run on this node — and does it compute what torch fp32 does?

:func:`capability` is the cheap part (libraries import, the device is there, the hardware has
the precision), run by every node of a cluster before a job's work lands on it.
:func:`run_check` then builds a tiny model through medray's own backend classes (the same
``prepare`` / ``load`` / ``infer`` a job uses: ONNX export, Q/DQ or NNCF INT8, engines), runs
it once and compares its outputs with PyTorch fp32.

A record's ``status``: ``ok``; ``missing`` (a library or the device is not on this node:
``fix`` says what to install); ``unsupported`` (the hardware lacks the precision);
``failed`` (it ran and was wrong, or raised: a real problem on this node).
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medray.doctor import environment as env

# Largest |Δprobability| vs torch fp32 of the tiny model per precision, and for int8 the
# correlation of the logit margins (random weights: decisions are close calls).
TOLERANCE = {"fp32": 1e-4, "tf32": 2e-2, "fp16": 2e-2, "bf16": 5e-2, "int8": 0.25}
MIN_INT8_CORR = 0.9
TINY = {"arch": "resnet10t", "classes": 2, "size": 32, "batch": 8}


@dataclass
class Record:
    """One backend × precision × device on this node."""

    backend: str
    precision: str
    device: str
    status: str = "ok"
    reason: str = ""
    fix: str = ""
    detail: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


def pairs(backends: list[str] | None = None) -> list[tuple[str, str, str]]:
    """Every (backend, precision, device) medray supports, of ``backends`` (None = all)."""
    from medray.backends import REGISTRY, config_class

    out = []
    for name in backends or list(REGISTRY):
        for device, precisions in config_class(name).SUPPORTED.items():
            out += [(name, p, device) for p in precisions]
    return out


def capability(backend: str, precision: str, device: str) -> Record:
    """Libraries, device and hardware precision of one triple (no model is run): the
    libraries the backend declares, the device, then the backend's own check
    (:meth:`medray.backends.base.Backend.capability`)."""
    from medray.backends import config_class, get_backend

    r = Record(backend, precision, device)
    cls = config_class(backend)
    for lib, fix in {**cls.LIBRARIES, **cls.PRECISION_LIBRARIES.get(precision, {})}.items():
        try:
            mod = env.import_library(lib)
            r.detail[lib] = getattr(mod, "__version__", "?")
        except ImportError as e:
            return _set(r, "missing", f"{lib} cannot be imported ({e})", fix)
    if device == "cuda":
        r = _cuda(r)
        if r.status != "ok":
            return r
    problem = get_backend(backend).capability(precision, device, r.detail)
    return _set(r, *problem) if problem else r


def _set(r: Record, status: str, reason: str, fix: str = "") -> Record:
    r.status, r.reason, r.fix = status, reason, fix
    return r


def _cuda(r: Record) -> Record:
    g = env.gpus()
    if not g["available"]:
        return _set(r, "missing", f"no CUDA GPU ({g.get('reason', 'none visible')})",
                    "run on a GPU node (check nvidia-smi, the driver, CUDA_VISIBLE_DEVICES)")
    cc = env.compute_capability() or (0, 0)
    r.detail["gpu"] = g["devices"][0]["name"]
    r.detail["compute_capability"] = f"{cc[0]}.{cc[1]}"
    need = {"bf16": (8, 0), "tf32": (8, 0), "fp16": (7, 0), "int8": (6, 1)}.get(r.precision)
    if need and cc < need:
        return _set(r, "unsupported", f"{r.precision} needs compute capability >= {need[0]}.{need[1]}, "
                    f"{g['devices'][0]['name']} has {cc[0]}.{cc[1]}", "use precision=fp32 or fp16, or a newer GPU")
    return r


# --------------------------------------------------------------------------- run


class TinyModel:
    """A random-weight timm model, its inputs and torch fp32's outputs, built once."""

    def __init__(self, workdir: Path, arch: str = TINY["arch"], size: int = TINY["size"], classes: int = TINY["classes"],
                 batch: int = TINY["batch"]):
        import torch

        from medray.io import file_sha256
        from medray.models.factory import build_model, save_checkpoint
        from medray.specs import ModelSpec

        self.workdir = workdir
        torch.manual_seed(0)
        ckpt = save_checkpoint(build_model(arch, classes, 3), workdir / f"{arch}-{size}.pt",
                               {"arch": arch, "num_classes": classes, "in_chans": 3, "input_size": size})
        self.model = ModelSpec(arch, classes, 3, size, str(ckpt), file_sha256(ckpt))
        rng = np.random.default_rng(0)
        # Smooth images (as preprocessed radiographs are), not white noise: INT8 ranges stay realistic.
        base = rng.standard_normal((batch + 16, 3, 4, 4)).astype(np.float32)
        self.inputs = np.repeat(np.repeat(base, size // 4, axis=2), size // 4, axis=3)
        self.x = self.inputs[:batch]
        self.batch = batch
        self._reference: np.ndarray | None = None

    def spec(self, backend: str, precision: str, device: str, batch: int | None = None, threads: int | None = None):
        from medray.backends import config_class
        from medray.specs import RunSpec

        cores = env.cpu()["cores"] or 1
        return RunSpec(name=f"{backend}-{precision}", role="candidate", backend=config_class(backend)(),
                       precision=precision, device=device, batch_size=batch or self.batch, streams=1, model=self.model,
                       threads=threads or cores, warmup_batches=1)

    def context(self) -> dict:
        import pandas as pd

        from medray.data.calibration import CalibrationSet, CalibrationSource

        ids = [f"doctor-{i}" for i in range(len(self.inputs))]
        return {"calibration": CalibrationSource(pd.DataFrame({"sample_id": ids}),
                                                 lambda df: CalibrationSet(self.inputs, ids))}

    def reference(self) -> np.ndarray:
        if self._reference is None:
            from medray.backends import get_backend, reference

            name = reference()
            with get_backend(name)(self.spec(name, "fp32", "cpu")) as b:
                self._reference = b.infer(self.x)
        return self._reference


def run_check(r: Record, tiny: TinyModel) -> Record:
    """Build, load and run the tiny model for ``r`` (already ``ok`` by :func:`capability`)."""
    from medray.backends import get_backend
    from medray.backends.artifacts import ArtifactCache
    from medray.metrics.scores import probabilities

    t0 = time.perf_counter()
    try:
        spec = tiny.spec(r.backend, r.precision, r.device)
        cls = get_backend(r.backend)
        spec.artifact = cls.prepare(spec, ArtifactCache(tiny.workdir / "cache"), tiny.context())
        with cls(spec) as b:
            y = b.infer(tiny.x)
            eff = b.effective_precision
    except Exception as e:  # the message of medray's own checks names the fix
        return _set(r, "failed", f"{type(e).__name__}: {e}", "see the reason; `pytest tests/backends -k "
                    f"{r.backend}` reproduces it")
    ref = tiny.reference()
    if not np.isfinite(y).all():
        return _set(r, "failed", f"NaN/inf outputs ({int((~np.isfinite(y)).sum())} values)")
    dprob = float(np.abs(probabilities(y, "multiclass") - probabilities(ref, "multiclass")).max())
    r.detail.update(seconds=round(time.perf_counter() - t0, 2), max_abs_prob_diff=dprob,
                    executed=eff.get("executed"), providers=eff.get("providers", r.detail.get("providers")))
    if eff.get("executed") and eff["executed"] != r.precision:
        # Not an error of this node: the library runs another precision here (a job
        # reports the same in its warnings and never calls it by the asked name).
        why = f"; {eff['warning']}" if eff.get("warning") else ""
        return _set(r, "unsupported", f"the backend executes {eff['executed']} when asked for {r.precision} here{why}",
                    "use another precision or backend on this device (the job would warn the same)")
    if r.precision == "int8":
        m, mr = y[:, 1] - y[:, 0], ref[:, 1] - ref[:, 0]
        corr = float(np.corrcoef(m, mr)[0, 1])
        r.detail["margin_correlation"] = corr
        if corr < MIN_INT8_CORR:
            return _set(r, "failed", f"int8 logit margins correlate {corr:.3f} with torch fp32 (< {MIN_INT8_CORR})")
    elif dprob > TOLERANCE[r.precision]:
        return _set(r, "failed", f"max |Δprob| vs torch fp32 {dprob:.2e} > {TOLERANCE[r.precision]:g} for {r.precision}")
    return r


def diagnose(backends: list[str] | None = None, devices: list[str] | None = None, run_models: bool = True,
             workdir: str | None = None) -> list[Record]:
    """Every record of this node: :func:`capability`, then (``run_models``) :func:`run_check`."""
    todo = [p for p in pairs(backends) if devices is None or p[2] in devices]
    records = [capability(*p) for p in todo]
    if run_models and any(r.status == "ok" for r in records):
        with tempfile.TemporaryDirectory(prefix="medray-doctor-", dir=workdir) as d:
            tiny = TinyModel(Path(d))
            records = [run_check(r, tiny) if r.status == "ok" else r for r in records]
    return records
