"""Models as they ship from model hubs, written by the tests with the libraries' own writers,
and real radiographs to run them on (pydicom-data's CR chest ``RG1``, 1955x1841, and
``RG3``, 1760x1760, decoded to 8 bits by medray's DICOM reader).

Weights are random but not trivial: every weight perturbed, BatchNorm statistics taken from
the radiographs themselves, the head rescaled so the logits spread about N(centre, 1.5) on
them (xrv: centred on each label's operating threshold, so op_norm is not saturated).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image

# Output names as the formats carry them, in orders other than ChestX-ray14's.
VIT_LABELS = ["No Finding", "Effusion", "Pleural_Thickening", "Cardiomegaly", "Atelectasis"]
TIMM_LABELS = ["Pleural Effusion", "Atelectasis", "Cardiomegaly", "Pneumothorax"]
# The checkpoint's own preprocessing; densenet121's registry default is 224, 0.875, bicubic, ImageNet.
TIMM_CFG = dict(input_size=(3, 160, 160), crop_pct=0.95, crop_mode="center", interpolation="bilinear",
                mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
TIMM_ARGS = dict(growth_rate=8, block_config=[2, 2, 2, 2])
# NIH findings the fixtures' models score, used to label the radiographs of the test sets.
FINDINGS = ("Effusion", "Atelectasis", "Cardiomegaly", "Pneumothorax", "Pleural_Thickening")


@cache
def radiograph(name: str) -> np.ndarray:
    """A pydicom-data CR radiograph as medray's DICOM reader makes it (uint8 grey)."""
    from data_store import __file__ as store

    from medray.data.dicom import decode_dicom_gray

    return decode_dicom_gray(str(Path(store).parent / "data" / f"{name}.dcm"))


def radiograph_files(root: Path) -> dict[str, str]:
    """RG1 as PNG and JPEG (q95), RG3 as PNG, and RG1 as a false-colour RGB PNG (three
    different channels): the files a user's folder would hold."""
    root.mkdir(parents=True, exist_ok=True)
    rg1, rg3 = radiograph("RG1_UNCR"), radiograph("RG3_UNCR")
    Image.fromarray(rg1).save(root / "rg1.png")
    Image.fromarray(rg1).save(root / "rg1.jpg", quality=95)
    Image.fromarray(rg3).save(root / "rg3.png")
    x = rg1.astype(np.float32) / 255
    rgb = np.stack([x, x ** 0.7, 1 - 0.6 * x], -1)
    Image.fromarray((rgb * 255).round().astype(np.uint8)).save(root / "rg1_rgb.png")
    return {k: str(root / f"{k}.{'jpg' if k.endswith('jpg') else 'png'}") for k in ("rg1", "rg3", "rg1_rgb")} | {
        "rg1_jpg": str(root / "rg1.jpg")}


def crops(n: int, seed: int = 0, lo: int = 240, hi: int = 560) -> list[np.ndarray]:
    """Random regions of the two radiographs, resized to random sizes (odd ones included):
    real chest X-ray content at sizes that decode quickly."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        a = radiograph(("RG1_UNCR", "RG3_UNCR")[i % 2])
        s = int(min(a.shape) * rng.uniform(0.45, 1.0))
        y, x = rng.integers(0, a.shape[0] - s + 1), rng.integers(0, a.shape[1] - s + 1)
        h, w = int(rng.integers(lo, hi)), int(rng.integers(lo, hi))
        out.append(np.asarray(Image.fromarray(a[y:y + s, x:x + s]).resize((w, h), Image.BILINEAR)))
    return out


def make_nih(root: Path, n_test: int = 16, n_train_val: int = 8, seed: int = 0) -> Path:
    """The NIH ChestX-ray14 layout (manifest, split lists, images_001/images) holding
    radiograph crops, labelled with :data:`FINDINGS` so that each has both outcomes."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    (root / "images_001" / "images").mkdir(parents=True, exist_ok=True)
    n = n_test + n_train_val
    names = [f"{i + 1:08d}_000.png" for i in range(n)]
    labels = []
    for i in range(n):
        found = [f for j, f in enumerate(FINDINGS) if (i + j) % 3 == 0 or rng.random() < 0.2]
        labels.append("|".join(found) or "No Finding")
    for name, img in zip(names, crops(n, seed)):
        Image.fromarray(img).save(root / "images_001" / "images" / name)
    pd.DataFrame({"Image Index": names, "Finding Labels": labels, "Follow-up #": 0,
                  "Patient ID": [str(i + 1) for i in range(n)], "Patient Age": 50,
                  "Patient Gender": [("M", "F")[i % 2] for i in range(n)], "View Position": "PA"}
                 ).to_csv(root / "Data_Entry_2017_v2020.csv", index=False)
    (root / "test_list.txt").write_text("".join(f"{x}\n" for x in names[:n_test]))
    (root / "train_val_list.txt").write_text("".join(f"{x}\n" for x in names[n_test:]))
    return root


def baseline_probs(spec, samples, batch: dict | None = None):
    """What the torch-fp32 baseline's actors compute: the read stage (or its ``batch``), then
    the task's predict."""
    from medray.backends import config_class, get_backend
    from medray.specs import RunSpec
    from medray.tasks.classification.read import decode_batch, model_prep
    from medray.tasks.classification.task import ClassificationTask

    run = RunSpec("torch-fp32", "baseline", config_class("torch")(), "fp32", "cpu", len(samples), 1, spec,
                  warmup_batches=0)
    if batch is None:
        batch = decode_batch({"sample_id": samples["sample_id"].to_numpy(), "path": samples["path"].to_numpy()},
                             model_prep(spec))
    with get_backend("torch")(run) as b:
        return ClassificationTask().predict(b, run, batch)["probs"]


