"""The recipe of ``model=bundle`` (:class:`medray.models.recipes.VolumeRecipe`): a MONAI
bundle's iteration as its runner's ``SupervisedEvaluator`` does it, with the backend's session
as the network.

* read task: the bundle's preprocessing on ``{image: <file>}``, verbatim; what its
  ``Invertd`` needs later (the image's meta and applied operations) travels as the pickled
  geometry record — each operation's transform id set to ``TraceKeys.NONE``, MONAI's own
  escape for an inversion in another process (the ids are the producer's ``id()``; both
  processes build the same Compose from the same configs, so the order matches);
* actor: ``list_data_collate`` → the bundle's inferer (a fresh ``SlidingWindowInferer`` with
  its settings, ``sliding_window.*`` overriding) around the backend → ``Decollated`` → the
  postprocessing (activations, ``Invertd`` back to the original geometry, argmax...) minus
  ``SaveImaged``; with ``sliding_window.space=model`` its ``Invertd`` is left out and masks and
  metrics are given on the network's grid;
* labels are read as they are (the original geometry); in the model space they are resampled
  onto the network's grid with nearest neighbour through the two affines.
"""

from __future__ import annotations

import pickle
import time
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from medray.errors import ConfigError
from medray.models.monai_window import MonaiRecipe, to_original
from medray.models.recipes import NetCall, describe_settings, run_once

if TYPE_CHECKING:
    from medray.specs import ModelSpec

# sliding_window.* keys that override the bundle inferer's own.
OVERRIDES = ("overlap", "mode", "sigma_scale", "space")


def neutralise(ops: Any) -> Any:
    """``applied_operations`` with every transform id set to ``TraceKeys.NONE`` (see the
    module docstring)."""
    from monai.utils import TraceKeys

    if isinstance(ops, dict):
        return {k: (TraceKeys.NONE if k == TraceKeys.ID else neutralise(v)) for k, v in ops.items()}
    if isinstance(ops, (list, tuple)):
        return type(ops)(neutralise(v) for v in ops)
    return ops


def label_map(t: Any, what: str) -> np.ndarray:
    """A postprocessed prediction as a uint8 label map (argmax of a multi-channel one)."""
    import torch

    a = t.as_tensor() if hasattr(t, "as_tensor") else torch.as_tensor(t)
    a = a.detach().cpu()
    a = (a.argmax(0) if a.shape[0] > 1 else a[0]).float()
    if a.numel() and (a.min() < 0 or a.max() > 255 or not torch.equal(a, a.round())):
        raise ConfigError(f"{what}: the bundle's postprocessing does not end in a label map (add AsDiscreted argmax)")
    return a.numpy().astype(np.uint8)


def _files(case: dict) -> list[str]:
    return [c for c in str(case.get("channels") or case["path"]).split("\n") if c]


def load_label(path: str, shape: Sequence[int], affine: np.ndarray, num_classes: int) -> np.ndarray:
    """A label file as it is (MONAI's reader: the image's array order and world), checked
    against its image's original geometry and the model's label values."""
    from monai.transforms import LoadImage

    from medray.data.volumes import VolumeError

    try:
        lab = LoadImage(image_only=True)(str(path))
    except Exception as e:
        raise VolumeError(f"{path}: cannot be read as a label ({type(e).__name__}: {str(e)[:200]})") from None
    arr = np.asarray(lab).squeeze()
    if list(arr.shape) != list(shape) or not np.allclose(np.asarray(lab.affine), affine, atol=1e-3):
        raise VolumeError(f"{path}: label shape {list(arr.shape)} / affine differ from its image's {list(shape)}")
    if arr.size and (arr.min() < 0 or arr.max() >= num_classes or not np.array_equal(arr, np.round(arr))):
        raise VolumeError(f"{path}: label values {sorted(np.unique(arr))[:8]} are not the model's 0..{num_classes - 1}")
    return arr.astype(np.uint8)


