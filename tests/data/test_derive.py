"""``preprocess=model``: the keys medray derives from a model's own description give the
tensor the library itself gives, on real radiographs (pydicom-data's CR RG1 1955x1841 —
where transformers' floor crop offset and torchvision's rounded one differ — and RG3),
to 1e-6: transformers' image processors (their PIL backend, medray's contract),
timm's ``create_transform(**resolve_data_config(pretrained_cfg))`` and torchxrayvision's
``normalize`` + ``XRayCenterCrop`` + ``XRayResizer``."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hub_fixtures import radiograph_files, xrv_pixels
from PIL import Image

from medray.data.preprocess import PreprocessConfig, decode_image, resolve, to_model_input
from medray.data.preprocess.derive import crop_pct_for, pil_processor, processor_keys, timm_keys, xrv_keys
from medray.errors import ConfigError

TOL = 1e-6

# The processors medray maps, with their class defaults and the configs hub models use.
PROCESSORS = {
    "vit squash bilinear": {"image_processor_type": "ViTImageProcessor", "image_mean": [0.5] * 3, "image_std": [0.5] * 3},
    "vit bicubic": {"image_processor_type": "ViTImageProcessor", "resample": 3},
    "vit lanczos": {"image_processor_type": "ViTImageProcessor", "resample": 1},
    "vit nearest": {"image_processor_type": "ViTImageProcessor", "resample": 0},
    "vit box": {"image_processor_type": "ViTImageProcessor", "resample": 4},
    "vit x/127.5-1": {"image_processor_type": "ViTImageProcessor", "rescale_factor": 1 / 127.5, "image_mean": [1, 1, 1],
                      "image_std": [1, 1, 1]},
    "deit default (256 squash, crop 224)": {"image_processor_type": "DeiTImageProcessor"},
    "bit default (shortest 224, crop 224)": {"image_processor_type": "BitImageProcessor"},
    "clip shortest 256 crop 224": {"image_processor_type": "CLIPImageProcessor", "size": {"shortest_edge": 256},
                                   "crop_size": {"height": 224, "width": 224}},
    "mobilenet_v1 default": {"image_processor_type": "MobileNetV1ImageProcessor"},
    "poolformer default": {"image_processor_type": "PoolFormerImageProcessor"},
    "levit default": {"image_processor_type": "LevitImageProcessor"},
    "beit default": {"image_processor_type": "BeitImageProcessor"},
    "siglip default": {"image_processor_type": "SiglipImageProcessor"},
    "pvt default": {"image_processor_type": "PvtImageProcessor"},
    "convnext 224 crop_pct 0.875": {"image_processor_type": "ConvNextImageProcessor", "size": {"shortest_edge": 224},
                                    "crop_pct": 0.875},
    "convnext 384 warp": {"image_processor_type": "ConvNextImageProcessor", "size": {"shortest_edge": 384}},
}


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return radiograph_files(tmp_path_factory.mktemp("radiographs"))


def ours(path: str, keys: dict, in_chans: int = 3) -> np.ndarray:
    prep = resolve(PreprocessConfig(name="model"), in_chans, 224, derived=keys)
    return to_model_input(decode_image(path, prep)[None], in_chans, prep)[0]


@pytest.mark.parametrize("name", PROCESSORS)
def test_transformers_processor_keys_give_its_pil_backend_tensor(images, name):
    pytest.importorskip("transformers", reason='pip install -e ".[hf]"')
    from transformers.image_utils import load_image

    keys = processor_keys(PROCESSORS[name])
    proc = pil_processor(PROCESSORS[name])
    assert type(proc).__name__.endswith("Pil") and keys["reference"].endswith("(PIL backend)")
    for img, path in images.items():
        # what pipeline("image-classification") does with a file: load_image (RGB), then the processor
        ref = proc(images=load_image(path), return_tensors="np")["pixel_values"][0]
        got = ours(path, keys)
        assert got.shape == ref.shape, (name, img)
        assert np.abs(got - ref).max() <= TOL, (name, img, float(np.abs(got - ref).max()))


def test_transformers_crop_offset_is_floor_and_matters_on_a_real_radiograph(images):
    """RG1 at shortest edge 224/0.875=256 is 271 wide: 271 - 224 = 47, where floor and round differ."""
    keys = processor_keys(PROCESSORS["clip shortest 256 crop 224"])
    assert keys["crop_offset"] == "floor"
    floor = ours(images["rg1"], keys)
    rounded = ours(images["rg1"], {**keys, "crop_offset": "round"})
    assert np.abs(floor - rounded).max() > 0.1  # one pixel of shift: a visible difference


@pytest.mark.parametrize("cfg", [
    dict(input_size=(3, 160, 160), crop_pct=0.95, crop_mode="center", interpolation="bilinear", mean=(0.5,) * 3,
         std=(0.25,) * 3),
    dict(input_size=(3, 192, 160), crop_pct=0.9, crop_mode="squash", interpolation="bicubic",
         mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
    dict(input_size=(3, 128, 128), crop_pct=1.0, crop_mode="border", interpolation="box", mean=(0.4,) * 3, std=(0.3,) * 3),
])
def test_timm_keys_give_create_transform_of_the_checkpoints_pretrained_cfg(images, cfg):
    from timm.data import create_transform, resolve_data_config

    tf = create_transform(**resolve_data_config(pretrained_cfg=cfg))
    keys = timm_keys(cfg)
    for img, path in images.items():
        ref = tf(Image.open(path).convert("RGB")).numpy()
        got = ours(path, keys)
        assert got.shape == ref.shape and np.abs(got - ref).max() <= TOL, (img, float(np.abs(got - ref).max()))


def test_xrv_preset_is_torchxrayvisions_own_pipeline(images):
    """XRayCenterCrop + XRayResizer on float pixels: medray's tensor equals xrv's to a few
    float32 ulps at 1024 (relative 1e-6), RG1 (not square) and RG3."""
    pytest.importorskip("torchxrayvision", reason='pip install -e ".[xrv]"')
    for img in ("rg1", "rg3", "rg1_jpg"):
        gray = np.asarray(Image.open(images[img]).convert("L"))
        ref = xrv_pixels(gray)
        for prep_cfg in (PreprocessConfig(name="xrv"), PreprocessConfig(name="model")):
            prep = resolve(prep_cfg, 1, 224, derived=xrv_keys(224))
            got = to_model_input(decode_image(images[img], prep)[None], 1, prep)[0]
            assert got.shape == ref.shape == (1, 224, 224)
            np.testing.assert_allclose(got, ref, rtol=0, atol=1024 * TOL)


def test_crop_pct_for_round_trips_through_floor():
    for c in range(8, 600, 7):
        for s in range(c, 2 * c + 1, 3):
            assert math.floor(c / crop_pct_for(c, s)) == s
    assert math.floor(14 / (14 / 25)) == 24  # why crop / scaled alone is not enough


def test_processors_medray_cannot_express_are_refused():
    pytest.importorskip("transformers", reason='pip install -e ".[hf]"')
    with pytest.raises(ConfigError, match="MobileViTImageProcessor is not mapped to medray's preprocessing"):
        processor_keys({"image_processor_type": "MobileViTImageProcessor"})
    with pytest.raises(ConfigError, match=r"resample=5 \(hamming\) has no medray interpolation"):
        processor_keys({"image_processor_type": "ViTImageProcessor", "resample": 5})
    with pytest.raises(ConfigError, match="per-channel mean/std"):
        processor_keys({"image_processor_type": "CLIPImageProcessor"}, num_channels=1)
    with pytest.raises(ConfigError, match="preprocess='model': this model's source states no preprocessing"):
        resolve(PreprocessConfig(name="model"), 3, 224)
