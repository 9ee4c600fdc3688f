"""OpenVINO's side of the INT8 repair (:mod:`medray.backends.onnx.repair`).

The kept layers go into NNCF's ``IgnoredScope(names=...)`` by their OpenVINO names
(:func:`ov_names`): OpenVINO reads an ONNX Conv/Gemm *with bias* as a ``Convolution`` /
``MatMul`` called ``<onnx name>/WithoutBiases`` plus an ``Add`` called ``<onnx name>``.
Passing the ONNX name validates (it is the Add) and does nothing — the convolution stays
INT8 — so the compute op's own name is used.  :func:`check` is the proof: the compiled
model's runtime precision of each compute layer (``rt_info`` ``runtimePrecision``).

NNCF's own accuracy control stays available (``quantization.max_drop`` without repair)
and, with ``quantization.compare_accuracy_control=true``, is run on the same validation
samples and reported beside the repair (kept layers, metric, wall time).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from functools import partial
from pathlib import Path

import numpy as np

from medray.backends.artifacts import ArtifactCache, int8_parts
from medray.backends.onnx.qdq import QdqSettings
from medray.backends.onnx.repair import RepairValidation, ValidationData, bench, speed_table, threads
from medray.backends.onnx.search import Unavailable, summary
from medray.specs import RunSpec

# OpenVINO op types of the compute layers (model ops and runtime layer types).
OV_COMPUTE = {"Convolution", "GroupConvolution", "ConvolutionBackpropData", "MatMul", "FullyConnected", "Deconvolution"}
FLOAT = ("f32", "bf16", "f16")
CHECK_FILE = "repair_check.json"


def ov_names(model, layers: Iterable[str]) -> dict[str, str]:
    """ONNX node name → the OpenVINO compute op that reads its weights (``<name>`` or
    ``<name>/WithoutBiases``); a KeyError for a layer OpenVINO has no compute op for."""
    ops = {op.get_friendly_name() for op in model.get_ordered_ops() if op.get_type_name() in OV_COMPUTE}
    out = {}
    for g in layers:
        name = next((c for c in (f"{g}/WithoutBiases", g) if c in ops), None)
        if name is None:
            raise KeyError(f"OpenVINO has no compute op for the ONNX layer {g!r}")
        out[g] = name
    return out


def check(compiled, kept_ov: Iterable[str]) -> dict:
    """Runtime precision of the compute layers of a compiled model; ``ok``: every kept one
    runs in float.  A fused layer lists its ops in ``originalLayersNames``, the compute op first."""
    kept_ov = set(kept_ov)
    prec = {}
    for op in compiled.get_runtime_model().get_ordered_ops():
        rt = op.get_rt_info()
        if rt["layerType"].astype(str) not in OV_COMPUTE:
            continue
        prec[rt["originalLayersNames"].astype(str).split(",")[0]] = rt["runtimePrecision"].astype(str)
    kept = {k: prec.get(k, "missing") for k in sorted(kept_ov)}
    floats = sorted(k for k, p in prec.items() if p in FLOAT)
    return {"how": "openvino runtime model (rt_info runtimePrecision)", "kept_runtime_precision": kept,
            "int8_layers": sum(p in ("u8", "i8") for p in prec.values()), "float_layers": floats,
            "collateral_float": sorted(set(floats) - kept_ov), "ok": all(p in FLOAT for p in kept.values())}


def compile_model(model, precision: str, n_threads: int, latency: bool = False):
    import openvino as ov

    from medray.backends.openvino.quantize import HINTS

    config = {"INFERENCE_PRECISION_HINT": HINTS[precision], "INFERENCE_NUM_THREADS": int(n_threads)}
    if latency:
        config.update(PERFORMANCE_HINT="LATENCY", NUM_STREAMS=1)
    core = ov.Core()
    return core.compile_model(core.read_model(model) if isinstance(model, str) else model, "CPU", config)


def _runner(compiled):
    req = compiled.create_infer_request()
    return lambda x: req.infer({0: np.ascontiguousarray(x, dtype=np.float32)})[0].copy()


class OpenVINORepair:
    """:class:`~medray.backends.onnx.repair.RepairTarget` of backend=openvino."""

    # The search simulates ORT's u8/s8 Q/DQ form; the repaired NNCF model is then judged by
    # OpenVINO itself (score), so no metric of the report is a simulation.
    simulated = None
    settings = QdqSettings()

    def __init__(self, backend_cls, spec: RunSpec, cache: ArtifactCache, context: dict, ir: dict):
        self.cls, self.spec, self.cache, self.context, self.ir = backend_cls, spec, cache, context, ir
        self.threads = threads(context)

    def apply(self, kept: list[str], search: dict) -> dict:
        import nncf
        import openvino as ov

        from medray.backends.openvino.quantize import QUANT_SIDECAR, quantize_nncf
        from medray.data.calibration import calibration_source

        names = ov_names(ov.Core().read_model(self.ir["path"]), kept)
        calib = calibration_source(self.context, self.spec.name)
        cfg = self.spec.backend
        parts = int8_parts(self.spec, self.ir["key"], calib.ids(), "nncf-ptq", preset=cfg.nncf_preset,
                           fast_bias_correction=cfg.fast_bias_correction, ignored_scope=sorted(names.values()),
                           device=self.spec.device, openvino=ov.__version__, nncf=nncf.__version__)

        def build(path: Path) -> None:
            info = quantize_nncf(self.spec, self.ir["path"], path, calib, None, None, ignored=list(names.values()))
            (path.parent / QUANT_SIDECAR).write_text(json.dumps(info, indent=2, default=str))
            compiled = compile_model(str(path), "int8", self.threads)
            (path.parent / CHECK_FILE).write_text(json.dumps({"ov_names": names, "check": check(compiled, names.values())}))

        art = self.cache.get_or_build("ov-int8-repaired", parts, "model.xml", build).to_dict()
        folder = Path(art["path"]).parent
        side = json.loads((folder / CHECK_FILE).read_text())
        return {**art, "reference": {"path": self.ir["path"], "bytes": self.ir["bytes"], "precision": "fp32"},
                "calibration": parts["calibration"], "quantization": json.loads((folder / QUANT_SIDECAR).read_text()),
                "check": {**side["check"], "ov_names": side["ov_names"]}}

    def full(self, search: dict) -> dict:
        """medray's full NNCF INT8 model (``precision=int8`` without the repair)."""
        from medray.backends.openvino.quantize import int8_artifact

        return int8_artifact(self.spec, self.cache, self.ir, self.context)

    def score(self, artifact: dict, data: ValidationData, precision: str) -> dict:
        return data.score(_runner(compile_model(artifact["path"], precision, self.threads)))

    def fallback(self, precision: str) -> dict:
        from dataclasses import replace

        why = self.cls.capability(precision, self.spec.device, {})
        if why is not None:
            raise Unavailable(why[1])
        return self.cls.prepare(replace(self.spec, precision=precision), self.cache, self.context)

    def bench(self, artifacts: dict[str, dict], data: ValidationData) -> dict:
        x = data.inputs[:1]
        fns = {k: partial(_runner(compile_model(a["path"], a["executes"], 1, latency=True)), x)
               for k, a in artifacts.items()}
        return speed_table(bench(fns), len(x), 1, "openvino CPU, 1 thread, LATENCY hint, on the driver (bare loop)")

    def accuracy_control(self, val: RepairValidation, data: ValidationData) -> dict:
        """NNCF's ``quantize_with_accuracy_control`` on the same validation samples and limit
        (the first gate's drop), for comparison with the repair."""
        import nncf
        import openvino as ov

        from medray.data.calibration import calibration_source

        gate = next((g for g in val.gates if g.max_drop is not None and not g.subgroups), None)
        if gate is None or not hasattr(data, "score_outputs"):
            return {"skipped": "NNCF's accuracy control takes one absolute drop of a metric scored per sample"}
        calib = calibration_source(self.context, self.spec.name).load()
        items = [calib.inputs[i : i + 1] for i in range(len(calib))]
        inputs = data.inputs

        def validate(compiled, idx) -> tuple[float, list[float]]:
            idx = list(idx)
            logits = np.concatenate([compiled(inputs[i : i + 1])[0] for i in idx])
            m, per_item = data.score_outputs(logits, np.asarray(idx))
            value = m.get(gate.metric)
            return (float(value) if value is not None else float(np.mean(per_item))), per_item

        t = time.perf_counter()
        q = nncf.quantize_with_accuracy_control(
            ov.Core().read_model(self.ir["path"]), nncf.Dataset(items), nncf.Dataset(list(range(len(inputs))),
                                                                                     lambda i: inputs[i : i + 1]),
            validate, max_drop=gate.max_drop, drop_type=nncf.DropType.ABSOLUTE, subset_size=len(items))
        wall = time.perf_counter() - t
        compiled = compile_model(q, "int8", self.threads)
        c = check(compiled, [])
        return {"tool": f"nncf {nncf.__version__} quantize_with_accuracy_control", "max_drop": gate.max_drop,
                "metric": gate.metric, "metrics": summary(val.gates, data.score(_runner(compiled))),
                "kept_in_float": c["float_layers"], "int8_layers": c["int8_layers"], "wall_s": round(wall, 2)}
