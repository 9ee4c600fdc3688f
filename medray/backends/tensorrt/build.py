"""TensorRT artifacts: the ONNX graph an engine is built from (on the driver, no TensorRT
needed) and the engine itself (on the GPU that runs it).

Precision lives in the graph.  TensorRT 11 removed the weak-typing builder flags
(``BuilderFlag.FP16`` / ``INT8``) and implicit INT8 calibrators; TensorRT 10 still has
them but deprecates them.  medray builds *strongly typed* networks on both:

- fp32 / tf32: the cached fp32 export; ``BuilderFlag.TF32`` cleared (fp32) or set (tf32);
- fp16: the fp16-converted graph ONNX Runtime also uses (fp32 inputs/outputs kept);
- int8: an explicit Q/DQ graph from ONNX Runtime's static quantizer, calibrated on the
  calibration split, with symmetric (zero-point 0) int8 activations and weights — the
  only Q/DQ form TensorRT accepts.  The calibration ranges (``calibration_cache.json``)
  and the calibration sample ids (``calibration.json``) are stored next to the graph.

Engines are specific to the GPU model (compute capability) and the TensorRT version: the
cache key contains both, and the recorded ones are checked again before an engine file
is deserialised (:func:`check_engine_meta`).
"""

from __future__ import annotations

import collections
import json
import logging
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medray.backends.artifacts import ArtifactCache, int8_parts
from medray.backends.base import BackendError
from medray.backends.onnx.qdq import QdqSettings
from medray.backends.onnx.repair import repair, wanted
from medray.backends.tensorrt.qdq_graph import CALIB_CACHE_FILE, CALIB_IDS_FILE, qdq_stats
from medray.specs import RunSpec

log = logging.getLogger("medray.backends.tensorrt")

ENGINE_FILE = "model.engine"
# Bumped when the way engines are built changes (invalidates cached engines).
BUILDER_REVISION = 1
# Compute capability from which each precision has fast hardware paths (tensor cores):
# fp16 Volta 7.0, int8 Turing 7.5, tf32 Ampere 8.0.
FAST_PRECISION_MIN_CC = {"fp16": (7, 0), "int8": (7, 5), "tf32": (8, 0)}


class EngineMismatchError(BackendError):
    """A cached engine was built for another GPU model or TensorRT version."""


# --------------------------------------------------------------------------- profile / keys


@dataclass(frozen=True)
class BatchProfile:
    """The optimisation profile over the batch axis (min <= opt <= max)."""

    min: int
    opt: int
    max: int

    def shapes(self, sample_shape: tuple[int, ...]) -> tuple[tuple[int, ...], ...]:
        return tuple((b, *sample_shape) for b in (self.min, self.opt, self.max))


def batch_profile(spec: RunSpec) -> BatchProfile:
    return BatchProfile(*spec.backend.profile(spec.batch_size))


def engine_key_parts(spec: RunSpec, graph: dict, device: dict) -> dict[str, Any]:
    """Everything an engine depends on: the graph's content key, precision, profile,
    builder settings — and the GPU model, compute capability and TensorRT version."""
    cfg = spec.backend
    p = batch_profile(spec)
    return {
        "graph_key": graph["key"],
        "precision": spec.precision,
        "input_shape": list(spec.model.input_shape),
        "profile": [p.min, p.opt, p.max],
        "workspace_gb": cfg.workspace_gb,
        "builder_optimization_level": cfg.builder_optimization_level,
        "strongly_typed": True,
        "builder_revision": BUILDER_REVISION,
        "gpu_name": device["gpu_name"],
        "compute_capability": device["compute_capability"],
        "tensorrt": device["tensorrt"],
    }


DEVICE_KEYS = ("gpu_name", "compute_capability", "tensorrt")


def check_engine_meta(meta: dict, device: dict, path: str = "") -> None:
    """Refuse an engine whose ``meta.json`` records another GPU / capability / TensorRT.

    TensorRT would either reject such a plan with a terse error or, across GPUs of one
    capability, run tactics tuned for another model; neither is acceptable silently.
    """
    parts = meta.get("parts", meta)
    diffs = [f"{k}: built for {parts.get(k)!r}, this worker has {device.get(k)!r}" for k in DEVICE_KEYS if parts.get(k) != device.get(k)]
    if diffs:
        raise EngineMismatchError(
            f"TensorRT engine {path or '?'} does not match this GPU/TensorRT ({'; '.join(diffs)}); "
            "refusing to load it — it is rebuilt under its own cache key on this node"
        )


