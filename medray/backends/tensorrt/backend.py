"""TensorRT: engines built where the GPU is, executed with torch CUDA buffers.

Driver (:meth:`TensorRTBackend.prepare`): the ONNX graph of the requested precision
(fp32 export, fp16 graph or calibrated Q/DQ graph) — no TensorRT import, so a CPU-only
head node can drive a GPU cluster.

Actor (:meth:`_load`): the engine is device-specific, so it is built on the node that
runs it, through an :class:`ArtifactCache` in a node-local directory whose key contains
the GPU model, compute capability and TensorRT version; the cache's file lock makes the
actors of one node build it once.  An engine recorded for another GPU or TensorRT version
is refused (:func:`check_engine_meta`).

Execution: each actor is one stream (``plan_pool`` gives ``streams`` actors per GPU, each
asking ``1/streams`` GPU), so it holds one execution context and one CUDA stream.  Inputs
are staged in pinned host memory and copied asynchronously on that stream; the outputs
are copied back once per batch, and the stream is synchronised before the batch's time
is taken (the base class times ``_infer``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from medray.backends.artifacts import ArtifactCache
from medray.backends.base import Backend, BackendError
from medray.backends.tensorrt.build import (
    ENGINE_FILE,
    batch_profile,
    build_engine,
    check_engine_meta,
    device_identity,
    engine_key_parts,
    fast_precision_warnings,
    prepare_graph,
    summarise_layers,
)
from medray.specs import RunSpec

log = logging.getLogger("medray.backends.tensorrt")

INSTALL_HINT = "install it on every GPU node with: pip install 'medray[trt]'"


def _import_tensorrt():
    try:
        import tensorrt as trt
    except ImportError as e:
        raise BackendError(f"backend=trt: the tensorrt package cannot be imported on this worker ({e}); {INSTALL_HINT}") from None
    return trt


def _torch_dtype(trt, torch, dt):
    table = {
        trt.DataType.FLOAT: torch.float32,
        trt.DataType.HALF: torch.float16,
        trt.DataType.INT8: torch.int8,
        trt.DataType.INT32: torch.int32,
        trt.DataType.BOOL: torch.bool,
    }
    if hasattr(trt.DataType, "BF16"):
        table[trt.DataType.BF16] = torch.bfloat16
    if dt not in table:
        raise BackendError(f"backend=trt: engine I/O tensor type {dt} is not supported by medray")
    return table[dt]


class TensorRTBackend(Backend):
    name = "trt"

    @classmethod
    def prepare(cls, spec: RunSpec, cache: ArtifactCache, context: dict) -> dict:
        return prepare_graph(spec, cache, context)

    # -- actor --------------------------------------------------------------------------
    def _load(self) -> None:
        import torch

        spec = self.spec
        if not torch.cuda.is_available():
            raise BackendError(f"{spec.name}: backend=trt needs a CUDA GPU but this worker sees none")
        trt = _import_tensorrt()
        # Ray sets CUDA_VISIBLE_DEVICES to this actor's GPU: it is device 0 here.
        torch.cuda.set_device(0)
        self._torch, self._trt = torch, trt
        self.device = device_identity()
        self.warnings = fast_precision_warnings(spec.precision, self.device["compute_capability"])
        self.engine_artifact = self._engine_artifact()

        logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(logger)
        engine = self._runtime.deserialize_cuda_engine(Path(self.engine_artifact["path"]).read_bytes())
        if engine is None:
            raise BackendError(f"{spec.name}: TensorRT could not deserialise {self.engine_artifact['path']}")
        self._engine = engine
        self._context = engine.create_execution_context()
        self._stream = torch.cuda.Stream()
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or len(outputs) != 1:
            raise BackendError(f"{spec.name}: expected one input and one output tensor, engine has {inputs} / {outputs}")
        self._in, self._out = inputs[0], outputs[0]
        self._max_batch = batch_profile(spec).max
        shape = spec.model.input_shape
        in_dtype = _torch_dtype(trt, torch, engine.get_tensor_dtype(self._in))
        out_dtype = _torch_dtype(trt, torch, engine.get_tensor_dtype(self._out))
        self._context.set_input_shape(self._in, (self._max_batch, *shape))
        out_shape = tuple(self._context.get_tensor_shape(self._out))
        # Device buffers for the largest batch of the profile; smaller batches use a
        # leading slice (contiguous: the batch axis is the outermost).
        self._d_in = torch.empty((self._max_batch, *shape), dtype=in_dtype, device="cuda")
        self._d_out = torch.empty(out_shape, dtype=out_dtype, device="cuda")
        # Pinned host staging: the H2D/D2H copies are asynchronous on the actor's stream.
        self._h_in = torch.empty(self._d_in.shape, dtype=in_dtype, pin_memory=True)
        self._h_out = torch.empty(out_shape, dtype=out_dtype, pin_memory=True)
        self._context.set_tensor_address(self._in, self._d_in.data_ptr())
        self._context.set_tensor_address(self._out, self._d_out.data_ptr())

    def _engine_artifact(self) -> dict:
        """Build (once per node, under the cache's file lock) or reuse the engine."""
        spec = self.spec
        graph = spec.artifact
        if not graph or "engine_cache_dir" not in graph:
            raise BackendError(f"{spec.name}: no ONNX graph prepared for the engine (TensorRTBackend.prepare was not run)")
        cache = ArtifactCache(graph["engine_cache_dir"])
        parts = engine_key_parts(spec, graph, self.device)
        art = cache.get_or_build("trt-engine", parts, ENGINE_FILE, lambda path: build_engine(graph["path"], path, spec))
        meta = json.loads((Path(art.path).parent / "meta.json").read_text())
        check_engine_meta(meta, self.device, art.path)
        return {**art.to_dict(), "graph": graph["path"], "graph_bytes": graph["bytes"]}

    def _infer(self, x: np.ndarray) -> np.ndarray:
        torch = self._torch
        n = len(x)
        if n > self._max_batch:
            raise BackendError(f"{self.spec.name}: batch of {n} exceeds the engine profile's max_batch={self._max_batch}")
        h_in = self._h_in[:n]
        h_in.numpy()[...] = x  # casts to the engine's input type if it is not float32
        with torch.cuda.stream(self._stream):
            self._d_in[:n].copy_(h_in, non_blocking=True)
            self._context.set_input_shape(self._in, (n, *self.spec.model.input_shape))
            if not self._context.execute_async_v3(self._stream.cuda_stream):
                raise BackendError(f"{self.spec.name}: TensorRT execute_async_v3 failed")
            self._h_out[:n].copy_(self._d_out[:n], non_blocking=True)
        self._stream.synchronize()
        return self._h_out[:n].float().numpy().copy()

    def _close(self) -> None:
        self._context = None
        self._engine = None
        self._runtime = None
        self._d_in = self._d_out = self._h_in = self._h_out = None

    def _effective_precision(self) -> dict:
        trt = self._trt
        inspector = self._engine.create_engine_inspector()
        inspector.execution_context = self._context
        info = summarise_layers(inspector.get_engine_information(trt.LayerInformationFormat.JSON), self.spec.precision)
        warnings = list(self.warnings)
        if not info["detailed"]:
            warnings.append("the engine has no detailed layer information (built without ProfilingVerbosity.DETAILED)")
        info.update(
            gpu=self.device,
            artifact={
                "path": self.engine_artifact["path"],
                "bytes": self.engine_artifact["bytes"],
                "build_s": self.engine_artifact["build_s"],
                "cache_hit": self.engine_artifact["cache_hit"],
                "graph": self.engine_artifact["graph"],
                "graph_bytes": self.engine_artifact["graph_bytes"],
            },
        )
        if warnings:
            info["warning"] = "; ".join(warnings)
        return info
