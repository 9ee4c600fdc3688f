"""INT8 repair (``precision=int8 quantization.repair=true``): when full INT8 fails the
clinical gate, keep the fewest layers in higher precision so that it holds — one procedure
on the ONNX graph for ONNX Runtime, OpenVINO and TensorRT.

Shared (this module, cached by content):

1. the pre-processed fp32 graph and its full Q/DQ graph in the backend's Q/DQ form
   (:class:`~medray.backends.onnx.qdq.QdqSettings`), calibrated on the calibration split;
2. the layer groups (:mod:`.surgery`), the fp32 reference metrics and the proxy order
   (:mod:`.proxy`) on the *validation* split the task gives (never the evaluated one);
3. the search (:mod:`.search`): candidates = the full Q/DQ graph with the kept groups'
   Q/DQ removed, run as exact simulated quantisation by ONNX Runtime, scored with the
   task's metric.  Every evaluation is memoised (``repair-memo/``), so another limit or
   budget on the same graph and samples reuses them.

Per backend (a :class:`RepairTarget` in ``<backend>/repair.py``): the kept set applied
(ORT Q/DQ removal, NNCF ``ignored_scope``, TensorRT's Q/DQ graph), the proof that the kept
layers run in float, the repaired model judged on validation by the backend itself, the
fallback chain INT8-mixed → fp16 / bf16 → fp32 when no INT8 set passes, and the speed of
the repaired model against full INT8 and fp32.  :func:`repair` runs it all and returns the
artifact the actors load, with a ``repair`` section for the report.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from medray.backends.artifacts import ArtifactCache, int8_parts
from medray.backends.onnx.qdq import QdqSettings, preprocessed_artifact, quantize_qdq
from medray.backends.onnx.search import Gate, SearchOptions, Unavailable, fallback_chain, search, summary
from medray.backends.onnx.surgery import layer_groups, strip_qdq
from medray.io import as_dict
from medray.specs import RunSpec

log = logging.getLogger("medray.backends.repair")

# Bumped when the procedure changes what it finds (invalidates cached searches).
REVISION = 1
FALLBACK = ("fp16", "bf16", "fp32")
CALIB_RANGES = "calibration_ranges.json"  # beside a full Q/DQ graph: re-quantizations reuse its ranges


class RepairError(ValueError):
    """The INT8 repair cannot run as configured (no validation samples, no limit...)."""


class ValidationData(Protocol):
    """The task's validation samples, loaded: model inputs (a few, for the proxy and the
    speed check) and the task's metrics of a model (``infer``: inputs → outputs)."""

    inputs: np.ndarray

    def score(self, infer: Callable[[np.ndarray], np.ndarray]) -> dict[str, float]: ...


@dataclass
class RepairValidation:
    """What the task hands the repair (``context["repair"]``): which validation samples, how
    to load them (only when a search is not cached) and the gate's limits."""

    samples: pd.DataFrame
    loader: Callable[[pd.DataFrame], ValidationData]
    gates: list[Gate]
    overlap_with_calibration: int = 0
    _data: Any = field(default=None, repr=False, compare=False)  # loaded once, when a build needs it

    def ids(self) -> dict:
        from medray.data.calibration import calibration_ids

        return calibration_ids(self.samples)

    def load(self) -> ValidationData:
        if self._data is None:
            self._data = self.loader(self.samples)
        return self._data


class RepairTarget(Protocol):
    """One backend's side of the repair (``<backend>/repair.py``)."""

    settings: QdqSettings  # the Q/DQ form the search simulates
    simulated: str | None  # why validation metrics are a simulation (None: the backend's own)

    def apply(self, kept: list[str], search: dict) -> dict: ...  # the repaired artifact, with "check"

    def full(self, search: dict) -> dict: ...  # the full INT8 artifact (comparison)

    def score(self, artifact: dict, data: ValidationData, precision: str) -> dict: ...

    def fallback(self, precision: str) -> dict: ...  # raises Unavailable with the reason

    def bench(self, artifacts: dict[str, dict], data: ValidationData) -> dict | None: ...


def wanted(spec: RunSpec, context: dict) -> bool:
    """This spec is an INT8 run that ``quantization.repair=true`` repairs."""
    q = context.get("quantization")
    return spec.precision == "int8" and bool(getattr(q, "repair", False))