# ------------------------------------------------------------------ non-trivial weights


def jitter(model, scale: float, seed: int):
    """Every parameter and BN statistic perturbed (random, reproducible)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in list(model.named_parameters()) + list(model.named_buffers()):
            if not t.is_floating_point() or "op_thresh" in name:
                continue
            noise = torch.randn(t.shape, generator=g) * scale
            t.copy_(t.abs() + 0.5 + noise.abs() if "running_var" in name else t + noise)
    return model.eval()


def calibrate(model, forward, head, x, centre=None, spread: float = 1.5):
    """BN statistics of the inputs ``x`` and a head giving logits ~ N(centre, spread) on them."""
    import torch

    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative: the running statistics are this batch's
    with torch.no_grad():
        model.train()
        forward(x)
        model.eval()
        for m in bns:
            m.momentum = 0.1
        z = forward(x)
        scale = spread / z.std(0).clamp_min(1e-6)
        head.weight.mul_(scale[:, None])
        c = torch.zeros(z.shape[1]) if centre is None else torch.nan_to_num(torch.as_tensor(centre, dtype=torch.float32))
        head.bias.copy_(c - (z.mean(0) - head.bias) * scale)
    return model.eval()


def _inputs(size: int, mean: float, std: float, channels: int, n: int = 10):
    import torch

    x = torch.stack([torch.from_numpy(np.asarray(Image.fromarray(c).resize((size, size), Image.BILINEAR),
                                                 dtype=np.float32)) for c in crops(n, seed=7)]) / 255
    return ((x - mean) / std)[:, None].expand(-1, channels, -1, -1).contiguous()


# ------------------------------------------------------------------ model folders and files


def write_vit(out: Path, labels=VIT_LABELS, multi_label: bool = True) -> Path:
    """A transformers ViT image classifier (tiny) + its ViTImageProcessor, by save_pretrained."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(0)
    extra = {"problem_type": "multi_label_classification"} if multi_label else {}
    model = ViTForImageClassification(ViTConfig(
        image_size=224, patch_size=32, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, num_channels=3, id2label=dict(enumerate(labels)),
        label2id={n: i for i, n in enumerate(labels)}, **extra))
    jitter(model, 0.1, seed=0)
    calibrate(model, lambda x: model(pixel_values=x).logits, model.classifier, _inputs(224, 0.5, 0.5, 3))
    model.save_pretrained(out)
    ViTImageProcessor(size={"height": 224, "width": 224}, resample=2, image_mean=[0.5] * 3,
                      image_std=[0.5] * 3).save_pretrained(out)
    return out


def timm_densenet(labels=TIMM_LABELS, seed: int = 2):
    """A small densenet121 (timm) with the checkpoint's own pretrained_cfg."""
    import timm

    model = timm.create_model("densenet121", pretrained=False, num_classes=len(labels),
                              pretrained_cfg_overlay=TIMM_CFG, **TIMM_ARGS)
    jitter(model, 0.1, seed=seed)
    return calibrate(model, model, model.get_classifier(), _inputs(160, 0.5, 0.25, 3))


def write_timm(out: Path, model=None, labels=TIMM_LABELS) -> Path:
    """timm's hub format, by timm's own writer (push_to_hf_hub uses it)."""
    from timm.models import save_for_hf

    save_for_hf(model if model is not None else timm_densenet(labels), str(out),
                model_config={"label_names": list(labels)}, model_args=TIMM_ARGS, safe_serialization=True)
    return out


def permuted(model, order: list[int]):
    """The same model with its outputs in ``order`` (output i = the old output order[i])."""
    import copy

    import torch

    m = copy.deepcopy(model)
    head = m.get_classifier()
    with torch.no_grad():
        head.weight.copy_(head.weight[order])
        head.bias.copy_(head.bias[order])
    return m


def xrv_pixels(gray_u8: np.ndarray, size: int = 224) -> np.ndarray:
    """torchxrayvision's own preprocessing of an 8-bit grey image: ``normalize(img, 255)``,
    ``XRayCenterCrop``, ``XRayResizer(size)`` → float32 ``(1, size, size)``."""
    import warnings

    import torchxrayvision as xrv

    img = xrv.datasets.normalize(gray_u8, 255)[None]
    img = xrv.datasets.XRayCenterCrop()(img)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return xrv.datasets.XRayResizer(size)(img).astype(np.float32)


def write_xrv_densenet(out: Path, weights: str = "densenet121-res224-all") -> tuple[Path, Path]:
    """xrv's own DenseNet class with random, calibrated weights, saved as a state dict and
    as a pickled whole module (the published format)."""
    import torch
    import torchxrayvision as xrv

    out.mkdir(parents=True, exist_ok=True)
    meta = xrv.models.model_urls[weights]
    torch.manual_seed(3)
    net = xrv.models.DenseNet(num_classes=len(meta["labels"]), in_channels=1)  # op_threshs None: forward = logits
    jitter(net, 0.05, seed=3)
    x = torch.from_numpy(np.stack([xrv_pixels(c) for c in crops(8, seed=5)]))
    calibrate(net, net, net.classifier, x, centre=torch.logit(torch.tensor(meta["op_threshs"])))
    state, module = out / f"{weights}.state.pt", out / f"{weights}.module.pt"
    torch.save(net.state_dict(), state)
    torch.save(net, module)
    return state, module
