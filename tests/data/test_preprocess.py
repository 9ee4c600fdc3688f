"""Every preprocessing preset gives the tensor its reference pipeline gives, on the same
file: timm's own eval transform, torchvision's CheXNet / ImageNet transform, a Keras-style
PIL resize + x/127.5 - 1 in NHWC — on generated non-square images and on a real chest
radiograph (pydicom-data's CR ``RG1``).  torchxrayvision's pipeline (``xrv``) and the keys
derived from a model's own description (``model``) are in test_derive.py."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from medray.data.preprocess import InputBuffers, PreprocessConfig, decode_image, resolve, to_model_input
from medray.errors import ConfigError

TOL = 1e-6


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """A non-square RGB JPEG, a non-square grey PNG, and a real chest radiograph (CR,
    1955x1841, 15 bits) written as the 8-bit PNG and JPEG a user's folder would hold."""
    from data_store import __file__ as store  # the pydicom-data package: real DICOM files

    from medray.data.dicom import decode_dicom_gray

    root = tmp_path_factory.mktemp("prep")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:230, 0:310]
    rgb = np.stack([(120 + 80 * np.sin(xx / (9 + 3 * c)) * np.cos(yy / 13) + rng.normal(0, 12, xx.shape)) for c in range(3)], -1)
    Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).save(root / "rgb.jpg", quality=92)
    grey = np.clip(100 + 60 * np.sin(xx[:150, :260] / 7.0) + rng.normal(0, 20, (150, 260)), 0, 255).astype(np.uint8)
    Image.fromarray(grey).save(root / "grey.png")
    from pathlib import Path

    cr = decode_dicom_gray(str(Path(store).parent / "data" / "RG1_UNCR.dcm"))
    Image.fromarray(cr).save(root / "chest.png")
    Image.fromarray(cr).save(root / "chest.jpg", quality=95)
    return {k: str(root / f) for k, f in (("rgb", "rgb.jpg"), ("grey", "grey.png"), ("chest", "chest.png"), ("chest_jpg", "chest.jpg"))}


def ours(path: str, cfg: PreprocessConfig, in_chans: int = 3, arch: str | None = None, input_size: int = 96) -> np.ndarray:
    prep = resolve(cfg, in_chans, input_size, timm_arch=arch)
    return to_model_input(decode_image(path, prep)[None], in_chans, prep)[0]


@pytest.mark.parametrize("arch", ["resnet50", "efficientnet_b0", "inception_v3", "vit_tiny_patch16_224", "resnet10t"])
@pytest.mark.parametrize("img", ["rgb", "grey", "chest", "chest_jpg"])
def test_timm_preset_equals_timms_own_eval_transform(images, arch, img):
    import timm
    from timm.data import create_transform, resolve_data_config

    model = timm.create_model(arch, pretrained=False)
    ref = create_transform(**resolve_data_config({}, model=model))(Image.open(images[img]).convert("RGB")).numpy()
    got = ours(images[img], PreprocessConfig(name="timm"), arch=arch)
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() <= TOL


@pytest.mark.parametrize("mode", ["squash", "border"])
@pytest.mark.parametrize("size", [64, (48, 80)])
def test_squash_letterbox_and_non_square_sizes_equal_timm(images, mode, size):
    """resize=squash / letterbox and [h, w] sizes = timm's crop_mode squash / border."""
    from timm.data import create_transform

    kw = dict(input_size=(3, *(size if isinstance(size, tuple) else (size, size))), interpolation="bilinear", crop_pct=0.9,
              crop_mode=mode, mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3))
    for img in ("rgb", "chest"):
        ref = create_transform(**kw)(Image.open(images[img]).convert("RGB")).numpy()
        cfg = PreprocessConfig(name="imagenet", size=list(size) if isinstance(size, tuple) else size, crop_pct=0.9,
                               interpolation="bilinear", resize="squash" if mode == "squash" else "letterbox",
                               mean=[0.4, 0.5, 0.6], std=[0.2, 0.25, 0.3])
        got = ours(images[img], cfg)
        assert got.shape == ref.shape and np.abs(got - ref).max() <= TOL, (img, mode, size)
    # shorter side + centre crop for a non-square input: timm's ResizeKeepRatio path
    if isinstance(size, tuple):
        ref = create_transform(**{**kw, "crop_mode": "center"})(Image.open(images["rgb"]).convert("RGB")).numpy()
        got = ours(images["rgb"], PreprocessConfig(name="imagenet", size=list(size), crop_pct=0.9, interpolation="bilinear",
                                                   mean=[0.4, 0.5, 0.6], std=[0.2, 0.25, 0.3]))
        assert np.abs(got - ref).max() <= TOL


