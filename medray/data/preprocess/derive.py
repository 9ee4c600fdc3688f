"""The preprocessing a model states, as medray keys (``preprocess=model``).

* A transformers image processor (``preprocessor_config.json``): the processor class fills
  in what the JSON leaves out (its class defaults), then size, resize mode, resample,
  rescale, mean/std and the centre crop become medray keys.  medray's contract is the
  processor's **PIL backend** (``<Name>ImageProcessorPil``, transformers 4.x's default for
  these processors): medray reproduces it exactly.  transformers 5's default torchvision
  backend resizes uint8 tensors with ``antialias=True`` and lands within one grey level of
  it in 0.2-0.5 % of pixels, on a kernel that depends on the CPU.
* A timm hub config's ``pretrained_cfg`` (the checkpoint's own, not timm's registry default
  for the architecture), through ``timm.data.resolve_data_config``.
* torchxrayvision's pipeline (the ``xrv`` preset) at the weights' input resolution.

Processors with steps medray cannot express (padding, channel flips, other resize rules)
are an error naming them: the user then gives every ``preprocess.*`` key by hand.
"""

from __future__ import annotations

import math
from typing import Any

from medray.errors import ConfigError

PIL_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "area"}  # 5 (hamming): none in medray
CROP_MODES = {"center": "shorter_crop", "squash": "squash", "border": "letterbox"}
# transformers processors whose image path is resize -> centre crop -> rescale -> normalize
# (each compared with the library's own tensor in tests/data/test_derive.py).
HF_STANDARD = ("ViTImageProcessor", "DeiTImageProcessor", "BitImageProcessor", "CLIPImageProcessor",
               "PvtImageProcessor", "SiglipImageProcessor", "MobileNetV1ImageProcessor", "BeitImageProcessor",
               "ConvNextImageProcessor", "PoolFormerImageProcessor", "LevitImageProcessor")


def crop_pct_for(crop: int, scaled: int) -> float:
    """The crop_pct with ``floor(crop / crop_pct) == scaled`` (``crop / scaled`` alone misses
    for e.g. 14 / 25: floor(14 / 0.56) = 24)."""
    pct = crop / scaled
    if math.floor(crop / pct) != scaled:
        pct = math.nextafter(pct, 0.0)
    if math.floor(crop / pct) != scaled or not 0 < pct <= 1:
        raise ConfigError(f"no crop_pct resizes to {scaled} before a centre crop of {crop}")
    return pct


def _pixels(color: str, interpolation: str, mean, std, reference: str) -> dict[str, Any]:
    """The keys that do not depend on the resize rule."""
    return dict(color=color, interpolation=interpolation, mean=[float(m) for m in mean], std=[float(s) for s in std],
                layout="nchw", exact=True, reference=reference)


def _keys(base: dict, size, resize: str, crop_pct: float, crop_offset: str = "round") -> dict[str, Any]:
    return dict(base, size=size, resize=resize, crop_pct=float(crop_pct), crop_offset=crop_offset)


def processor_name(processor: dict) -> str:
    """``image_processor_type`` without the backend suffix (``ViTImageProcessorFast`` -> ``ViTImageProcessor``)."""
    return str(processor.get("image_processor_type") or "").removesuffix("Fast").removesuffix("Pil")


def pil_processor(processor: dict):
    """The processor's PIL-backend object from its config dict (class defaults filled in)."""
    import transformers
    from transformers.models.auto.image_processing_auto import get_image_processor_class_from_name

    name = processor_name(processor)
    cls = get_image_processor_class_from_name(name + "Pil")
    if cls is None:
        raise ConfigError(f"image processor {name}: transformers {transformers.__version__} has no PIL backend for it")
    return cls(**{k: v for k, v in processor.items() if k != "image_processor_type"})


def _normalisation(p, name: str, channels: int) -> tuple[list[float], list[float]]:
    """mean/std in medray's 0-1 units: ``(x * r - m) / s == (x / 255 - m / (255 r)) / (s / (255 r))``."""
    r = float(p.rescale_factor) if p.do_rescale else 1.0
    r = 1 / 255 if abs(255 * r - 1) < 1e-12 else r  # 0.00392156862745098 is 1/255 as JSON writes it
    mean = list(p.image_mean) if p.do_normalize else [0.0] * 3
    std = list(p.image_std) if p.do_normalize else [1.0] * 3
    mean, std = [m / (255 * r) for m in mean], [s / (255 * r) for s in std]
    if channels == 1:  # a 1-channel model: one mean/std (transformers broadcasts per channel)
        if len(set(mean)) > 1 or len(set(std)) > 1:
            raise ConfigError(f"image processor {name}: a 1-channel model with per-channel mean/std {mean}/{std}")
        mean, std = mean[:1], std[:1]
    return mean, std