def fast_precision_warnings(precision: str, compute_capability: str) -> list[str]:
    """Warnings when the GPU has no fast path for ``precision`` (it runs, but slowly)."""
    need = FAST_PRECISION_MIN_CC.get(precision)
    if need is None:
        return []
    cc = tuple(int(x) for x in compute_capability.split("."))
    if cc >= need:
        return []
    return [
        f"this GPU (compute capability {compute_capability}) has no fast {precision} path "
        f"(needs >= {need[0]}.{need[1]}); expect little or no speed-up over fp32"
    ]


# --------------------------------------------------------------------------- graphs (driver)


def prepare_graph(spec: RunSpec, cache: ArtifactCache, context: dict) -> dict:
    """The ONNX graph the engine of ``spec.precision`` is built from (cached by content).

    Runs on the driver and never imports TensorRT: engines are built by the actors.
    """
    from medray.backends.onnx.graph import onnx_artifact

    fp32 = onnx_artifact(spec, cache, opset=spec.backend.opset)
    if spec.precision == "fp16":
        from medray.backends.onnx.fp16 import fp16_artifact

        graph = fp16_artifact(spec, cache, fp32)
    elif spec.precision == "int8" and wanted(spec, context):
        from medray.backends.tensorrt.repair import TensorRTRepair

        target = TensorRTRepair(prepare_graph, spec, cache, context)
        graph = repair(spec, cache, fp32, context, target, spec.backend.SUPPORTED.get(spec.device, ()))
    elif spec.precision == "int8":
        graph = qdq_artifact(spec, cache, fp32, context)
    else:
        graph = fp32
    precision = graph.get("executes", spec.precision)  # an INT8 repair's fallback: that precision's graph
    return {
        **graph,
        "graph_precision": precision if precision != "tf32" else "fp32",
        "engine_cache_dir": spec.backend.engine_cache_dir or str(cache.root.parent),
    }


def qdq_artifact(spec: RunSpec, cache: ArtifactCache, fp32: dict, context: dict) -> dict:
    """Explicit-quantization graph for TensorRT, calibrated on ``context["calibration"]``."""
    import onnx
    import onnxruntime as ort

    from medray.data.calibration import calibration_source

    source = calibration_source(context, spec.name)
    cfg = spec.backend
    ids = source.ids()
    parts = int8_parts(spec, fp32["key"], ids, "static-qdq-s8s8-symmetric", target="tensorrt",
                       method=cfg.quant_method, per_channel=cfg.quant_per_channel, onnxruntime=ort.__version__,
                       onnx=onnx.__version__)

    def build(path: Path) -> None:
        calib = source.load()
        stats = quantize_qdq(fp32["path"], path, calib, cfg.quant_method, cfg.quant_per_channel, path.parent / CALIB_CACHE_FILE)
        (path.parent / CALIB_IDS_FILE).write_text(
            json.dumps({**ids, "sample_ids": calib.sample_ids, "method": cfg.quant_method, **stats}, indent=1)
        )

    art = cache.get_or_build("onnx-int8-trt", parts, "model.onnx", build).to_dict()
    return {**art, "calibration": ids, "reference": {"path": fp32["path"], "bytes": fp32["bytes"], "precision": "fp32"}}


def quantize_qdq(src, dst, calib, method: str = "minmax", per_channel: bool = True, cache_path=None) -> dict:
    """fp32 ONNX → Q/DQ ONNX with symmetric int8 activations and weights (TensorRT's form).

    The ONNX Runtime quantizer and calibration reader of medray's ORT int8 path, with
    TensorRT's differences (:class:`~medray.backends.onnx.qdq.QdqSettings` ``symmetric``).
    ``cache_path`` receives ORT's calibration ranges (reused if it exists).
    """
    from medray.backends.onnx.qdq import preprocess
    from medray.backends.onnx.qdq import quantize_qdq as quantize

    with tempfile.TemporaryDirectory(prefix="medray-trtq-") as tmp:
        pre = Path(tmp) / "preprocessed.onnx"
        preprocess(src, pre)
        quantize(pre, dst, calib, QdqSettings("int8", method, per_channel, symmetric=True), cache_path=cache_path)
    return qdq_stats(dst)


# --------------------------------------------------------------------------- engine (actor)


def device_identity() -> dict:
    """GPU model, compute capability and TensorRT version of this worker (imports both)."""
    import tensorrt as trt
    import torch

    idx = torch.cuda.current_device()
    major, minor = torch.cuda.get_device_capability(idx)
    return {
        "gpu_name": torch.cuda.get_device_name(idx),
        "compute_capability": f"{major}.{minor}",
        "tensorrt": trt.__version__,
    }


