"""The loaders of :data:`medray.models.sources.SOURCES`: a model spec → its PyTorch module
in eval mode, the same on the driver and in the actors."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from medray.errors import ConfigError
from medray.models.sources import SOURCES, call

if TYPE_CHECKING:
    from medray.specs import ModelSpec


def import_target(target: str):
    """``"pkg.module:callable"`` or ``"/path/file.py:callable"`` → the callable."""
    mod_name, sep, attr = target.rpartition(":")
    if not sep or not mod_name or not attr:
        raise ConfigError(f"model.target={target!r}: use <module>:<callable> or <file.py>:<callable>, e.g. my_models:build")
    try:
        if mod_name.endswith(".py"):
            path = Path(mod_name).expanduser().resolve()
            if not path.is_file():
                raise ConfigError(f"model.target={target!r}: file {path} not found")
            name = f"medray_user_model_{abs(hash(str(path)))}"
            module = sys.modules.get(name)
            if module is None:
                spec = importlib.util.spec_from_file_location(name, path)
                module = importlib.util.module_from_spec(spec)
                sys.modules[name] = module
                spec.loader.exec_module(module)
        else:
            module = importlib.import_module(mod_name)
    except ConfigError:
        raise
    except Exception as e:  # ImportError, a syntax error in the user's file...
        raise ConfigError(f"model.target={target!r}: cannot import {mod_name} ({type(e).__name__}: {e}); "
                          "check the module is importable (pip install it, or give the .py file's path)") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ConfigError(f"model.target={target!r}: {mod_name} has no callable {attr!r}")
    return fn


def load_torch_model(m: ModelSpec):
    """The PyTorch module of ``m`` in eval mode (not for a source without one, e.g. onnx)."""
    row = SOURCES.get(m.source)
    if row is None or row.load is None:
        raise ConfigError(f"model.source={m.source}: has no PyTorch model; it runs on the backends that take its file")
    return call(row.load, m)


def load_python(m: ModelSpec):
    """``model=python``: the user's callable, then ``model.checkpoint`` loaded into it."""
    import torch

    from medray.models.factory import load_weights

    model = import_target(m.target)(**dict(m.kwargs or {}))
    if not isinstance(model, torch.nn.Module):
        raise ConfigError(f"model.target={m.target!r} returned {type(model).__name__}, not a torch.nn.Module")
    if m.checkpoint:
        load_weights(model, m.checkpoint, m.trust_checkpoint, "model.checkpoint", f"model.target={m.target}")
    return model.eval()


def load_torchscript(m: ModelSpec):
    """``model=torchscript``: a ``torch.jit`` file."""
    import torch

    try:
        return torch.jit.load(m.path, map_location="cpu").eval()
    except Exception as e:
        raise ConfigError(f"model.path={m.path}: not a TorchScript file ({type(e).__name__}: {str(e)[:200]})") from None


def load_exported(m: ModelSpec):
    """``model=exported``: a ``torch.export`` program (``.pt2``)."""
    import torch

    try:
        # A .pt2 holds no code to run at load, only the graph and its weights (in
        # inference form already: the module refuses .eval()).
        program = torch.export.load(m.path)
        module = program.module()
        module._medray_program = program  # the ONNX export converts the program itself
        return module
    except Exception as e:
        raise ConfigError(f"model.path={m.path}: not a torch.export program ({type(e).__name__}: {str(e)[:200]})") from None
