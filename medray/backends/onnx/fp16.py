"""fp16 ONNX graphs converted from the fp32 export (ONNX Runtime's ``float16`` converter),
for ONNX Runtime and TensorRT."""

from __future__ import annotations

import logging
from pathlib import Path

from medray.backends.artifacts import ArtifactCache
from medray.specs import RunSpec

log = logging.getLogger("medray.backends.onnx")


def reference(fp32: dict) -> dict:
    """The fp32 artifact a lower-precision one is compared with (size, in the report)."""
    return {"path": fp32["path"], "bytes": fp32["bytes"], "precision": "fp32"}


def fp16_artifact(spec: RunSpec, cache: ArtifactCache, fp32: dict) -> dict:
    """The fp16 graph converted from the cached fp32 export."""
    import onnx
    import onnxruntime as ort

    parts = {"from": fp32["key"], "convert": "float16", "keep_io_types": True, "onnxruntime": ort.__version__,
             "onnx": onnx.__version__}
    art = cache.get_or_build("onnx-fp16", parts, "model.onnx", lambda path: convert_fp16(fp32["path"], path)).to_dict()
    return {**art, "reference": reference(fp32)}


def convert_fp16(src: str | Path, dst: str | Path) -> None:
    """fp32 ONNX → fp16 weights and activations, with fp32 graph inputs and outputs.

    The fp32 I/O (``keep_io_types``) costs one Cast at each end: the host sends and
    receives float32 either way, so converting outside the graph would cost the same.
    """
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(src))
    model16 = convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=False)
    onnx.save(model16, str(dst))
