"""The recipe of ``model=nnunet`` (:class:`medray.models.recipes.VolumeRecipe`): nnU-Net's
reader and preprocessor in the read task, ``nnUNetPredictor``'s sliding window with one
backend session per fold in the actor, nnU-Net's own way back to the original geometry,
and masks written by the plans' image writer."""

from __future__ import annotations

import pickle
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from medray.errors import ConfigError
from medray.models.recipes import NetCall, VolumeRecipe, describe_settings

if TYPE_CHECKING:
    from medray.specs import ModelSpec

# nnUNetPredictor's defaults: tile_step_size 0.5 (overlap 0.5), use_gaussian, use_mirroring.
DEFAULTS = {"overlap": 0.5, "mode": "gaussian", "sigma_scale": 0.125, "space": "original"}


def _channels(case: dict) -> list[str]:
    return [c for c in str(case.get("channels") or case["path"]).split("\n") if c]


def _array_spacing(props: dict) -> list[float]:
    """The original spacing per axis of the reader's array (SimpleITK: z, y, x)."""
    return [float(v) for v in props["spacing"]]


class NnUNetRecipe(VolumeRecipe):
    """nnU-Net v2 as it predicts (see the module docstring)."""

    name = "nnunet"

    def settings(self, model: ModelSpec, sliding: dict) -> dict:
        out = {k: sliding.get(k) if sliding.get(k) is not None else v for k, v in DEFAULTS.items()}
        if out["space"] != "original":
            raise ConfigError(f"sliding_window.space={out['space']!r}: an nnU-Net model's masks are given in the original "
                              "geometry only (nnU-Net's export); remove it")
        if out["mode"] not in ("gaussian", "constant"):
            raise ConfigError(f"sliding_window.mode={out['mode']!r}: use gaussian (nnU-Net's default) or constant")
        axes = model.net.get("mirror_axes")
        mirroring = sliding.get("mirroring")
        out["mirroring"] = bool(axes) if mirroring is None else bool(mirroring)
        if out["mirroring"] and not axes:
            raise ConfigError("model.mirroring=true: the checkpoints allow no mirroring axes "
                              "(inference_allowed_mirroring_axes is empty); use model.mirroring=false")
        out["mirror_axes"] = list(axes) if out["mirroring"] else []
        out["tile_step"] = 1.0 - float(out["overlap"])
        if not 0 < out["tile_step"] <= 1:
            raise ConfigError(f"sliding_window.overlap={out['overlap']}: nnU-Net's tile step is 1 - overlap, in (0, 1]")
        return out

    def read(self, model: ModelSpec, settings: dict, case: dict) -> dict:
        from medray.data.msd import VolumeError
        from medray.models.nnunet.folder import managers
        from medray.models.nnunet.inference import preprocess

        files = _channels(case)
        folder, cfg = model.path, model.net["configuration"]
        if len(files) != model.in_chans:
            raise VolumeError(f"{case['path']}: the model takes {model.in_chans} channel files, the case has {len(files)}")
        try:
            image, props = preprocess(folder, cfg, files)
            label = None
            if case.get("label_path"):
                pm = managers(folder, cfg)[0]
                seg, _ = pm.image_reader_writer_class().read_seg(str(case["label_path"]))
                label = np.ascontiguousarray(seg[0], dtype=np.uint8)
        except VolumeError:
            raise
        except Exception as e:  # nnU-Net's readers raise many types (SimpleITK, nibabel, asserts)
            raise VolumeError(f"{case['path']}: nnU-Net cannot read or preprocess the case "
                              f"({type(e).__name__}: {str(e).strip()[:300]})") from None
        if not np.isfinite(image).all():
            raise VolumeError(f"{case['path']}: the volume contains NaN or infinite values after preprocessing")
        shape = list(props["shape_before_cropping"])
        original = [shape[i] for i in managers(folder, cfg)[0].transpose_backward]  # the reader's array order
        if label is not None and list(label.shape) != original:
            raise VolumeError(f"{case['label_path']}: label shape {list(label.shape)} does not match its image's {original}")
        cm = managers(folder, cfg)[1]
        return {"image": image, "label": label, "geometry": pickle.dumps(props),
                "orig_shape": original[::-1], "orig_spacing": _array_spacing(props)[::-1],
                "spacing": [float(v) for v in cm.spacing][::-1], "mask_spacing": _array_spacing(props)}

    def segment(self, model: ModelSpec, settings: dict, calls: Sequence[NetCall], image: np.ndarray, geometry: bytes,
                windows_per_call: int) -> tuple[np.ndarray, dict]:
        from medray.models.nnunet.inference import Window, mirror_combinations, predict_logits, slicers, to_segmentation

        if len(calls) != len(model.members or [0]):
            raise ConfigError(f"model=nnunet: {len(model.members)} folds but {len(calls)} sessions")
        n = {"calls": 0}

        def counted(call):
            def f(x):
                n["calls"] += 1
                return call(x)
            return f

        win = Window(tuple(model.spatial), model.num_classes, tuple(settings["mirror_axes"]), settings["tile_step"],
                     settings["mode"] == "gaussian", windows_per_call, settings["sigma_scale"])
        logits = predict_logits(image, [counted(c) for c in calls], win)
        t0 = time.perf_counter()
        mask = to_segmentation(model.path, model.net["configuration"], logits, pickle.loads(geometry))
        del logits
        windows = len(slicers(np.maximum(image.shape[1:], model.spatial), model.spatial, settings["tile_step"]))
        return mask, {"n_windows": windows * len(mirror_combinations(settings["mirror_axes"])) * len(calls),
                      "n_calls": n["calls"], "model_shape": list(image.shape[1:]),
                      "post_ms": (time.perf_counter() - t0) * 1e3}

    def windows(self, model: ModelSpec, image: np.ndarray) -> list[tuple[Any, np.ndarray]]:
        """Patches as nnU-Net preprocesses them, padded and tiled as its sliding window tiles
        (tile step 1: no overlap)."""
        from medray.models.nnunet.inference import patches

        return list(enumerate(patches(image, model.spatial)))

    def write_mask(self, model: ModelSpec, mask: np.ndarray, geometry: bytes, path: str) -> None:
        from medray.models.nnunet.folder import managers

        pm = managers(model.path, model.net["configuration"])[0]
        pm.image_reader_writer_class().write_seg(np.asarray(mask), str(path), pickle.loads(geometry))

    def view(self, model: ModelSpec, settings: dict, case: dict) -> tuple[np.ndarray, np.ndarray | None, tuple]:
        from medray.models.nnunet.folder import managers

        pm = managers(model.path, model.net["configuration"])[0]
        rw = pm.image_reader_writer_class()
        image, _ = rw.read_images([_channels(case)[0]])
        label = rw.read_seg(str(case["label_path"]))[0][0] if case.get("label_path") else None
        axes = tuple(range(image.ndim - 2, -1, -1))  # the reader's (z, y, x) -> (x, y, z)
        return image[0], label, axes

    def describe(self, preprocess: dict, settings: dict) -> str:
        pp = preprocess
        return (f"nnU-Net {pp.get('configuration')} ({pp.get('plans')}, trainer {pp.get('trainer')}, folds "
                f"{', '.join(map(str, pp.get('folds') or []))}): nnU-Net's own preprocessing (crop to non-zero, transpose "
                f"{pp.get('transpose')}, resampling to {pp.get('spacing')} mm, normalisation {pp.get('normalization')}), "
                f"patch {pp.get('patch_size')}, tile step {1 - float(settings.get('overlap', 0.5)):g}, "
                f"{describe_settings(settings)} (axes {settings.get('mirror_axes')}), folds averaged as nnU-Net does; "
                "masks and metrics in the original geometry (nnU-Net's export: resampling, argmax / regions, crop and "
                "transpose reverted).")