@pytest.mark.parametrize("interp", ["nearest", "bilinear", "bicubic", "lanczos", "area"])
def test_imagenet_preset_equals_torchvisions_chexnet_transform(images, interp):
    """Resize(256) → CenterCrop(224) → ToTensor → Normalize(ImageNet), every interpolation."""
    from torchvision import transforms as T

    mode = {"area": T.InterpolationMode.BOX}.get(interp) or T.InterpolationMode(interp)
    tf = T.Compose([T.Resize(256, interpolation=mode), T.CenterCrop(224), T.ToTensor(),
                    T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    for img in ("chest", "rgb"):
        ref = tf(Image.open(images[img]).convert("RGB")).numpy()
        got = ours(images[img], PreprocessConfig(name="imagenet", interpolation=interp))
        assert np.abs(got - ref).max() <= TOL, img


def test_inception_nhwc_preset_equals_a_keras_style_loader(images):
    """Keras' load_img (PIL nearest) to the input size, x / 127.5 - 1, channels last."""
    for img in ("chest", "rgb", "chest_jpg"):
        pil = Image.open(images[img]).convert("RGB").resize((299, 299), Image.NEAREST)
        ref = np.asarray(pil, dtype=np.float32) / 127.5 - 1.0
        got = ours(images[img], PreprocessConfig(name="inception", layout="nhwc"))
        assert got.shape == (299, 299, 3) and np.abs(got - ref).max() <= TOL, img


def test_medray_preset_is_the_demo_preprocessing(images):
    """grey, squashed, (x/255 - 0.5) / 0.25, the grey repeated to the model's 3 channels."""
    pil = Image.open(images["grey"]).convert("L").resize((96, 96), Image.BILINEAR)
    ref = (np.asarray(pil, dtype=np.float32) / 255 - 0.5) / 0.25
    got = ours(images["grey"], PreprocessConfig(name="medray"))
    assert got.shape == (3, 96, 96) and np.abs(got - ref[None]).max() <= TOL


def test_draft_decoding_is_opt_in(images):
    """exact=true (every preset's default) decodes JPEGs at full size; exact=false may draft."""
    exact = ours(images["chest_jpg"], PreprocessConfig(name="imagenet"))
    fast = ours(images["chest_jpg"], PreprocessConfig(name="imagenet", exact=False))
    assert np.abs(exact - fast).max() > 0  # drafted at 1/4 scale: other pixels
    assert np.abs(exact - ours(images["chest_jpg"], PreprocessConfig(name="imagenet", exact=True))).max() == 0


def test_bad_preprocessing_names_the_key_and_the_fix():
    with pytest.raises(ConfigError, match=r"preprocess.mean=\[0.5, 0.5\]: give one value \(every channel\) or three"):
        PreprocessConfig(mean=[0.5, 0.5])
    with pytest.raises(ConfigError, match=r"preprocess.mean=\[0.485, 0.456, 0.406\]: the model takes 1 channel\(s\): give 1"):
        resolve(PreprocessConfig(name="xrv", mean=[0.485, 0.456, 0.406]), 1, 224)
    with pytest.raises(ConfigError, match=r"preprocess.color='rgb': the model takes 1 channel\(s\)"):
        resolve(PreprocessConfig(name="imagenet"), 1, 224)
    with pytest.raises(ConfigError, match="preprocess='keras': available presets: medray, imagenet, inception, xrv, timm, model"):
        PreprocessConfig(name="keras")
    with pytest.raises(ConfigError, match=r"preprocess.crop_pct=1.2: use a fraction in \(0, 1\]"):
        PreprocessConfig(crop_pct=1.2)
    with pytest.raises(ConfigError, match="preprocess.layout='hwc': use one of nchw, nhwc"):
        PreprocessConfig(layout="hwc")
    with pytest.raises(ConfigError, match="preprocess='timm': the timm preset reads the model's timm config"):
        resolve(PreprocessConfig(name="timm"), 3, 224, timm_arch=None)


@pytest.mark.parametrize("shape,in_chans,prep", [
    ((4, 7, 9), 3, None),  # medray preset: grey repeated to 3 channels
    ((4, 7, 9), 1, None),
    ((4, 7, 9, 3), 3, {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "layout": "nchw"}),
    ((4, 7, 9, 3), 3, {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "layout": "nhwc"}),
    ((4, 7, 9), 3, {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "layout": "nchw"}),
])
def test_model_input_of_uint8_images_is_bit_identical_to_totensor_normalize(shape, in_chans, prep):
    """The uint8 fast path (a table per channel) gives torchvision's ToTensor + Normalize
    exactly, every pixel value included, in both layouts."""
    import torch
    from torchvision.transforms import v2

    x = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    x[0].flat[:256] = np.arange(256, dtype=np.uint8)[: x[0].size]  # every value appears
    got = to_model_input(x, in_chans, prep)
    # Into a reused array (the actor's): the same values, whatever the array held before.
    buffers = InputBuffers()
    buffers.get(got.shape).fill(np.nan)
    reused = to_model_input(x, in_chans, prep, buffers)
    assert reused is buffers.get(got.shape)
    np.testing.assert_array_equal(reused, got)
    t = torch.from_numpy(x).float() / 255
    t = t[..., None].expand(*t.shape, in_chans) if x.ndim == 3 else t
    mean = torch.tensor(prep["mean"] if prep else [0.5] * in_chans)
    std = torch.tensor(prep["std"] if prep else [0.25] * in_chans)
    want = v2.functional.normalize(t.permute(0, 3, 1, 2), mean.tolist(), std.tolist())
    if prep and prep["layout"] == "nhwc":
        want = want.permute(0, 2, 3, 1)
    assert got.dtype == np.float32 and got.flags.c_contiguous
    np.testing.assert_array_equal(got, want.contiguous().numpy())


def test_input_buffers_reuse_one_array_per_shape_and_keep_the_latest_few():
    b = InputBuffers()
    a = b.get((2, 3))
    assert b.get((2, 3)) is a and a.dtype == np.float32
    others = [b.get((n, 3)) for n in range(3, 3 + InputBuffers.KEEP)]
    assert b.get((2, 3)) is not a  # evicted: only the KEEP most recent shapes are held
    assert b.get((3 + InputBuffers.KEEP - 1, 3)) is others[-1]