def validation_of(context: dict, what: str) -> RepairValidation:
    val = context.get("repair")
    if val is None:
        raise RepairError(f"{what}: quantization.repair=true needs the task's validation samples (context['repair'])")
    if not val.gates:
        raise RepairError(f"{what}: quantization.repair=true needs a limit: quantization.max_drop (the task's metric), "
                          "quantization.max_subgroup_drop, quantization.min_ratio or quantization.limits")
    return val


def threads(context: dict) -> int:
    import os

    n = getattr(context.get("quantization"), "repair_threads", None)
    return int(n) if n else max(1, len(os.sched_getaffinity(0)))


# --------------------------------------------------------------------------- the shared search


def full_qdq_artifact(spec: RunSpec, cache: ArtifactCache, pre: dict, context: dict, settings: QdqSettings) -> dict:
    """The full Q/DQ graph of ``settings`` from the pre-processed graph (its calibration
    ranges kept beside it for the repaired re-quantizations)."""
    import onnx
    import onnxruntime as ort

    from medray.data.calibration import calibration_source

    calib = calibration_source(context, spec.name)
    parts = int8_parts(spec, pre["key"], calib.ids(), "static-qdq", **settings.to_dict(), onnxruntime=ort.__version__,
                       onnx=onnx.__version__)

    def build(path: Path) -> None:
        quantize_qdq(pre["path"], path, calib.load(), settings, cache_path=path.parent / CALIB_RANGES)

    return cache.get_or_build("onnx-qdq", parts, "model.onnx", build).to_dict()


def _modules(spec: RunSpec) -> list[str]:
    """The PyTorch module names (``named_modules``) of a PyTorch model; none for a model
    file (its layers are named by their ONNX nodes only)."""
    from medray.models.sources import source

    if not source(spec.model.source).torch_model:
        return []
    from medray.models.loaders import load_torch_model

    return [name for name, _ in load_torch_model(spec.model).named_modules()]


class _Memo:
    """Evaluations of one (full Q/DQ graph, validation samples): the fp32 reference, the proxy
    scores and every kept set's metrics, in ``<cache>/artifacts/repair-memo/``."""

    def __init__(self, cache: ArtifactCache, full_key: str, val_sha: str):
        self.cache, self.name = cache, f"repair-memo-{full_key[:16]}-{val_sha[:12]}"
        self.path = cache.root / "repair-memo" / f"{self.name}.json"
        self.data: dict = {}
        if self.path.is_file():
            try:
                self.data = json.loads(self.path.read_text())
            except ValueError:
                log.warning("repair memo %s is unreadable; evaluating again", self.path)
        self.evals = {frozenset(k): v for k, v in self.data.get("evals", [])}

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.data["evals"] = [[sorted(k), v] for k, v in self.evals.items()]
        with self.cache.lock(self.name):
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.data, default=float))
            tmp.replace(self.path)


def search_artifact(spec: RunSpec, cache: ArtifactCache, fp32: dict, context: dict, settings: QdqSettings) -> dict:
    """The shared procedure's result (``repair.json``, cached by content): the kept groups,
    every step of the search, the reference metrics, the proxy order."""
    import onnx

    val = validation_of(context, spec.name)
    q = context["quantization"]
    pre = preprocessed_artifact(cache, fp32)
    full = full_qdq_artifact(spec, cache, pre, context, settings)
    options = SearchOptions(q.repair_probe, float(q.repair_budget_s), float(q.repair_max_kept))
    parts = {"from": full["key"], "validation": val.ids(), "gates": [asdict(g) for g in val.gates],
             "options": asdict(options), "revision": REVISION}

    def build(path: Path) -> None:
        from medray.backends.onnx.proxy import infer_fn, proxy_scores

        groups = layer_groups(pre["path"], _modules(spec))
        names = [g.name for g in groups]
        data = val.load()
        memo = _Memo(cache, full["key"], parts["validation"]["ids_sha256"])
        n = threads(context)
        if "reference" not in memo.data:  # the fp32 graph the candidates are quantized from
            memo.data["reference"] = data.score(infer_fn(pre["path"], n, optimize=False))
        if "proxy" not in memo.data:
            memo.data["proxy"] = proxy_scores(full["path"], pre["path"], np.asarray(data.inputs[:8], np.float32))
        ref, proxy = memo.data["reference"], memo.data["proxy"]
        order = sorted(names, key=lambda g: proxy.get(g, {}).get("score", 1e9))
        qdq, fpm = onnx.load(full["path"]), onnx.load(pre["path"])

        def evaluate(kept: frozenset) -> dict:
            return data.score(infer_fn(strip_qdq(qdq, fpm, kept)[0] if kept else qdq, n, optimize=False))

        log.info("%s: INT8 repair search over %d layer groups on %d validation samples (%s; budget %.0f s)", spec.name,
                 len(names), len(val.samples), "; ".join(g.describe() for g in val.gates), options.budget_s)
        res = search(names, evaluate, val.gates, ref, order=order, options=options, memo=memo.evals)
        memo.save()
        by_name = {g.name: g for g in groups}
        out = {"groups": [g.to_dict() for g in groups], "settings": settings.to_dict(), "gates": parts["gates"],
               "reference": summary(val.gates, ref), "reference_full": ref, "options": asdict(options),
               "proxy_order": [{"layer": g, **proxy.get(g, {})} for g in order[:10]],
               "kept": None if res.kept is None else [by_name[k].to_dict() for k in res.kept],
               "search": res.to_dict(), "pre": pre["path"], "full": full["path"], "full_key": full["key"]}
        path.write_text(json.dumps(out, indent=1, default=float))
        log.info("%s: INT8 repair search: %s in %d evaluations (%d reused), %.1f s", spec.name,
                 f"keep {len(res.kept)} of {len(names)} layers in float {res.kept}" if res.passed else res.stopped,
                 res.evaluations, res.reused, res.wall_s)

    art = cache.get_or_build("int8-repair-search", parts, "repair.json", build).to_dict()
    return {**json.loads(Path(art["path"]).read_text()), "artifact": art}


