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

import collections
import json
import logging
from pathlib import Path

import numpy as np

from medray.backends.artifacts import ArtifactCache, int8_parts
from medray.backends.base import Backend, BackendError
from medray.specs import RunSpec

log = logging.getLogger("medray.backends.openvino")

# The ONNX export the IR is converted from: the same cached file ORT uses by default.
ONNX_OPSET = 17
# medray precision → OpenVINO inference precision hint.  int8: the layers NNCF leaves in
# float run in f32 (what its accuracy control measured), never a silent bf16.
HINTS = {"fp32": "f32", "bf16": "bf16", "fp16": "f16", "int8": "f32"}
# The CPU capability each precision needs (Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")).
CAPABILITY = {"bf16": "BF16", "fp16": "FP16"}
# runtimePrecision values → medray names.
_PREC = {"f32": "fp32", "bf16": "bf16", "f16": "fp16", "i8": "int8", "u8": "int8", "i32": "int32", "i64": "int64"}
# Runtime layer types that do the arithmetic.
_COMPUTE = {"Convolution", "FullyConnected", "MatMul", "Deconvolution", "GroupConvolution"}
QUANT_SIDECAR = "quantization.json"


# --------------------------------------------------------------------------- artifacts


def ir_artifact(spec: RunSpec, cache: ArtifactCache, onnx_art: dict) -> dict:
    """fp32 OpenVINO IR (``model.xml`` + ``model.bin``) converted from the cached ONNX."""
    import openvino as ov

    parts = {"from": onnx_art["key"], "convert": "onnx->ir", "compress_to_fp16": False, "openvino": ov.__version__,
             "device": spec.device}

    def build(path: Path) -> None:
        model = ov.Core().read_model(onnx_art["path"])
        ov.save_model(model, str(path), compress_to_fp16=False)

    return cache.get_or_build("ov-ir", parts, "model.xml", build).to_dict()


def int8_artifact(spec: RunSpec, cache: ArtifactCache, ir: dict, context: dict) -> dict:
    """NNCF-quantized IR; with ``quantization.max_drop`` NNCF's accuracy control keeps the
    layers that cost most AUC in fp32 until the calibration-split macro-AUC drop is
    within it."""
    import nncf
    import openvino as ov

    from medray.data.calibration import calibration_source

    calib = calibration_source(context, spec.name)
    quant = context.get("quantization")
    max_drop = getattr(quant, "max_drop", None)
    cfg = spec.backend
    parts = int8_parts(spec, ir["key"], calib.ids(), "nncf-ptq", preset=cfg.nncf_preset,
                       fast_bias_correction=cfg.fast_bias_correction, max_drop=max_drop,
                       accuracy_metric="auc_macro" if max_drop is not None else None, device=spec.device,
                       openvino=ov.__version__, nncf=nncf.__version__)

    def build(path: Path) -> None:
        info = quantize_nncf(spec, ir["path"], path, calib, context.get("table"), max_drop)
        (path.parent / QUANT_SIDECAR).write_text(json.dumps(info, indent=2, default=str))

    art = cache.get_or_build("ov-int8", parts, "model.xml", build).to_dict()
    sidecar = Path(art["path"]).parent / QUANT_SIDECAR
    info = json.loads(sidecar.read_text()) if sidecar.is_file() else {}
    return {
        **art,
        "reference": {"path": ir["path"], "bytes": ir["bytes"], "precision": "fp32"},
        "calibration": parts["calibration"],
        "quantization": info,
    }


