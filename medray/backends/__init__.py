"""Backend registry: the registry key is the backend's name everywhere.

Entries are import paths so that heavy libraries (tensorrt, openvino, nncf) are imported
only when their backend is used.
"""

from __future__ import annotations

import importlib

from medray.backends.base import Backend, BackendError

REGISTRY: dict[str, str] = {
    "torch": "medray.backends.torch.backend:TorchBackend",
    "onnxruntime": "medray.backends.onnxruntime.backend:OnnxRuntimeBackend",
    "openvino": "medray.backends.openvino.backend:OpenVINOBackend",
    "trt": "medray.backends.tensorrt.backend:TensorRTBackend",
}


def get_backend(name: str) -> type[Backend]:
    """The Backend class registered as ``name``."""
    try:
        target = REGISTRY[name]
    except KeyError:
        raise BackendError(f"unknown backend {name!r}; available: {', '.join(sorted(REGISTRY))}") from None
    module, cls = target.split(":")
    return getattr(importlib.import_module(module), cls)


__all__ = ["Backend", "BackendError", "REGISTRY", "get_backend"]
