"""Where a user's model comes from (``model.source``), loaded the same way on the driver
(checks, ONNX export) and in the actors.

* ``timm`` — ``model.arch`` (a timm name, or ``monai_unet``) + ``model.checkpoint`` (a
  state dict); the demo models are this.
* ``python`` — ``model.target=<module>:<callable>`` or ``<file.py>:<callable>`` called with
  ``model.kwargs``, returning an ``nn.Module``; ``model.checkpoint`` loaded into it (a
  custom head on a timm backbone, any architecture).
* ``torchscript`` — ``model.path`` to a ``torch.jit`` file.
* ``exported`` — ``model.path`` to a ``torch.export`` program (``.pt2``).
* ``onnx`` — ``model.path`` to an ONNX file (external data beside it): no PyTorch model;
  the ONNX backends and TensorRT run the file itself.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from medray.errors import ConfigError

if TYPE_CHECKING:
    from medray.specs import ModelSpec

log = logging.getLogger("medray.models")

SOURCES = ("timm", "python", "torchscript", "exported", "onnx")
# Sources whose model is a file (model.path) rather than an architecture + state dict.
FILE_SOURCES = ("torchscript", "exported", "onnx")


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
    """The PyTorch module of ``m`` in eval mode (not for ``source=onnx``)."""
    import torch

    from medray.models.factory import CheckpointError, load_model, read_checkpoint

    if m.source == "timm":
        return load_model(m.arch, m.out_features or m.num_classes, m.in_chans, m.checkpoint, trust=m.trust_checkpoint,
                          net=m.net)
    if m.source == "python":
        model = import_target(m.target)(**dict(m.kwargs or {}))
        if not isinstance(model, torch.nn.Module):
            raise ConfigError(f"model.target={m.target!r} returned {type(model).__name__}, not a torch.nn.Module")
        if m.checkpoint:
            sd, _ = read_checkpoint(m.checkpoint, trust=m.trust_checkpoint)
            missing, unexpected = model.load_state_dict(sd, strict=False)
            if missing or unexpected:
                raise CheckpointError(f"model.checkpoint={m.checkpoint} does not fit model.target={m.target}: missing keys "
                                      f"{missing[:5]}, unexpected keys {unexpected[:5]}")
        return model.eval()
    if m.source == "torchscript":
        try:
            return torch.jit.load(m.path, map_location="cpu").eval()
        except Exception as e:
            raise ConfigError(f"model.path={m.path}: not a TorchScript file ({type(e).__name__}: {str(e)[:200]})") from None
    if m.source == "exported":
        try:
            # A .pt2 holds no code to run at load, only the graph and its weights (in
            # inference form already: the module refuses .eval()).
            program = torch.export.load(m.path)
            module = program.module()
            module._medray_program = program  # the ONNX export converts the program itself
            return module
        except Exception as e:
            raise ConfigError(f"model.path={m.path}: not a torch.export program ({type(e).__name__}: {str(e)[:200]})") from None
    raise ConfigError(f"model.source={m.source}: has no PyTorch model; it runs on backend=onnxruntime / openvino / trt")
