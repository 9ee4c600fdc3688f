"""The backend registry: the one list of backend names.

A backend's name is the same word everywhere: the key here, ``conf/backend/<name>.yaml``,
the CLI value (``backend=trt``) and the README table (a test ties them together).  Each
entry names its options class (``<package>/config.py``, plain dataclasses) and its
:class:`~medray.backends.base.Backend` class (``<package>/backend.py``) as import paths,
so that the inference libraries (tensorrt, openvino, nncf...) are imported only when their
backend runs, and ``import medray.config`` imports none of them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, NamedTuple

from medray.backends.base import Backend, BackendError
from medray.errors import registry_row

if TYPE_CHECKING:
    from medray.backends.config import BackendConfig


class Registered(NamedTuple):
    """Import paths (``module:Class``) of a backend's options and implementation."""

    config: str
    backend: str


REGISTRY: dict[str, Registered] = {
    "torch": Registered("medray.backends.torch.config:TorchConfig", "medray.backends.torch.backend:TorchBackend"),
    "onnxruntime": Registered(
        "medray.backends.onnxruntime.config:OnnxRuntimeConfig", "medray.backends.onnxruntime.backend:OnnxRuntimeBackend"
    ),
    "openvino": Registered(
        "medray.backends.openvino.config:OpenVINOConfig", "medray.backends.openvino.backend:OpenVINOBackend"
    ),
    "trt": Registered("medray.backends.tensorrt.config:TensorRTConfig", "medray.backends.tensorrt.backend:TensorRTBackend"),
}


def _load(target: str):
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)


def _entry(name: str) -> Registered:
    return registry_row(REGISTRY, name, "backend", "available backends:")


def get_backend(name: str) -> type[Backend]:
    """The Backend class registered as ``name`` (imports its library)."""
    return _load(_entry(name).backend)


def reference(torch_model: bool = True) -> str:
    """The reference backend: the first registered one that runs the model at fp32 on the
    CPU — a PyTorch model on the backend that runs the module itself, a model file without
    one on the first backend that takes the file.  Baselines and the doctor compare with it."""
    for name in REGISTRY:
        cls = config_class(name)
        if cls.NEEDS_TORCH_MODEL == torch_model and "fp32" in cls.SUPPORTED.get("cpu", ()):
            return name
    raise BackendError(f"no registered backend runs {'a PyTorch model' if torch_model else 'a model file'} at fp32 on the CPU")


def library_modules() -> list[str]:
    """Every library a registered backend imports (for version records), in registry order."""
    out: dict[str, None] = {}
    for name in REGISTRY:
        cls = config_class(name)
        out.update(dict.fromkeys(cls.LIBRARIES))
        for libs in cls.PRECISION_LIBRARIES.values():
            out.update(dict.fromkeys(libs))
    return list(out)


def config_class(name: str) -> type[BackendConfig]:
    """The options dataclass of backend ``name`` (imports no inference library)."""
    return _load(_entry(name).config)


__all__ = ["REGISTRY", "Backend", "BackendError", "Registered", "config_class", "get_backend", "library_modules", "reference"]
