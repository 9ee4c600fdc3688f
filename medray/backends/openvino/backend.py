"""OpenVINO on the CPU, executing exactly the precision asked for.

Artifacts (built on the driver, cached): the fp32 ONNX export → an fp32 OpenVINO IR
(weights kept in fp32: ``save_model`` would compress them to fp16 by default) → for
``int8`` an NNCF post-training-quantized IR calibrated on the calibration split
(optionally with accuracy control, ``quantization.max_drop``).

Execution: the inference precision hint is always set — ``f32`` for fp32 *and* for the
layers an int8 model keeps in float (on AMX CPUs OpenVINO runs "fp32" models in bf16
unless told otherwise), ``bf16`` / ``f16`` for those precisions, refused when the CPU
cannot run them.  After compiling, the runtime model's per-layer ``runtimePrecision`` is
read back; a run whose compute layers do not execute the requested precision fails.

Concurrency ("streams"): as for every medray backend, ``streams`` is the number of Ray
actors, each with its share of the node's cores (``threads``).  Inside an actor the
compiled model has ``backend.num_requests`` infer requests (default: OpenVINO's
``OPTIMAL_NUMBER_OF_INFER_REQUESTS`` for ``backend.performance_hint``, i.e. one per
OpenVINO stream); each batch is split into that many slices, started asynchronously
together so OpenVINO's streams run them in parallel, and re-assembled in order.
``performance_hint=latency`` gives one stream and one request per batch.
"""

from __future__ import annotations

import logging

import numpy as np

from medray.backends.artifacts import ArtifactCache
from medray.backends.base import Backend, BackendError
from medray.backends.onnx.repair import repair, wanted
from medray.backends.openvino.quantize import HINTS, int8_artifact, ir_artifact, runtime_precision
from medray.specs import RunSpec

log = logging.getLogger("medray.backends.openvino")

# The ONNX export the IR is converted from: the same cached file ORT uses by default.
ONNX_OPSET = 17
# The CPU capability each precision needs (Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")).
CAPABILITY = {"bf16": "BF16", "fp16": "FP16"}


class OpenVINOBackend(Backend):
    name = "openvino"

    @classmethod
    def capability(cls, precision: str, device: str, detail: dict) -> tuple[str, str, str] | None:
        import openvino as ov

        core = ov.Core()
        caps = list(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
        detail["openvino_devices"] = list(core.available_devices)
        detail["capabilities"] = caps
        need = CAPABILITY.get(precision)
        if need and need not in caps:
            return ("unsupported", f"OpenVINO's CPU plugin lists no {need} on this CPU (capabilities {caps})",
                    "use precision=fp32 or int8 here, or a CPU with it (bf16: AVX512_BF16/AMX; fp16: AVX512_FP16/AMX-FP16)")
        return None

    @classmethod
    def prepare(cls, spec: RunSpec, cache: ArtifactCache, context: dict) -> dict:
        from medray.backends.onnx.graph import onnx_artifact

        onnx_art = onnx_artifact(spec, cache, opset=ONNX_OPSET)
        ir = ir_artifact(spec, cache, onnx_art)
        if spec.precision == "int8" and wanted(spec, context):
            from medray.backends.openvino.repair import OpenVINORepair

            target = OpenVINORepair(cls, spec, cache, context, ir)
            return repair(spec, cache, onnx_art, context, target, spec.backend.SUPPORTED.get(spec.device, ()))
        if spec.precision == "int8":
            return int8_artifact(spec, cache, ir, context)
        return ir

    def _load(self) -> None:
        import openvino as ov

        spec = self.spec
        cfg = spec.backend
        core = ov.Core()
        caps = core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        need = CAPABILITY.get(self.executes)
        if need and need not in caps:
            raise BackendError(
                f"{spec.name}: this CPU ({core.get_property('CPU', 'FULL_DEVICE_NAME')}) has no {need} support "
                f"(OPTIMIZATION_CAPABILITIES={caps}); use precision=fp32 or int8, or a CPU with {need}"
            )
        config = {
            "INFERENCE_PRECISION_HINT": HINTS[self.executes],
            "PERFORMANCE_HINT": cfg.performance_hint.upper(),
            "INFERENCE_NUM_THREADS": int(spec.threads),
            "ENABLE_CPU_PINNING": bool(cfg.cpu_pinning),
        }
        if cfg.num_streams is not None:
            config["NUM_STREAMS"] = int(cfg.num_streams)
        self._compiled = core.compile_model(core.read_model(spec.artifact["path"]), "CPU", config)
        n = cfg.num_requests or int(self._compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        # One infer request per concurrent slice, started together and waited on in order.
        # Plain requests, not an AsyncInferQueue: a batch never has more slices than
        # requests, so nothing needs queueing, and the queue's Python callback deadlocked
        # on destruction (OpenVINO 2026.4: close() hung in AsyncInferQueue's destructor).
        self._requests = [self._compiled.create_infer_request() for _ in range(n)]
        self._n_requests = n

    def _infer(self, x: np.ndarray) -> np.ndarray:
        k = min(self._n_requests, len(x))
        chunks = np.array_split(x, k) if k > 1 else [x]
        reqs = self._requests[: len(chunks)]
        for req, chunk in zip(reqs, chunks):
            req.start_async({0: np.ascontiguousarray(chunk)})
        outs = []
        for req in reqs:
            req.wait()
            # Copy: the output tensor's memory belongs to the request, which is reused.
            outs.append(req.get_output_tensor(0).data.copy())
        return np.concatenate(outs) if len(outs) > 1 else outs[0]

    def _close(self) -> None:
        self._requests = []
        self._compiled = None

    def _effective_precision(self) -> dict:
        spec = self.spec
        c = self._compiled
        summary = runtime_precision(c)
        hint = c.get_property("INFERENCE_PRECISION_HINT").to_string()
        info = {
            "requested": spec.precision,
            "source": "openvino runtime model (rt_info runtimePrecision)",
            **{k: v for k, v in summary.items() if k != "float_compute_layers"},
            "inference_precision_hint": hint,
            "performance_hint": str(c.get_property("PERFORMANCE_HINT")),
            "num_streams": int(c.get_property("NUM_STREAMS")),
            "infer_requests": self._n_requests,
            "threads": int(c.get_property("INFERENCE_NUM_THREADS")),
            "execution_devices": list(c.get_property("EXECUTION_DEVICES")),
        }
        want = self.executes  # an INT8 repair's fallback precision is reported (metrics.json, warnings)
        if want == "int8":
            info["kept_in_float"] = summary["float_compute_layers"]
        # No silent fallback: the compute layers must run what was asked for (for int8:
        # most of them; NNCF may keep some in f32 on purpose, listed in kept_in_float).
        compute = summary["compute_ops"]
        wrong = {p: n for p, n in compute.items() if p != want}
        if summary["executed"] != want or (want != "int8" and wrong):
            raise BackendError(
                f"{spec.name}: asked for {want} (hint {HINTS[want]}) but the compiled model "
                f"executes its compute layers as {compute}; refusing to report it as {want}"
            )
        return info
