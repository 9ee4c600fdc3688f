"""Two tiny but real MONAI bundles, written by the tests (modelled on the zoo's spleen bundle).

* ``segresnet``: SegResNet, 2 classes, spleen-style ``inference.json`` (a glob datalist under a
  ``dataset_dir`` that does not exist, a top-level ``checkpointloader`` called in ``initialize``,
  ``amp: true``), ``models/model.pt`` = ``{"model": state_dict}``, ``large_files.yml`` md5s;
* ``unet``: UNet ``norm: batch``, 3 classes, ``Orientationd`` + ``Spacingd`` + ``Invertd`` (old-style
  meta keys) on anisotropic volumes stored RAS, LPS, LPS rotated 12° and with permuted axes,
  a Gaussian sliding window with replicate padding, ``KeepLargestConnectedComponentd``, the
  CheckpointLoader among the handlers, ``models/model.pt`` = a plain state dict.

Both get ``configs/{inference,metadata}.json``, ``models/model.ts`` (``monai.bundle.ckpt_export``,
as the zoo makes it), ``data/{imagesTs,labelsTs}`` and ``data/datalist.json``.  The networks are
trained for a few iterations on blob-in-noise patches so that their masks have structure.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

BG, ORGAN, LESION, NOISE = -40.0, 110.0, 30.0, 25.0


def phantom(shape, affine, rng, k, centre=None):
    """HU image + label sampled through ``affine``: the anatomy lives in world space."""
    ijk = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1).reshape(-1, 3)
    xyz = ijk @ affine[:3, :3].T + affine[:3, 3]
    centre = xyz.mean(0) + rng.uniform(-4, 4, 3) if centre is None else centre
    radii = rng.uniform(7, 11, 3)
    d = np.sqrt((((xyz - centre) / radii) ** 2).sum(1))
    organ = 1 / (1 + np.exp(-(1 - d) * radii.min() / 1.2))
    img, lab = BG + (ORGAN - BG) * organ, (d < 1).astype(np.uint8)
    if k > 2:
        lc = centre + rng.uniform(-0.3, 0.3, 3) * radii
        dl = np.linalg.norm(xyz - lc, axis=1) / 3.5
        img = img + (LESION - ORGAN) / (1 + np.exp(-(1 - dl) * 3)) * organ
        lab[(dl < 1) & (d < 1)] = 2
    return (img + rng.normal(0, NOISE, img.shape)).reshape(shape).astype(np.float32), lab.reshape(shape)


def affine(spacing, axes=(0, 1, 2), flips=(1, 1, 1), rot=0.0, origin=(0, 0, 0)) -> np.ndarray:
    """Column j = world axis ``axes[j]`` × ``flips[j]`` × spacing, rotated ``rot``° about z."""
    m = np.zeros((3, 3))
    for j, (ax, f, s) in enumerate(zip(axes, flips, spacing)):
        m[ax, j] = f * s
    a, r = np.eye(4), np.deg2rad(rot)
    a[:3, :3] = np.array([[np.cos(r), -np.sin(r), 0], [np.sin(r), np.cos(r), 0], [0, 0, 1]]) @ m
    a[:3, 3] = origin
    return a


def transforms(pixdim, a_min, a_max, device=None) -> dict:
    ens = {"_target_": "EnsureTyped", "keys": "image", **({"device": device} if device else {})}
    return {"_target_": "Compose", "transforms": [
        {"_target_": "LoadImaged", "keys": "image"},
        {"_target_": "EnsureChannelFirstd", "keys": "image"},
        {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
        {"_target_": "Spacingd", "keys": "image", "pixdim": pixdim, "mode": "bilinear"},
        {"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": a_min, "a_max": a_max, "b_min": 0, "b_max": 1,
         "clip": True}, ens]}


def evaluator(amp: bool, handlers: list) -> dict:
    return {"handlers": handlers,
            "evaluator": {"_target_": "SupervisedEvaluator", "device": "@device", "val_data_loader": "@dataloader",
                          "network": "@network", "inferer": "@inferer", "postprocessing": "@postprocessing",
                          "val_handlers": "@handlers", "amp": amp}}


def loader(data: str) -> dict:
    return {"dataset": {"_target_": "Dataset", "data": data, "transform": "@preprocessing"},
            "dataloader": {"_target_": "DataLoader", "dataset": "@dataset", "batch_size": 1, "shuffle": False,
                           "num_workers": 0}}


SEGRESNET = {
    "name": "tiny_spleen_segresnet", "k": 2, "roi": [32, 32, 32], "pixdim": [1.5, 1.5, 2.0], "hu": (-57, 164),
    "classes": ["background", "spleen"], "ckpt": "dict", "large_files": True, "iters": 12,
    "net": {"_target_": "SegResNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 2, "init_filters": 8,
            "blocks_down": [1, 2, 2], "blocks_up": [1, 1], "dropout_prob": 0.2},
    "cases": [("spl_000", (56, 56, 36), affine((1.0, 1.0, 1.5), origin=(-28, -28, -27))),
              ("spl_001", (52, 56, 36), affine((1.0, 1.0, 1.5), flips=(-1, -1, 1), origin=(26, 28, -27)))],
}
UNET = {
    "name": "tiny_lps_unet", "k": 3, "roi": [32, 32, 32], "pixdim": [1.2, 1.2, 1.5], "hu": (-100, 200),
    "classes": ["background", "organ", "lesion"], "ckpt": "plain", "large_files": False, "iters": 40,
    "net": {"_target_": "UNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 3, "channels": [8, 16, 32, 64],
            "strides": [2, 2, 2], "num_res_units": 1, "norm": "batch"},
    # 0.8 × 0.8 × 2.5 mm: RAS, LPS, LPS rotated 12° about z, and slice axis first (permuted)
    "cases": [("lps_000", (60, 60, 18), affine((0.8, 0.8, 2.5), origin=(-24, -24, -22))),
              ("lps_001", (60, 56, 18), affine((0.8, 0.8, 2.5), flips=(-1, -1, 1), origin=(24, 22, -22))),
              ("lps_002", (58, 58, 18), affine((0.8, 0.8, 2.5), flips=(-1, -1, 1), rot=12, origin=(23, 23, -22))),
              ("lps_003", (18, 60, 58), affine((2.5, 0.8, 0.8), axes=(2, 1, 0), flips=(1, 1, -1), origin=(22, -24, -23)))],
}


def inference_json(spec: dict) -> dict:
    pixdim, (a_min, a_max) = spec["pixdim"], spec["hu"]
    common = {"bundle_root": ".", "output_dir": "$@bundle_root + '/eval'",
              "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')", "network_def": spec["net"],
              "network": "$@network_def.to(@device)"}
    ckpt = {"_target_": "CheckpointLoader", "load_path": "$@bundle_root + '/models/model.pt'",
            "load_dict": {"model": "@network"}}
    if spec["ckpt"] == "dict":  # the spleen bundle's shape
        return {"imports": ["$import glob", "$import os"], **common, "dataset_dir": "/workspace/data/toy",
                "datalist": "$list(sorted(glob.glob(@dataset_dir + '/imagesTs/*.nii.gz')))",
                "preprocessing": transforms(pixdim, a_min, a_max), **loader("$[{'image': i} for i in @datalist]"),
                "inferer": {"_target_": "SlidingWindowInferer", "roi_size": spec["roi"], "sw_batch_size": 4, "overlap": 0.5},
                "postprocessing": {"_target_": "Compose", "transforms": [
                    {"_target_": "Activationsd", "keys": "pred", "softmax": True},
                    {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing", "orig_keys": "image",
                     "nearest_interp": False, "to_tensor": True},
                    {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
                    {"_target_": "SaveImaged", "keys": "pred", "output_dir": "@output_dir", "output_postfix": "trans",
                     "output_dtype": "$numpy.float32", "separate_folder": True}]},
                **evaluator(True, [{"_target_": "StatsHandler", "iteration_log": False}]),
                "checkpointloader": ckpt, "initialize": ["$monai.utils.set_determinism(seed=123)",
                                                         "$@checkpointloader(@evaluator)"],
                "run": ["$@evaluator.run()"]}
    return {"imports": ["$import os"], **common, "dataset_dir": "/workspace/data/toy_lps",
            "datalist": "$monai.data.load_decathlon_datalist(@dataset_dir + '/datalist.json', "
                        "data_list_key='validation', base_dir=@dataset_dir)",
            "preprocessing": transforms(pixdim, a_min, a_max, device="@device"),
            **loader("$[{'image': i['image']} for i in @datalist]"),
            "inferer": {"_target_": "SlidingWindowInferer", "roi_size": spec["roi"], "sw_batch_size": 2, "overlap": 0.25,
                        "mode": "gaussian", "sigma_scale": 0.125, "padding_mode": "replicate"},
            "postprocessing": {"_target_": "Compose", "transforms": [
                {"_target_": "Activationsd", "keys": "pred", "softmax": True},
                {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing", "orig_keys": "image",
                 "meta_keys": "pred_meta_dict", "orig_meta_keys": "image_meta_dict", "meta_key_postfix": "meta_dict",
                 "nearest_interp": False, "to_tensor": True},
                {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
                {"_target_": "KeepLargestConnectedComponentd", "keys": "pred", "applied_labels": [1]},
                {"_target_": "SaveImaged", "keys": "pred", "output_dir": "@output_dir", "output_postfix": "seg",
                 "output_dtype": "$numpy.uint8", "resample": False, "separate_folder": False}]},
            **evaluator(False, [{**ckpt, "strict": True}, {"_target_": "StatsHandler", "iteration_log": False}]),
            "initialize": ["$setattr(torch.backends.cudnn, 'benchmark', True)"], "run": ["$@evaluator.run()"]}


def metadata(spec: dict, mean_dice: float) -> dict:
    k = spec["k"]
    return {"version": "0.1.0", "changelog": {"0.1.0": "written by medray's tests"}, "monai_version": "1.6",
            "required_packages_version": {"nibabel": nib.__version__}, "task": spec["name"], "name": spec["name"],
            "eval_metrics": {"mean_dice": mean_dice},
            "network_data_format": {
                "inputs": {"image": {"type": "image", "num_channels": 1, "spatial_shape": spec["roi"]}},
                "outputs": {"pred": {"type": "image", "format": "segmentation", "num_channels": k,
                                     "channel_def": {str(i): n for i, n in enumerate(spec["classes"])}}}}}


def train(net, spec: dict, iters: int, seed: int) -> None:
    import torch
    from monai.losses import DiceCELoss

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    loss_fn, opt = DiceCELoss(to_onehot_y=True, softmax=True), torch.optim.Adam(net.parameters(), 5e-3)
    (a_min, a_max), patch = spec["hu"], [24, 24, 24]
    net.train()
    for _ in range(iters):
        xs, ys = [], []
        for _ in range(2):
            img, lab = phantom(patch, np.diag([*spec["pixdim"], 1.0]), rng, spec["k"],
                               centre=rng.uniform(0.25, 0.75, 3) * np.array(patch) * spec["pixdim"])
            xs.append(np.clip((img - a_min) / (a_max - a_min), 0, 1)[None])
            ys.append(lab[None])
        loss = loss_fn(net(torch.from_numpy(np.stack(xs))), torch.from_numpy(np.stack(ys)).long())
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()


def write_bundle(spec: dict, out: Path, seed: int = 0, mean_dice: float = 0.9) -> Path:
    """The bundle of ``spec`` under ``out``; its validation cases under ``data/``."""
    import torch
    from monai.bundle import ConfigParser, ckpt_export

    root = out / spec["name"]
    for d in ("configs", "models", "data/imagesTs", "data/labelsTs"):
        (root / d).mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    net = ConfigParser({"network_def": spec["net"]}).get_parsed_content("network_def")
    train(net, spec, spec["iters"], seed)
    sd = net.state_dict()
    torch.save({"model": sd} if spec["ckpt"] == "dict" else sd, root / "models" / "model.pt")
    (root / "configs" / "inference.json").write_text(json.dumps(inference_json(spec), indent=2))
    (root / "configs" / "metadata.json").write_text(json.dumps(metadata(spec, mean_dice), indent=2))
    ckpt_export(net_id="network_def", filepath=str(root / "models" / "model.ts"), ckpt_file=str(root / "models" / "model.pt"),
                meta_file=str(root / "configs" / "metadata.json"), config_file=str(root / "configs" / "inference.json"),
                key_in_ckpt="model" if spec["ckpt"] == "dict" else "")
    if spec["large_files"]:
        lines = ["large_files:"]
        for rel in ("models/model.pt", "models/model.ts"):
            md5 = hashlib.md5((root / rel).read_bytes()).hexdigest()
            lines += [f'  - path: "{rel}"', f'    url: "https://example.invalid/{rel}"', f'    hash_val: "{md5}"',
                      '    hash_type: "md5"']
        (root / "large_files.yml").write_text("\n".join(lines) + "\n")
    rng, items = np.random.default_rng(seed + 1), []
    for name, shape, aff in spec["cases"]:
        img, lab = phantom(shape, aff, rng, spec["k"])
        for sub, arr, dt in (("imagesTs", img, np.int16), ("labelsTs", lab, np.uint8)):
            im = nib.Nifti1Image(np.round(arr).astype(dt), aff)
            im.set_qform(aff, code=1)
            im.set_sform(aff, code=1)
            nib.save(im, root / "data" / sub / f"{name}.nii.gz")
        items.append({"image": f"imagesTs/{name}.nii.gz", "label": f"labelsTs/{name}.nii.gz"})
    (root / "data" / "datalist.json").write_text(json.dumps({"training": [], "validation": items}, indent=2))
    return root


def run_monai_runner(root: Path, out: Path) -> list[Path]:
    """``python -m monai.bundle run --config_file configs/inference.json`` from the bundle folder
    (as the zoo's README runs it) on its data; the masks it wrote."""
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/inference.json", "--dataset_dir",
           str(root / "data"), "--output_dir", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    p = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    return sorted(out.rglob("*.nii.gz"))