def build_engine(onnx_path: str, engine_path: Path, spec: RunSpec) -> dict:
    """Parse ``onnx_path`` into a strongly typed network and serialise its engine.

    Returns what was set (flags, profile) for the build record.
    """
    import tensorrt as trt

    cfg = spec.backend
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    # STRONGLY_TYPED: required for precision-in-graph on 10.x, the only mode on 11.x
    # (where the flag is accepted and ignored).  EXPLICIT_BATCH is gone since 10.0.
    flags = 0
    strongly = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if strongly is not None:
        flags |= 1 << int(strongly)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BackendError(f"{spec.name}: TensorRT cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(cfg.workspace_gb * (1 << 30)))
    config.builder_optimization_level = cfg.builder_optimization_level
    # DETAILED: the engine inspector then reports per-layer types and tactics, which is
    # how effective_precision is read back.
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    # TF32 is on by default in TensorRT: "fp32" would silently be TF32 on Ampere+.
    tf32 = getattr(trt.BuilderFlag, "TF32", None)
    if tf32 is not None:
        if spec.precision == "tf32":
            config.set_flag(tf32)
        else:
            config.clear_flag(tf32)
    elif spec.precision == "tf32":
        raise BackendError(f"{spec.name}: this TensorRT ({trt.__version__}) has no TF32 builder flag")
    prof = batch_profile(spec)
    profile = builder.create_optimization_profile()
    inp = network.get_input(0)
    lo, opt, hi = prof.shapes(spec.model.input_shape)
    profile.set_shape(inp.name, lo, opt, hi)
    config.add_optimization_profile(profile)
    log.info("%s: building TensorRT %s engine (profile %s, workspace %.1f GiB)", spec.name, trt.__version__, prof, cfg.workspace_gb)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise BackendError(f"{spec.name}: TensorRT failed to build the engine from {onnx_path} (see the TensorRT log above)")
    engine_path.write_bytes(bytes(plan))
    return {"tf32": spec.precision == "tf32", "profile": [prof.min, prof.opt, prof.max], "strongly_typed": strongly is not None}


# --------------------------------------------------------------------------- inspector


_DTYPE_PATTERNS = (
    ("int8", ("int8",)),
    ("fp8", ("fp8", "e4m3")),
    ("bf16", ("bf16", "bfloat16")),
    ("fp16", ("fp16", "half")),
    ("fp32", ("fp32", "float")),
    ("int32", ("int32",)),
    ("int64", ("int64",)),
    ("bool", ("bool",)),
)
_COMPUTE_RE = re.compile(r"conv|gemm|matrixmultiply|matmul|fullyconnected|deconv", re.I)


def _dtype_of(tensor: dict) -> str:
    """A tensor's type from inspector JSON: ``DataType`` (TensorRT 11) or the combined
    ``Format/Datatype`` string (TensorRT 10), e.g. "Channel major FP16 format ..."."""
    text = str(tensor.get("DataType") or tensor.get("Format/Datatype") or tensor.get("Format") or "").lower()
    for name, keys in _DTYPE_PATTERNS:
        if any(k in text for k in keys):
            return name
    return "unknown"


def summarise_layers(info: str | dict, requested: str) -> dict:
    """Per-layer precision summary of ``get_engine_information(JSON)`` output.

    A layer's precision is the type of its first input (what its arithmetic consumes;
    int8 convolutions may output float).  ``executed`` is the most common precision of
    compute layers (convolution / GEMM), with fp32 counted as tf32 when TF32 tactics ran.
    """
    if isinstance(info, str):
        info = json.loads(info)
    layers = [layer for layer in info.get("Layers", []) if isinstance(layer, dict)]
    all_prec: collections.Counter = collections.Counter()
    compute: collections.Counter = collections.Counter()
    tf32_tactics = 0
    reformats = 0
    for layer in layers:
        tensors = layer.get("Inputs") or layer.get("Outputs") or []
        prec = _dtype_of(tensors[0]) if tensors else "unknown"
        all_prec[prec] += 1
        kind = f"{layer.get('LayerType', '')} {layer.get('ParameterType', '')}"
        if "reformat" in kind.lower() or "cast" in kind.lower():
            reformats += 1
        if _COMPUTE_RE.search(kind):
            tactic = str(layer.get("TacticName", "")).lower()
            if prec == "fp32" and "tf32" in tactic:
                tf32_tactics += 1
                prec = "tf32"
            compute[prec] += 1
    pool = compute or all_prec
    executed = pool.most_common(1)[0][0] if pool else "unknown"
    return {
        "requested": requested,
        "executed": executed,
        "source": "tensorrt engine inspector",
        "layers": len(layers),
        "layer_precisions": dict(all_prec),
        "compute_layer_precisions": dict(compute),
        "tf32_tactics": tf32_tactics,
        "reformat_layers": reformats,
        "detailed": bool(layers),
    }