def _scaled_edge(p, name: str) -> int | None:
    """The shorter edge the processor resizes to before its centre crop (None: squashed to (H, W))."""
    size, crop_pct = p.size, getattr(p, "crop_pct", None)
    if name == "PoolFormerImageProcessor" and crop_pct is not None:
        if not size.shortest_edge:
            raise ConfigError(f"image processor {name}: crop_pct with size={dict(size)} is not mapped; give preprocess.* keys")
        return int(size.shortest_edge / crop_pct)
    if name == "LevitImageProcessor" and size.shortest_edge:
        return int((256 / 224) * size.shortest_edge)
    if size.shortest_edge and not size.longest_edge:
        return size.shortest_edge
    if size.height and size.width:
        return None
    raise ConfigError(f"image processor {name}: size={ {k: v for k, v in size.items() if v} } is not a fixed input size")


def processor_keys(processor: dict, num_channels: int = 3) -> dict[str, Any]:
    """A transformers image processor config (``preprocessor_config.json``) as medray keys,
    for its PIL backend (``reference`` names it)."""
    name = processor_name(processor)
    if name not in HF_STANDARD:
        raise ConfigError(f"image processor {name or '(none)'} is not mapped to medray's preprocessing "
                          f"(mapped: {', '.join(HF_STANDARD)}); give every preprocess.* key by hand")
    p = pil_processor(processor)
    for flag in ("do_pad", "do_flip_channel_order"):
        if getattr(p, flag, False):
            raise ConfigError(f"image processor {name}: {flag}=true is not expressible in medray's preprocessing")
    if not p.do_resize:
        raise ConfigError(f"image processor {name}: do_resize=false (images at their own size) is not a fixed model input")
    interp = PIL_RESAMPLE.get(int(p.resample))
    if interp is None:
        raise ConfigError(f"image processor {name}: resample={int(p.resample)} (hamming) has no medray interpolation")
    mean, std = _normalisation(p, name, num_channels)
    base = _pixels("rgb" if num_channels == 3 else "grey", interp, mean, std, f"transformers {name}Pil (PIL backend)")
    size, crop = p.size, (p.crop_size if getattr(p, "do_center_crop", False) else None)
    crop_pct = getattr(p, "crop_pct", None)
    if name == "ConvNextImageProcessor":
        s = size.shortest_edge
        if s >= 384:  # warped to (s, s), no crop
            return _keys(base, [s, s], "squash", 1.0)
        return _keys(base, s, "shorter_crop", crop_pct, "floor")
    if (name == "PoolFormerImageProcessor" and crop_pct is not None and crop is not None
            and size.shortest_edge == crop.height == crop.width):  # int(size / crop_pct): medray's rule exactly
        return _keys(base, crop.height, "shorter_crop", crop_pct, "floor")
    scaled = _scaled_edge(p, name)
    if scaled is None:  # squashed to (H, W), maybe then centre-cropped
        h, w = size.height, size.width
        if crop is None:
            return _keys(base, [h, w], "squash", 1.0)
        pct = crop_pct_for(crop.height, h)
        if math.floor(crop.width / pct) != w:
            raise ConfigError(f"image processor {name}: squash to {h}x{w} then crop {crop.height}x{crop.width} "
                              "has no single crop_pct")
        return _keys(base, [crop.height, crop.width], "squash", pct, "floor")
    if crop is None or crop.height != crop.width:
        raise ConfigError(f"image processor {name}: a shortest-edge resize to {scaled} needs a square centre crop "
                          f"(medray's shorter_crop); crop_size={crop}")
    return _keys(base, crop.height, "shorter_crop", crop_pct_for(crop.height, scaled), "floor")


def timm_keys(pretrained_cfg: dict) -> dict[str, Any]:
    """timm's ``resolve_data_config(pretrained_cfg=...)`` of a checkpoint as medray keys."""
    from timm.data import resolve_data_config

    dc = resolve_data_config(pretrained_cfg=dict(pretrained_cfg))
    interp = "area" if dc["interpolation"] == "box" else dc["interpolation"]
    if interp not in PIL_RESAMPLE.values():
        raise ConfigError(f"timm interpolation {dc['interpolation']!r} has no medray interpolation; set preprocess.interpolation")
    c, h, w = dc["input_size"]
    base = _pixels("rgb" if c == 3 else "grey", interp, dc["mean"], dc["std"],
                   "timm create_transform(resolve_data_config(pretrained_cfg))")
    return _keys(base, [h, w], CROP_MODES.get(dc.get("crop_mode") or "center", "shorter_crop"), dc["crop_pct"])


def as_overrides(keys: dict[str, Any]) -> str:
    """The keys as the command-line overrides that would set them (what the log prints)."""
    def fmt(v):
        if isinstance(v, list):
            return "[" + ",".join(fmt(x) for x in v) + "]"
        return repr(v) if isinstance(v, float) else str(v)

    return " ".join(f"preprocess.{k}={fmt(v)}" for k, v in keys.items() if k != "reference")


def xrv_keys(resolution: int) -> dict[str, Any]:
    """torchxrayvision's ``normalize`` + ``XRayCenterCrop`` + ``XRayResizer(resolution)``."""
    from medray.data.preprocess.config import PRESETS

    return dict(PRESETS["xrv"], size=int(resolution),
                reference=f"torchxrayvision normalize(img, 255), XRayCenterCrop, XRayResizer({int(resolution)})")
