"""A bundle's network with its weights, as its runner gets it: ``evaluator#network`` built by
the bundle's ConfigParser, then ``models/model.pt`` loaded the way its ``CheckpointLoader``
loads it (the ``load_dict`` key naming the network, ``strict``, ``strict_shape``; a plain
state dict when that key is not in the file, a ``module.`` prefix dropped) — or
``models/model.ts`` (``model.weights=ts``), the TorchScript export the zoo ships."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from medray.errors import ConfigError

if TYPE_CHECKING:
    from medray.models.bundle.parse import Bundle
    from medray.specs import ModelSpec

WEIGHTS = {"pt": "models/model.pt", "ts": "models/model.ts"}


def checkpoint_loader(b: Bundle, network_id: str) -> dict:
    """The CheckpointLoader that loads the network: ``load_path``, ``key`` (its load_dict key
    for the network), ``strict``, ``strict_shape``; the bundle's default file without one."""
    from medray.models.bundle.parse import target_name, walk

    for id_, d in walk(b.raw):
        if target_name(d) != "CheckpointLoader" or d.get("_disabled_"):
            continue
        hits = [k for k, v in (d.get("load_dict") or {}).items()
                if isinstance(v, str) and v.strip().lstrip("$@").strip() in (network_id, "network")]
        if hits:
            try:
                path = b.parser.get_parsed_content(f"{id_}#load_path")
            except Exception as e:
                raise ConfigError(f"model.path={b.root}: {id_}#load_path cannot be resolved ({e})") from None
            return {"load_path": str(Path(path).resolve()), "key": hits[0], "n_keys": len(d["load_dict"]),
                    "strict": bool(d.get("strict", True)), "strict_shape": bool(d.get("strict_shape", True))}
    return {"load_path": str(b.root / WEIGHTS["pt"]), "key": "model", "n_keys": 1, "strict": True, "strict_shape": True}


def state_dict_of(path: str, loader: dict) -> dict:
    """The network's state dict in the file, by CheckpointLoader's rule."""
    import torch

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ConfigError(f"model.checkpoint={path}: cannot be read as tensors ({type(e).__name__}: {str(e)[:200]}); "
                          "a bundle's model.pt holds state dicts") from None
    key = loader["key"]
    if isinstance(ckpt, dict) and isinstance(ckpt.get(key), dict):
        sd = ckpt[key]
    elif isinstance(ckpt, dict) and loader["n_keys"] == 1 and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        sd = ckpt  # CheckpointLoader treats a one-entry load_dict's missing key as a plain state dict
    else:
        keys = list(ckpt)[:8] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ConfigError(f"model.checkpoint={path}: neither the CheckpointLoader's {key!r} entry nor a state dict ({keys})")
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def build_network(b: Bundle, network_id: str, checkpoint: str, loader: dict):
    """The bundle's network (a fresh instance) with the checkpoint's weights, in eval mode."""
    net = b.parser.get_parsed_content(network_id, lazy=False)
    sd = state_dict_of(checkpoint, loader)
    if not loader["strict_shape"]:
        from monai.networks.utils import copy_model_state

        sd = copy_model_state(net, sd, inplace=False)[0]
    try:
        net.load_state_dict(sd, strict=loader["strict"])
    except RuntimeError as e:
        raise ConfigError(f"model.checkpoint={checkpoint}: does not fit the bundle's {network_id} "
                          f"({str(e).splitlines()[0][:300]})") from None
    return net.eval()


def load_torchscript(path: str):
    import torch

    try:
        return torch.jit.load(path, map_location="cpu").eval()
    except Exception as e:
        raise ConfigError(f"model.checkpoint={path}: not a TorchScript file ({type(e).__name__}: {str(e)[:200]})") from None


def load_network(m: ModelSpec):
    """``SOURCES["bundle"].load``: the module the torch backend runs and the ONNX export
    traces (the same on the driver and in the actors; ``m.checkpoint`` is the weights file,
    materialised where the actor runs)."""
    from medray.models.bundle.parse import open_bundle

    if m.net.get("weights") == "ts":
        return load_torchscript(m.checkpoint)
    b = open_bundle(m.path, m.net.get("configs"))
    return build_network(b, m.net["network_id"], m.checkpoint, m.net["loader"])