def quantize_nncf(spec: RunSpec, ir_path: str, out_path: Path, source, table, max_drop: float | None) -> dict:
    """Run NNCF on the fp32 IR and save the int8 IR; returns what was done (for the report)."""
    import nncf
    import openvino as ov

    from medray.metrics.scores import model_probabilities

    cfg = spec.backend
    m = spec.model
    calib = source.load()
    # One sample per item: NNCF's statistics (and fast bias correction) assume batch 1.
    items = [calib.inputs[i : i + 1] for i in range(len(calib))]
    preset = getattr(nncf.QuantizationPreset, cfg.nncf_preset.upper())
    model = ov.Core().read_model(ir_path)
    info: dict = {"tool": "nncf", "nncf": nncf.__version__, "preset": cfg.nncf_preset, "samples": len(items)}
    if max_drop is None:
        log.info("NNCF post-training quantization on %d calibration samples", len(items))
        qmodel = nncf.quantize(
            model,
            nncf.Dataset(items),
            preset=preset,
            subset_size=len(items),
            fast_bias_correction=cfg.fast_bias_correction,
        )
    else:
        from medray.metrics.classification import classification_metrics

        if table is None:
            raise BackendError(f"{spec.name}: quantization.max_drop needs the dataset's labels (context['table'])")
        calib_df = source.samples
        by_id = calib_df.set_index(calib_df["sample_id"].astype(str))
        labels = table.targets(by_id.loc[calib.sample_ids].reset_index(drop=True))
        metrics: list[float] = []

        def validate(compiled, data) -> float:
            logits = np.concatenate([compiled(x)[0] for x, _ in data])
            y = np.asarray([t for _, t in data])
            probs = model_probabilities(logits, m)  # matched to the classes by name, as the actors do
            auc = classification_metrics(y, probs, table.task, table.classes)["auc_macro"]
            if auc is None:
                raise BackendError(
                    f"{spec.name}: quantization.max_drop: the calibration samples have a single outcome per "
                    "class, macro-AUC is undefined; use more calibration.num_samples"
                )
            metrics.append(float(auc))
            return float(auc)

        pairs = list(zip(items, labels))
        dataset = nncf.Dataset(pairs, lambda item: item[0])
        log.info("NNCF accuracy-controlled quantization: max macro-AUC drop %.4f on %d samples", max_drop, len(pairs))
        qmodel = nncf.quantize_with_accuracy_control(
            model,
            dataset,
            dataset,
            validate,
            max_drop=max_drop,
            drop_type=nncf.DropType.ABSOLUTE,
            preset=preset,
            subset_size=len(items),
            fast_bias_correction=cfg.fast_bias_correction,
        )
        core = ov.Core()
        final = validate(core.compile_model(qmodel, "CPU", {"INFERENCE_PRECISION_HINT": "f32"}), pairs)
        info.update(
            {
                "max_drop": max_drop,
                "metric": "auc_macro",
                "validation": "calibration split",
                "fp32_metric": metrics[0],
                "int8_metric": final,
                "drop": metrics[0] - final,
                "validations_run": len(metrics),
            }
        )
    ov.save_model(qmodel, str(out_path), compress_to_fp16=False)
    compiled = ov.Core().compile_model(qmodel, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    summary = runtime_precision(compiled)
    info["kept_in_float"] = summary["float_compute_layers"]
    info["compute_ops"] = summary["compute_ops"]
    log.info(
        "NNCF: %d compute layers int8, %d kept in float%s",
        summary["compute_ops"].get("int8", 0),
        len(info["kept_in_float"]),
        f" ({', '.join(info['kept_in_float'][:5])}{'...' if len(info['kept_in_float']) > 5 else ''})"
        if info["kept_in_float"]
        else "",
    )
    return info


# --------------------------------------------------------------------------- runtime


def runtime_precision(compiled) -> dict:
    """What a compiled model executes, from its runtime model's per-layer rt_info."""
    per_type: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    compute: collections.Counter = collections.Counter()
    float_layers = []
    for op in compiled.get_runtime_model().get_ordered_ops():
        rt = op.get_rt_info()
        kind = rt["layerType"].astype(str)
        prec = _PREC.get(rt["runtimePrecision"].astype(str), rt["runtimePrecision"].astype(str))
        if kind == "Const":
            continue
        per_type[kind][prec] += 1
        if kind in _COMPUTE:
            compute[prec] += 1
            if prec in ("fp32", "bf16", "fp16"):
                float_layers.append(op.get_friendly_name())
    return {
        "executed": compute.most_common(1)[0][0] if compute else "unknown",
        "compute_ops": dict(compute),
        "per_op_type": {k: dict(v) for k, v in sorted(per_type.items())},
        "float_compute_layers": float_layers,
    }


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
        if spec.precision == "int8":
            return int8_artifact(spec, cache, ir, context)
        return ir

    def _load(self) -> None:
        import openvino as ov

        spec = self.spec
        cfg = spec.backend
        core = ov.Core()
        caps = core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        need = CAPABILITY.get(spec.precision)
        if need and need not in caps:
            raise BackendError(
                f"{spec.name}: this CPU ({core.get_property('CPU', 'FULL_DEVICE_NAME')}) has no {need} support "
                f"(OPTIMIZATION_CAPABILITIES={caps}); use precision=fp32 or int8, or a CPU with {need}"
            )
        config = {
            "INFERENCE_PRECISION_HINT": HINTS[spec.precision],
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
        if spec.precision == "int8":
            info["kept_in_float"] = summary["float_compute_layers"]
        # No silent fallback: the compute layers must run what was asked for (for int8:
        # most of them; NNCF may keep some in f32 on purpose, listed in kept_in_float).
        compute = summary["compute_ops"]
        wrong = {p: n for p, n in compute.items() if p != spec.precision}
        if summary["executed"] != spec.precision or (spec.precision != "int8" and wrong):
            raise BackendError(
                f"{spec.name}: asked for {spec.precision} (hint {HINTS[spec.precision]}) but the compiled model "
                f"executes its compute layers as {compute}; refusing to report it as {spec.precision}"
            )
        return info