class BundleRecipe(MonaiRecipe):
    """A MONAI bundle's own transforms, inferer and inversion (see the module docstring);
    masks are written and viewed as :class:`MonaiRecipe` writes them (NIfTI, the input's affine)."""

    name = "bundle"

    def settings(self, model: ModelSpec, sliding: dict) -> dict:
        inf = model.net["inferer"]
        out = {"overlap": inf.get("overlap", 0.25), "mode": inf.get("mode", "constant"),
               "sigma_scale": inf.get("sigma_scale", 0.125), "padding_mode": inf.get("padding_mode", "constant"),
               "cval": inf.get("cval", 0.0), "space": "original"}
        out.update({k: sliding[k] for k in OVERRIDES if sliding.get(k) is not None})
        return run_once(out, sliding, "model.mirroring=true: a MONAI bundle runs its inferer's windows once (mirroring is "
                        "nnU-Net's); remove it")

    def read(self, model: ModelSpec, settings: dict, case: dict) -> dict:
        from monai.transforms import apply_transform

        from medray.data.volumes import VolumeError
        from medray.models.bundle.parse import bundle_of

        key = model.net["image_key"]
        files = _files(case)
        try:
            out = apply_transform(bundle_of(model).preprocessing, {key: files[0] if len(files) == 1 else files})
        except Exception as e:  # MONAI wraps a transform's error in a RuntimeError naming the transform
            raise VolumeError(f"{case['path']}: the bundle's preprocessing fails on it "
                              f"({type(e).__name__}: {str(e).strip().splitlines()[-1][:300]})") from None
        img = out[key]
        if getattr(img, "pending_operations", None):
            raise ConfigError(f"model.path={model.path}: the preprocessing leaves lazy operations pending; not supported")
        image = np.ascontiguousarray(img.as_tensor().detach().cpu().numpy(), dtype=np.float32)
        if image.shape[0] != model.in_chans or image.ndim != 4:
            raise VolumeError(f"{case['path']}: preprocessed to shape {list(image.shape)}; the network takes "
                              f"{model.in_chans} channel(s) of a 3-D volume")
        if not np.isfinite(image).all():
            raise VolumeError(f"{case['path']}: the volume contains NaN or infinite values after preprocessing")
        meta = dict(img.meta)
        model_affine = np.asarray(meta["affine"], dtype=np.float64)
        affine = np.asarray(meta.get("original_affine", model_affine), dtype=np.float64)
        orig_shape = [int(v) for v in np.asarray(meta.get("spatial_shape", image.shape[1:])).ravel()]
        original = settings["space"] == "original"
        label = None
        if case.get("label_path"):
            label = load_label(case["label_path"], orig_shape, affine, model.num_classes)
            if not original:  # onto the network's grid
                label = to_original(label, affine, model_affine, image.shape[1:])
        extra = {k: v for k, v in out.items() if k != key}
        geometry = {"meta": meta, "ops": list(img.applied_operations), "extra": extra, "affine": affine,
                    "model_affine": model_affine, "orig_shape": orig_shape, "original": original}
        spacing = np.linalg.norm(model_affine[:3, :3], axis=0).tolist()
        orig_spacing = np.linalg.norm(affine[:3, :3], axis=0).tolist()
        return {"image": image, "label": label, "geometry": pickle.dumps(geometry), "orig_shape": orig_shape,
                "orig_spacing": orig_spacing, "spacing": spacing, "mask_spacing": orig_spacing if original else spacing}

    def open(self, model: ModelSpec, settings: dict) -> None:
        """Parse the bundle and build its inferer and postprocessing (imports included) once."""
        self.inferer(model, settings, 1)
        self.postprocessing(model, settings)

    def inferer(self, model: ModelSpec, settings: dict, windows_per_call: int):
        """A fresh inferer of the bundle's class with its settings (``sliding_window.*`` and the
        ROI overriding), windows assembled where the volume is (the CPU)."""
        from medray.models.bundle.parse import bundle_of

        inf = bundle_of(model).inferer
        return type(inf)(roi_size=list(model.spatial), sw_batch_size=windows_per_call, overlap=settings["overlap"],
                         mode=settings["mode"], sigma_scale=settings["sigma_scale"], padding_mode=settings["padding_mode"],
                         cval=settings["cval"], sw_device=None, device=None, progress=False,
                         cpu_thresh=inf.cpu_thresh, buffer_steps=inf.buffer_steps, buffer_dim=inf.buffer_dim)

    def postprocessing(self, model: ModelSpec, settings: dict):
        """The bundle's postprocessing; without its Invertd when masks are asked in the model space."""
        from monai.transforms import Invertd

        from medray.models.bundle.parse import bundle_of, strip

        post = bundle_of(model).postprocessing
        return post if settings["space"] == "original" else strip(post, (Invertd,))[0]

    def segment(self, model: ModelSpec, settings: dict, calls: Sequence[NetCall], image: np.ndarray, geometry: bytes,
                windows_per_call: int) -> tuple[np.ndarray, dict]:
        import torch
        from monai.data import MetaTensor, list_data_collate
        from monai.transforms import Decollated, apply_transform

        if len(calls) != 1:
            raise ConfigError(f"a MONAI bundle runs one network; got {len(calls)} member sessions")
        g = pickle.loads(geometry)
        n = {"windows": 0, "calls": 0}

        def predictor(w: torch.Tensor) -> torch.Tensor:
            x = np.ascontiguousarray((w.as_tensor() if isinstance(w, MetaTensor) else w).numpy(), dtype=np.float32)
            n["windows"] += len(x)
            n["calls"] += 1
            return torch.from_numpy(calls[0](x))

        with warnings.catch_warnings():
            # Ray hands read-only arrays; the inferer only reads the input (slices + pad copy).
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            img = MetaTensor(torch.from_numpy(image), meta=g["meta"], applied_operations=neutralise(g["ops"]))
        key, pred_key = model.net["image_key"], model.net["pred_key"]
        batch = list_data_collate([{**g["extra"], key: img}])
        with torch.no_grad():
            pred = self.inferer(model, settings, windows_per_call)(batch[key], predictor)
        t0 = time.perf_counter()
        decollate = Decollated(keys=None, detach=True)  # the runner's: batch and output, then merged
        d = {**decollate(batch)[0], **decollate({key: batch[key], pred_key: pred})[0]}
        d = apply_transform(self.postprocessing(model, settings), d)
        mask = label_map(d[pred_key], f"model.path={model.path}")
        model_shape = list(image.shape[1:])
        if g["original"] and list(mask.shape) == model_shape and list(mask.shape) != list(g["orig_shape"]):
            mask = to_original(mask, g["model_affine"], g["affine"], g["orig_shape"])  # the bundle does not invert
        want = g["orig_shape"] if g["original"] else model_shape
        if list(mask.shape) != list(want):
            raise ConfigError(f"model.path={model.path}: the postprocessing gives masks of shape {list(mask.shape)}, "
                              f"neither the input's {g['orig_shape']} nor the network grid's {model_shape}")
        return mask, {"n_windows": n["windows"], "n_calls": n["calls"], "model_shape": model_shape,
                      "post_ms": (time.perf_counter() - t0) * 1e3}

    def describe(self, preprocess: dict, settings: dict) -> str:
        pp = preprocess
        post = list(pp.get("postprocessing") or [])
        if settings.get("space") != "original":
            post = [t for t in post if not t.startswith("Invertd")]
        space = ("masks and metrics in the original geometry (the bundle's Invertd; nearest-neighbour resampling "
                 "through the affines where the bundle does not invert)" if settings.get("space") == "original" else
                 "masks and metrics in the network's voxel space (the bundle's Invertd left out; labels resampled "
                 "onto that grid with nearest neighbour)")
        return (f"MONAI bundle {pp.get('bundle')} {pp.get('version') or ''}: its preprocessing run verbatim "
                f"({', '.join(pp.get('transforms') or [])}); its {pp.get('inferer')} around the backend "
                f"({describe_settings(settings)}, padding {settings.get('padding_mode')}); its postprocessing "
                f"({', '.join(post) or 'none'}; SaveImaged left out: medray writes the masks); {pp.get('amp_note', '')} "
                f"{space}.")
