"""A preprocessing config → the concrete preprocessing of a model (every key set)."""

from __future__ import annotations

from typing import Any

from medray.data.preprocess.config import INTERPOLATIONS, PreprocessConfig
from medray.errors import fail

_CROP_MODES = {"center": "shorter_crop", "squash": "squash", "border": "letterbox"}


def resolve(cfg: PreprocessConfig, in_chans: int, input_size: int, timm_arch: str | None = None,
            derived: dict[str, Any] | None = None) -> dict[str, Any]:
    """The concrete preprocessing of a model: every key set, ``size`` as ``[h, w]``.

    ``timm`` fills what is unset from ``timm.data.resolve_data_config`` on ``timm_arch``
    (no download: the architecture's pretrained config); ``model`` from ``derived``, the
    keys the model's source states (:mod:`medray.data.preprocess.derive`).  The channels are checked
    against the model's ``in_chans`` here (a config error naming the key).
    """
    s = cfg.settings()
    if cfg.name == "model":
        if derived is None:
            fail("preprocess", "model", "this model's source states no preprocessing (model=hf and model=xrv do); "
                 "use another preset, e.g. preprocess=imagenet or preprocess=timm")
        s.update({k: v for k, v in derived.items() if s.get(k) is None})
    if cfg.name == "timm":
        if not timm_arch:
            fail("preprocess", "timm", "the timm preset reads the model's timm config: give model.arch=<timm name>, or another preset")
        import timm
        from timm.data import resolve_data_config

        dc = resolve_data_config({}, model=timm.create_model(timm_arch, pretrained=False, num_classes=2))
        timm_values = {"size": list(dc["input_size"][1:]), "crop_pct": float(dc["crop_pct"]),
                       "interpolation": "area" if dc["interpolation"] == "box" else dc["interpolation"],
                       "mean": list(dc["mean"]), "std": list(dc["std"]),
                       "resize": _CROP_MODES.get(dc.get("crop_mode") or "center", "shorter_crop")}
        for k, v in timm_values.items():
            if s.get(k) is None:
                s[k] = v
        if s["interpolation"] not in INTERPOLATIONS:
            fail("preprocess.interpolation", s["interpolation"], f"timm's {s['interpolation']!r} is not supported; set one of {', '.join(INTERPOLATIONS)}")
    if s["resize"] == "xrv" and (s["color"] != "grey" or s["interpolation"] != "bilinear"):
        fail("preprocess.resize", "xrv", "torchxrayvision's resize is scikit-image's bilinear one on one grey channel: "
             "use preprocess.color=grey preprocess.interpolation=bilinear, or another resize")
    size = s["size"] if s["size"] is not None else input_size
    s["size"] = [int(size), int(size)] if isinstance(size, int) else [int(v) for v in size]
    channels = 3 if s["color"] == "rgb" else in_chans
    if s["color"] == "rgb" and in_chans != 3:
        fail("preprocess.color", "rgb", f"the model takes {in_chans} channel(s): use preprocess.color=grey, or a 3-channel model")
    for key in ("mean", "std"):
        v = list(s[key])
        if len(v) == 1:
            v = v * channels
        if len(v) != channels:
            fail(f"preprocess.{key}", s[key], f"the model takes {channels} channel(s): give {channels} values or one for every channel")
        s[key] = v
    s["channels"] = channels
    return s


def medray_preset(size: int, exact: bool = False) -> dict:
    """The demo models' preprocessing at ``size`` (resolved)."""
    return resolve(PreprocessConfig(name="medray", size=int(size), exact=exact), 1, int(size))
