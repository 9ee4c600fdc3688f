"""TensorRT's side of the INT8 repair (:mod:`medray.backends.onnx.repair`), on the driver.

Precision lives in the graph (strongly typed networks): a kept layer is one whose inputs
no DequantizeLinear feeds — its activation rewired to the float tensor before its
QuantizeLinear, its weight back to the fp32 initializer — so TensorRT types it by its
float inputs (fp32).  The Q/DQ on its output stays: it is the next INT8 layer's input
(TensorRT then runs one quantize layer after the float one).  The graph is exactly the
candidate the search scored, in TensorRT's symmetric form; :func:`~medray.backends.onnx.
surgery.qdq_inputs` is the proof on the graph.  The engine, and its inspector's per-layer
types, come from the GPU workers (``effective_precision``).
"""

from __future__ import annotations

import json
from pathlib import Path

from medray.backends.artifacts import ArtifactCache
from medray.backends.onnx.repair import ValidationData, threads
from medray.backends.onnx.surgery import qdq_inputs, strip_qdq
from medray.backends.tensorrt.qdq_graph import CALIB_IDS_FILE, qdq_stats, trt_settings
from medray.specs import RunSpec

CHECK_FILE = "repair_check.json"


class TensorRTRepair:
    """:class:`~medray.backends.onnx.repair.RepairTarget` of backend=trt."""

    simulated = ("TensorRT does not run on the driver: the validation metrics of TensorRT graphs are ONNX Runtime's "
                 "exact simulation of their Q/DQ on the CPU; the engine's own are the run's")

    def __init__(self, prepare_graph, spec: RunSpec, cache: ArtifactCache, context: dict):
        self.prepare_graph, self.spec, self.cache, self.context = prepare_graph, spec, cache, context
        self.settings = trt_settings(spec.backend)
        self.threads = threads(context)

    def apply(self, kept: list[str], search: dict) -> dict:
        import onnx

        from medray.data.calibration import calibration_source

        parts = {"from": search["full_key"], "kept": sorted(kept), "how": "strip_qdq", "onnx": onnx.__version__}

        def build(path: Path) -> None:
            model, changes = strip_qdq(search["full"], search["pre"], kept)
            onnx.save(model, str(path))
            ids = calibration_source(self.context, self.spec.name).ids()
            (path.parent / CALIB_IDS_FILE).write_text(json.dumps({**ids, **qdq_stats(path)}, indent=1))
            (path.parent / CHECK_FILE).write_text(json.dumps({"changes": changes, "check": qdq_inputs(model, kept)}))

        art = self.cache.get_or_build("onnx-int8-trt-repaired", parts, "model.onnx", build).to_dict()
        side = json.loads((Path(art["path"]).parent / CHECK_FILE).read_text())
        check = {"how": "onnx graph (TensorRT's strongly typed network reads precision from it)", **side["check"]}
        return {**art, "check": check, "graph_changes": len(side["changes"])}

    def full(self, search: dict) -> dict:
        return {"path": search["full"], "key": search["full_key"]}

    def score(self, artifact: dict, data: ValidationData, precision: str) -> dict:
        from medray.backends.onnx.proxy import infer_fn

        return data.score(infer_fn(artifact["path"], self.threads, optimize=False))

    def fallback(self, precision: str) -> dict:
        from dataclasses import replace

        return self.prepare_graph(replace(self.spec, precision=precision), self.cache, self.context)

    def bench(self, artifacts: dict[str, dict], data: ValidationData) -> dict:
        return {"skipped": "TensorRT engines are built and timed on the GPU workers: the run's latency is the "
                           "repaired engine's"}
