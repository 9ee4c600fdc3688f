"""Image preprocessing as part of the model's contract: decoding, resizing, normalising.

A model was trained on pixels made a certain way: colour, size, how the image was
resized (squashed, shorter side + centre crop, letterboxed), the interpolation, the
per-channel mean/std and the layout.  Feed it other pixels and its AUC is wrong without
any warning, so :class:`PreprocessConfig` (config group ``preprocess=``) says how, with
presets: ``medray`` (the demo models), ``imagenet`` (torchvision / CheXNet), ``inception``
(Keras-style ``x/127.5 - 1``), ``xrv`` (torchxrayvision's [-1024, 1024], one channel) and
``timm`` (timm's own ``resolve_data_config`` on the model).

Two steps, the same for training (demo), calibration and evaluation:

* :func:`decode_image` — the CPU read tasks: file → PIL → resize / crop exactly as
  torchvision and timm do on PIL images → ``uint8`` ``(H, W)`` (grey) or ``(H, W, 3)``
  (small object-store traffic); ``tta=tencrop`` → the ten crops ``(10, H, W[, 3])`` cut
  here, from the image resized to ``floor(size / crop_pct)``, so the decode size and the
  crops cannot disagree.
* :func:`to_model_input` — the actor: ``x / 255``, ``(x - mean) / std`` in float32 as
  torchvision's ``ToTensor`` + ``Normalize``, channels repeated for a grey image fed to
  a 3-channel model, NCHW or NHWC.
"""

from medray.data.preprocess.config import (
    COLORS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    INTERPOLATIONS,
    LAYOUTS,
    MEAN,
    PRESETS,
    RESIZES,
    STD,
    PreprocessConfig,
)
from medray.data.preprocess.decode import (
    TENCROP_CROP_PCT,
    array_to_gray_u8,
    check_pixels,
    decode_gray,
    decode_image,
    pixel_dtype,
    scale_size,
    tencrop_prep,
)
from medray.data.preprocess.normalise import InputBuffers, to_model_input
from medray.data.preprocess.presets import medray_preset, resolve

__all__ = ["COLORS", "IMAGENET_MEAN", "IMAGENET_STD", "INTERPOLATIONS", "LAYOUTS", "MEAN", "PRESETS", "RESIZES", "STD",
           "TENCROP_CROP_PCT", "InputBuffers", "PreprocessConfig", "array_to_gray_u8", "check_pixels", "decode_gray",
           "decode_image", "medray_preset", "pixel_dtype", "resolve", "scale_size", "tencrop_prep", "to_model_input"]

