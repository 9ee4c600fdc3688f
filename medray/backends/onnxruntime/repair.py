"""ONNX Runtime's side of the INT8 repair (:mod:`medray.backends.onnx.repair`).

The kept layers are passed to ``quantize_static(nodes_to_exclude=...)`` and then stripped
of the Q/DQ that still feeds them (:func:`~medray.backends.onnx.surgery.strip_qdq`):
``nodes_to_exclude`` alone repairs nothing — the producer of an excluded Conv still
quantizes the tensor it reads, and ORT's optimizer quantizes a float Conv it finds between
a DQ and a Q (``WeightBiasQuantization``) back to a ``QLinearConv``.  With the DQ gone,
the producer has no Q after it either, so ORT runs it in float too (``QLinearConv`` needs a
Q on its output): that layer is reported as ``collateral_float``.

:func:`check` is the proof: the file's kept nodes read no DequantizeLinear, and ORT's
optimised graph (what the session runs) maps none of them to an int8 kernel.
"""

from __future__ import annotations

import json
import re
import tempfile
from functools import partial
from pathlib import Path

from medray.backends.artifacts import ArtifactCache
from medray.backends.onnx.qdq import QdqSettings, quantize_qdq
from medray.backends.onnx.repair import CALIB_RANGES, ValidationData, bench, speed_table, threads
from medray.backends.onnx.search import Unavailable
from medray.backends.onnx.surgery import COMPUTE, strip_qdq
from medray.specs import RunSpec

# ORT's integer kernels a Q/DQ fusion creates (optimised graph).
INT8_KERNELS = {"QLinearConv", "QGemm", "QLinearMatMul", "ConvInteger", "MatMulInteger", "MatMulIntegerToFloat",
                "DynamicQuantizeMatMul", "QLinearConvTranspose"}
CHECK_FILE = "repair_check.json"


def check(path: str, kept: list[str], n_threads: int = 1) -> dict:
    """Which layer groups ORT really runs in int8: the optimised graph names its int8
    kernels ``<node>_token_<n>``; a group without one runs in float."""
    import onnx

    from medray.backends.onnx.proxy import session

    model = onnx.load(str(path))
    producer = {o: n for n in model.graph.node for o in n.output}
    groups = [n.name for n in model.graph.node if n.op_type in COMPUTE]
    dq_fed = {n.name: [i for i in n.input if i in producer and producer[i].op_type == "DequantizeLinear"]
              for n in model.graph.node if n.name in kept}
    with tempfile.TemporaryDirectory(prefix="medray-ort-check-") as tmp:
        opt = Path(tmp) / "optimized.onnx"
        # The level-ALL graph is hardware-specific; it is only read here, never run.
        session(path, n_threads, True, str(opt))
        om = onnx.load(str(opt))
    int8 = {re.sub(r"_token_\d+$", "", n.name) for n in om.graph.node if n.op_type in INT8_KERNELS}
    floats = [g for g in groups if g not in int8]
    return {
        "how": "onnx graph + onnxruntime optimised graph",
        "kept_dq_inputs": {k: v for k, v in dq_fed.items() if v},
        "kept_int8_in_optimized_graph": sorted(set(kept) & int8),
        "int8_layers": len(int8 & set(groups)),
        "float_layers": floats,
        "collateral_float": sorted(set(floats) - set(kept)),
        "ok": all(not v for v in dq_fed.values()) and not (set(kept) & int8) and set(dq_fed) == set(kept),
    }


class OnnxRuntimeRepair:
    """:class:`~medray.backends.onnx.repair.RepairTarget` of backend=onnxruntime."""

    simulated = None

    def __init__(self, backend_cls, spec: RunSpec, cache: ArtifactCache, context: dict, fp32: dict):
        cfg = spec.backend
        self.cls, self.spec, self.cache, self.context, self.fp32 = backend_cls, spec, cache, context, fp32
        self.settings = QdqSettings(cfg.quant_activation, cfg.quant_method, cfg.quant_per_channel)
        self.threads = threads(context)

    def apply(self, kept: list[str], search: dict) -> dict:
        import onnx
        import onnxruntime as ort

        from medray.backends.onnx.fp16 import reference

        parts = {"from": search["full_key"], "kept": sorted(kept), "how": "nodes_to_exclude + strip_qdq",
                 "onnxruntime": ort.__version__, "onnx": onnx.__version__}

        def build(path: Path) -> None:
            ranges = Path(search["full"]).parent / CALIB_RANGES  # the full graph's ranges: only the kept set differs
            quantize_qdq(search["pre"], path, None, self.settings, exclude=sorted(kept), cache_path=ranges)
            model, changes = strip_qdq(path, search["pre"], kept)
            onnx.save(model, str(path))
            (path.parent / CHECK_FILE).write_text(json.dumps({"changes": changes, "check": check(str(path), kept)}, indent=1))

        art = self.cache.get_or_build("onnx-int8-repaired", parts, "model.onnx", build).to_dict()
        side = json.loads((Path(art["path"]).parent / CHECK_FILE).read_text())
        return {**art, "reference": reference(self.fp32), "check": side["check"], "graph_changes": len(side["changes"])}

    def full(self, search: dict) -> dict:
        """The full Q/DQ graph the search started from: medray's ORT INT8 model (same settings)."""
        return {"path": search["full"], "key": search["full_key"]}

    def score(self, artifact: dict, data: ValidationData, precision: str) -> dict:
        from medray.backends.onnx.proxy import infer_fn

        return data.score(infer_fn(artifact["path"], self.threads, optimize=True))

    def fallback(self, precision: str) -> dict:
        from dataclasses import replace

        if precision == "fp16" and self.spec.device == "cpu":
            raise Unavailable("ONNX Runtime's CPU provider has no fp16 convolutions: it runs them in fp32 (no gain "
                              "over fp32)")
        return self.cls.prepare(replace(self.spec, precision=precision), self.cache, self.context)

    def bench(self, artifacts: dict[str, dict], data: ValidationData) -> dict:
        from medray.backends.onnx.proxy import infer_fn

        x = data.inputs[:1]
        fns = {k: partial(infer_fn(a["path"], 1, optimize=True), x) for k, a in artifacts.items()}
        return speed_table(bench(fns), len(x), 1, "onnxruntime CPU sessions on the driver (bare loop)")
