"""The ``preprocess`` config group: presets and the keys that override them (schemas only)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from medray.errors import fail

# The medray preset (the demo models): one grey mean/std for every channel — a grey image
# repeated to RGB keeps the same statistics per channel.
MEAN = 0.5
STD = 0.25
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

COLORS = ("grey", "rgb")
# xrv: torchxrayvision's own pipeline (XRayCenterCrop + XRayResizer): the centred square
# cropped first, then scikit-image's anti-aliased resize on float pixels (float32 out).
RESIZES = ("squash", "shorter_crop", "letterbox", "xrv")
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos", "area")
LAYOUTS = ("nchw", "nhwc")
# Where a centre crop starts: round((h - ch) / 2) as torchvision's CenterCrop and timm do,
# or floor((h - ch) / 2) as transformers' image processors do (one pixel apart when
# (h - ch) % 4 == 3, e.g. a 1955x1841 radiograph at shortest edge 256 cropped to 224).
CROP_OFFSETS = ("round", "floor")

# Every preset's values; a key given on the command line wins over its preset.
PRESETS: dict[str, dict[str, Any]] = {
    # size None: the model's input_size (model.input_size), as the demo trained.
    "medray": dict(color="grey", size=None, resize="squash", crop_pct=1.0, interpolation="bilinear",
                   mean=[MEAN], std=[STD], layout="nchw", exact=True, crop_offset="round"),
    # torchvision's ImageNet evaluation (CheXNet): Resize(256) + CenterCrop(224) + Normalize.
    "imagenet": dict(color="rgb", size=224, resize="shorter_crop", crop_pct=0.875, interpolation="bilinear",
                     mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD), layout="nchw", exact=True, crop_offset="round"),
    # Keras / TF models: load_img (nearest) to the input size, x / 127.5 - 1.
    "inception": dict(color="rgb", size=299, resize="squash", crop_pct=1.0, interpolation="nearest",
                      mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5], layout="nchw", exact=True, crop_offset="round"),
    # torchxrayvision's pipeline: normalize to [-1024, 1024] = (x / 255 - 0.5) / (0.5 / 1024),
    # XRayCenterCrop (its own offsets, h // 2 - s // 2), XRayResizer(224) (scikit-image,
    # bilinear + anti-aliasing, on float pixels), one channel.
    "xrv": dict(color="grey", size=224, resize="xrv", crop_pct=1.0, interpolation="bilinear",
                mean=[0.5], std=[0.5 / 1024], layout="nchw", exact=True, crop_offset="round"),
    # timm: every unset key from timm.data.resolve_data_config(model=<the timm arch>).
    "timm": dict(color="rgb", size=None, resize=None, crop_pct=None, interpolation=None, mean=None, std=None,
                 layout="nchw", exact=True, crop_offset="round"),
    # The model's own, as its source states it: every unset key from a model=hf folder (its
    # transformers image processor or timm pretrained_cfg: medray.data.preprocess.derive),
    # or torchxrayvision's pipeline at the weights' resolution for model=xrv.
    "model": dict(color=None, size=None, resize=None, crop_pct=None, interpolation=None, mean=None, std=None,
                  layout="nchw", exact=True, crop_offset=None),
}


@dataclass
class PreprocessConfig:
    """The ``preprocess`` config group: how the model's pixels are made (see the module).

    ``name`` is the preset; the other keys, when set, override it (null = the preset's,
    or for ``timm`` timm's own for the model).
    """

    name: str = "medray"
    color: str | None = None
    # The model's input: an int (square) or [h, w]; null = the preset's / model.input_size.
    size: Any = None
    resize: str | None = None
    # shorter_crop / squash: resize to floor(size / crop_pct), then the centre crop (timm's
    # and torchvision's rule); tta=tencrop cuts its ten crops from that resized image.
    crop_pct: float | None = None
    interpolation: str | None = None
    # Per channel, 0–1 units (as timm / torchvision write them); one value = every channel.
    mean: list[float] | None = None
    std: list[float] | None = None
    layout: str | None = None
    # false: JPEGs may be decoded at reduced scale (PIL draft), faster, other pixels.
    exact: bool | None = None
    # round (torchvision, timm) | floor (transformers' image processors): see CROP_OFFSETS.
    crop_offset: str | None = None

    def __post_init__(self) -> None:
        if self.name not in PRESETS:
            fail("preprocess", self.name, f"available presets: {', '.join(PRESETS)}")
        for key, allowed in (("color", COLORS), ("resize", RESIZES), ("interpolation", INTERPOLATIONS), ("layout", LAYOUTS),
                             ("crop_offset", CROP_OFFSETS)):
            v = getattr(self, key)
            if v is not None and v not in allowed:
                fail(f"preprocess.{key}", v, f"use one of {', '.join(allowed)}")
        if self.size is not None:
            size = [self.size] if isinstance(self.size, int) else list(self.size)
            if len(size) not in (1, 2) or any(not isinstance(v, int) or v < 8 for v in size):
                fail("preprocess.size", self.size, "use the model's input size in pixels: an int (square) or [h, w], >= 8")
            self.size = size[0] if len(size) == 1 else size
        if self.crop_pct is not None and not 0 < self.crop_pct <= 1:
            fail("preprocess.crop_pct", self.crop_pct, "use a fraction in (0, 1] (e.g. 0.875 = Resize(256) + CenterCrop(224))")
        for key in ("mean", "std"):
            v = getattr(self, key)
            if v is not None:
                v = [float(x) for x in ([v] if isinstance(v, (int, float)) else v)]
                if len(v) not in (1, 3):
                    fail(f"preprocess.{key}", v, "give one value (every channel) or three (R, G, B), in 0-1 units")
                setattr(self, key, v)
        if self.std is not None and min(self.std) <= 0:
            fail("preprocess.std", self.std, "standard deviations must be positive")

    def settings(self) -> dict[str, Any]:
        """The preset's values with this config's overrides (None = still to resolve)."""
        out = dict(PRESETS[self.name])
        out.update({k: v for k, v in asdict(self).items() if k != "name" and v is not None})
        out["name"] = self.name
        return out
