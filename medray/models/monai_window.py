"""The recipe of medray's MONAI 3-D models (``model.arch=monai_unet``, the demo UNet): cases
read and preprocessed with MONAI's transforms (:func:`medray.data.msd.load_case`:
reorientation, resampling, CT window or z-score), MONAI's ``sliding_window_inference``
around the backend's calls, the argmax mask, and — ``sliding_window.space=original``, the
default — that mask taken back to the input file's voxel grid by nearest-neighbour
resampling through the two affines (the inverse of the reorientation and resampling;
exact where only the orientation changed)."""

from __future__ import annotations

import pickle
import time
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from medray.errors import ConfigError
from medray.models.recipes import NetCall, VolumeRecipe, describe_settings, run_once

if TYPE_CHECKING:
    from medray.specs import ModelSpec

DEFAULTS = {"overlap": 0.25, "mode": "constant", "sigma_scale": 0.125, "space": "original"}


def to_original(mask: np.ndarray, model_affine: np.ndarray, affine: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """A label map on the network's grid (``model_affine``) on the file's grid (``affine``,
    ``shape``): each file voxel takes the label of the nearest network voxel at the same
    world position (0 outside)."""
    from scipy.ndimage import affine_transform

    m = np.linalg.inv(model_affine) @ affine  # file voxel index -> network voxel index
    if tuple(mask.shape) == tuple(shape) and np.allclose(m, np.eye(4), atol=1e-6):
        return mask
    return affine_transform(mask, m[:3, :3], offset=m[:3, 3], output_shape=tuple(int(v) for v in shape), order=0,
                            mode="constant", cval=0, prefilter=False).astype(mask.dtype, copy=False)


def tiles(image: np.ndarray, roi: Sequence[int]):
    """``("z,y,x", window)`` of ``image`` ``(C, *shape)`` tiled by ``roi`` without overlap (the
    volume zero-padded up to the ROI first, as the sliding window pads it)."""
    pad = [(0, 0)] + [(0, max(0, r - s)) for s, r in zip(image.shape[1:], roi)]
    image = np.pad(image, pad) if any(p[1] for p in pad) else image
    starts = [range(0, max(1, s - r + 1), r) for s, r in zip(image.shape[1:], roi)]
    for z in starts[0]:
        for y in starts[1]:
            for x in starts[2]:
                yield f"{z},{y},{x}", image[:, z:z + roi[0], y:y + roi[1], x:x + roi[2]]


class MonaiRecipe(VolumeRecipe):
    """MONAI transforms + ``sliding_window_inference`` (see the module docstring)."""

    name = "monai"

    def settings(self, model: ModelSpec, sliding: dict) -> dict:
        out = {k: sliding.get(k) if sliding.get(k) is not None else v for k, v in DEFAULTS.items()}
        return run_once(out, sliding, "model.mirroring=true: mirroring test-time augmentation is nnU-Net's (model=nnunet); "
                        "a MONAI model runs its windows once: remove it")

    def read(self, model: ModelSpec, settings: dict, case: dict) -> dict:
        from medray.data.msd import VolumeError, load_case

        channels = [c for c in str(case.get("channels") or case["path"]).split("\n") if c]
        if len(channels) != 1:
            raise VolumeError(f"{case['path']}: a MONAI model reads one file per case (channels last in a 4D "
                              f"NIfTI); this case has {len(channels)} channel files")
        c = load_case(channels[0], case.get("label_path") or None, model.preprocess, model.num_classes)
        original = settings["space"] == "original"
        geometry = {"affine": c["affine"], "model_affine": c["model_affine"], "orig_shape": c["orig_shape"],
                    "original": original}
        return {"image": c["image"], "label": c["label_original"] if original else c["label"],
                "geometry": pickle.dumps(geometry), "orig_shape": c["orig_shape"], "orig_spacing": c["orig_spacing"],
                "spacing": c["spacing"], "mask_spacing": c["orig_spacing"] if original else c["spacing"]}

    def segment(self, model: ModelSpec, settings: dict, calls: Sequence[NetCall], image: np.ndarray, geometry: bytes,
                windows_per_call: int) -> tuple[np.ndarray, dict]:
        import torch
        from monai.inferers import sliding_window_inference

        if len(calls) != 1:
            raise ConfigError(f"a MONAI model is one network; got {len(calls)} member sessions")
        n = {"windows": 0, "calls": 0}

        def run_windows(w: torch.Tensor) -> torch.Tensor:
            x = np.ascontiguousarray(w.numpy())  # torch.cat made it contiguous: no copy
            n["windows"] += len(x)
            n["calls"] += 1
            return torch.from_numpy(calls[0](x))

        with warnings.catch_warnings():
            # Ray hands read-only arrays; MONAI only reads the input (slices + pad copy).
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            t = torch.from_numpy(image)[None]
        with torch.inference_mode():
            logits = sliding_window_inference(t, roi_size=list(model.spatial), sw_batch_size=windows_per_call,
                                              predictor=run_windows, overlap=settings["overlap"], mode=settings["mode"],
                                              sigma_scale=settings["sigma_scale"])
            mask = logits[0].argmax(0).to(torch.uint8).numpy()
        t0 = time.perf_counter()
        g = pickle.loads(geometry)
        if g["original"]:
            mask = to_original(mask, g["model_affine"], g["affine"], g["orig_shape"])
        return mask, {"n_windows": n["windows"], "n_calls": n["calls"], "model_shape": list(image.shape[1:]),
                      "post_ms": (time.perf_counter() - t0) * 1e3}

    def windows(self, model: ModelSpec, image: np.ndarray) -> list[tuple[Any, np.ndarray]]:
        return list(tiles(image, tuple(model.spatial)))

    def write_mask(self, model: ModelSpec, mask: np.ndarray, geometry: bytes, path: str) -> None:
        import nibabel as nib

        g = pickle.loads(geometry)
        img = nib.Nifti1Image(np.asarray(mask, dtype=np.uint8), g["affine"] if g["original"] else g["model_affine"])
        img.set_qform(img.affine, code=1)
        img.set_sform(img.affine, code=1)
        nib.save(img, path)

    def view(self, model: ModelSpec, settings: dict, case: dict) -> tuple[np.ndarray, np.ndarray | None, tuple]:
        out = self.read(model, settings, case)
        if settings["space"] != "original":
            return out["image"][0], out["label"], (0, 1, 2)
        import nibabel as nib

        img = np.asarray(nib.load(str(case["path"]).split("\n")[0]).dataobj, dtype=np.float32)
        return (img if img.ndim == 3 else img[..., 0]), out["label"], (0, 1, 2)

    def describe(self, preprocess: dict, settings: dict) -> str:
        pp = preprocess
        norm = {"window": f"CT window [{pp.get('a_min')}, {pp.get('a_max')}] → [{pp.get('b_min')}, {pp.get('b_max')}]",
                "zscore": "z-score over non-zero voxels per channel", "none": "none"}.get(pp.get("intensity"), "?")
        space = ("masks and metrics in the original geometry (the network's mask resampled back to the input file's "
                 "voxel grid, nearest neighbour)" if settings.get("space") == "original"
                 else "masks and metrics in the model's voxel space (labels reoriented / resampled with nearest neighbour)")
        return (f"Preprocessing (MONAI): orientation {pp.get('orientation') or 'as stored'}, spacing "
                f"{pp.get('spacing') or 'as stored'}, intensity {norm}. MONAI sliding window: "
                f"{describe_settings(settings)}; {space}.")