# --------------------------------------------------------------------------- per backend


def _chain(spec: RunSpec, target: RepairTarget, result: dict, supported: tuple[str, ...], no_fallback: bool):
    """The steps of the fallback chain: INT8-mixed (the search's set on the backend), then
    fp16 / bf16 / fp32 — each an artifact of the backend's own prepare, scored on
    validation; a precision this backend or machine lacks is skipped with the reason."""
    data, chosen = result["data"], result["chosen"]

    def int8_mixed() -> dict | None:
        kept = result["search"]["kept"]
        if kept is None:
            return None
        art = target.apply([k["onnx"] for k in kept], result["search"])
        chosen["int8"] = art
        result["kept_check"] = art.get("check")
        return target.score(art, data, "int8")

    def step(p: str) -> Callable[[], dict]:
        def run() -> dict:
            if no_fallback:
                raise Unavailable("quantization.repair_fallback=false")
            if p not in supported:
                raise Unavailable(f"backend={spec.backend.name} on device={spec.device} has no {p}")
            art = target.fallback(p)
            chosen[p] = art
            return target.score(art, data, p)

        return run

    return [("int8-mixed", int8_mixed)] + [(p, step(p)) for p in FALLBACK]


def repair(spec: RunSpec, cache: ArtifactCache, fp32: dict, context: dict, target: RepairTarget,
           supported: tuple[str, ...]) -> dict:
    """The artifact ``spec`` runs after the repair: the repaired INT8 model, or the first
    fallback precision that passes; ``repair`` (report) and ``executes`` (the precision it
    runs) added.  The outcome is cached; the artifacts it names are rebuilt from the cache."""
    val = validation_of(context, spec.name)
    q = context["quantization"]
    found = search_artifact(spec, cache, fp32, context, target.settings)
    parts = {"search": found["artifact"]["key"], "backend": as_dict(spec.backend), "device": spec.device,
             "fallback": q.repair_fallback, "bench": q.repair_bench, "compare": q.compare_accuracy_control,
             "revision": REVISION}

    def build(path: Path) -> None:
        t0 = time.perf_counter()
        data = val.load()
        ref = found["reference_full"]
        result = {"search": found, "data": data, "chosen": {}}
        steps = fallback_chain(_chain(spec, target, result, supported, not q.repair_fallback), val.gates, ref)
        passing = next((s for s in steps if s["passes"]), None)
        if passing is None:
            raise RepairError(
                f"{spec.name}: no precision passes the gate ({'; '.join(g.describe() for g in val.gates)}): "
                + "; ".join(f"{s['precision']}: {s.get('skipped') or '; '.join(s['violations']) or 'no candidate'}"
                            for s in steps) + "; relax the limits, raise quantization.repair_max_kept / "
                "repair_budget_s, or set quantization.repair_fallback=true")
        executes = "int8" if passing["precision"] == "int8-mixed" else passing["precision"]
        out = {"executes": executes, "steps": steps, "check": result.get("kept_check"),
               "chosen_key": result["chosen"][executes]["key"], "validation_simulated": target.simulated}
        full = target.full(found)
        out["full_int8"] = {"metrics": summary(val.gates, target.score(full, data, "int8")), "path": full["path"]}
        if q.repair_bench:
            arts = {"fp32": {**fp32, "executes": "fp32"}, "int8_full": {**full, "executes": "int8"},
                    "repaired": {**result["chosen"][executes], "executes": executes}}
            out["speed"] = target.bench(arts, data)
        if q.compare_accuracy_control and hasattr(target, "accuracy_control"):
            out["accuracy_control"] = target.accuracy_control(val, data)
        out["wall_s"] = round(time.perf_counter() - t0, 2)
        path.write_text(json.dumps(out, indent=1, default=float))

    art = cache.get_or_build("int8-repair", parts, "outcome.json", build).to_dict()
    outcome = json.loads(Path(art["path"]).read_text())
    executes = outcome["executes"]
    if executes == "int8":
        chosen = target.apply([k["onnx"] for k in found["kept"]], found)
    else:
        log.warning("%s: no INT8 layer set passes the gate; running %s (%s)", spec.name, executes,
                    "; ".join(f"{s['precision']}: {'passes' if s['passes'] else s.get('skipped') or 'fails'}"
                              for s in outcome["steps"]))
        chosen = target.fallback(executes)
    if chosen["key"] != outcome["chosen_key"]:
        raise RepairError(f"{spec.name}: the cached repair outcome names another artifact than the one rebuilt "
                          f"({outcome['chosen_key'][:12]} vs {chosen['key'][:12]}); clear {art['path']}")
    return {**chosen, "executes": executes, "repair": report_section(spec, found, outcome, val)}


def report_section(spec: RunSpec, found: dict, outcome: dict, val: RepairValidation) -> dict:
    """What metrics.json (``runs[].artifact.repair``) and report.md show of the repair."""
    groups, kept = found["groups"], found["kept"]
    res = found["search"]
    return {
        "executes": outcome["executes"],
        "gates": [g.describe() for g in val.gates],
        "gate_list": [{"text": g.describe(), **asdict(g)} for g in val.gates],
        "validation": {**val.ids(), "overlap_with_calibration": val.overlap_with_calibration,
                       "simulated": outcome.get("validation_simulated")},
        "settings": found["settings"],
        "layers": len(groups),
        "kept": kept,
        "kept_fraction": None if kept is None else len(kept) / max(1, len(groups)),
        "reference": found["reference"],
        "full_int8": outcome["full_int8"],
        "search": {k: res[k] for k in ("passed", "stopped", "evaluations", "reused", "wall_s", "steps", "sensitivity")},
        "proxy_order": found["proxy_order"],
        "options": found["options"],
        "fallback": outcome["steps"],
        "check": outcome.get("check"),
        "speed": outcome.get("speed"),
        "accuracy_control": outcome.get("accuracy_control"),
        "wall_s": outcome.get("wall_s"),
        "search_artifact": found["artifact"]["path"],
    }


def bench(fns: dict[str, Callable[[], object]], warmup: int = 3, runs: int = 30, max_s: float = 60.0) -> dict:
    """Median / p25 / p75 latency (ms) of each callable, interleaved round-robin so that
    load from other processes hits every variant alike; stops early after ``max_s``."""
    for f in fns.values():
        for _ in range(warmup):
            f()
    ts: dict[str, list[float]] = {k: [] for k in fns}
    t_end = time.perf_counter() + max_s
    for _ in range(runs):
        for k, f in fns.items():
            t = time.perf_counter()
            f()
            ts[k].append(1e3 * (time.perf_counter() - t))
        if time.perf_counter() > t_end:
            break
    return {k: {"median_ms": round(float(np.median(v)), 3), "p25_ms": round(float(np.percentile(v, 25)), 3),
                "p75_ms": round(float(np.percentile(v, 75)), 3), "runs": len(v)} for k, v in ts.items()}


def speed_table(timings: dict, batch: int, threads_: int, what: str) -> dict:
    """The repaired model's speed relative to full INT8 and fp32 (ratios of medians)."""
    med = {k: v["median_ms"] for k, v in timings.items()}
    rep = med.get("repaired")
    return {"what": what, "batch": batch, "threads": threads_, "latency_ms": timings,
            "repaired_vs_int8_full": round(med["int8_full"] / rep, 3) if rep and med.get("int8_full") else None,
            "repaired_vs_fp32": round(med["fp32"] / rep, 3) if rep and med.get("fp32") else None,
            "note": "factors > 1: the repaired model is faster (median latency ratio)"}
