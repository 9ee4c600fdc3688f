"""One case through an nnU-Net model, as ``nnUNetPredictor`` runs it, the network calls
replaced by the backend's.

* :func:`preprocess` — nnU-Net's preprocessor (transpose, crop to non-zero, normalisation
  with the fingerprint's intensity properties, resampling to the configuration's spacing);
* :func:`predict_logits` — ``predict_logits_from_preprocessed_data`` op for op: padding,
  tile steps, the Gaussian, mirroring over the model's axes (every mirrored window is its
  own entry of a backend batch), float16 accumulation, then the folds averaged in float16;
* :func:`to_segmentation` — ``convert_predicted_logits_to_segmentation_with_correct_shape``
  with the resampling run one channel at a time (nnU-Net resamples each channel on its
  own: the same values, a fraction of the peak memory).

A net call is ``f(x: float32 (N, C, *patch)) -> float32 (N, K, *patch)``; one per fold.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

NetCall = Callable[[np.ndarray], np.ndarray]


def preprocess(folder: str, configuration: str, files: Sequence[str]) -> tuple[np.ndarray, dict]:
    """nnU-Net's preprocessing of one case (one file per channel, ``_0000`` first):
    float32 ``(C, *shape)`` and nnU-Net's ``properties`` (small, picklable)."""
    from medray.models.nnunet.folder import managers

    pm, cm, _, dj = managers(folder, configuration)
    pp = cm.preprocessor_class(verbose=False)
    data, _, props = pp.run_case([str(f) for f in files], None, pm, cm, dj)
    return np.ascontiguousarray(data, dtype=np.float32), props


def slicers(image_size: Sequence[int], patch: Sequence[int], step: float) -> list[tuple]:
    """The windows: ``nnUNetPredictor._internal_get_sliding_window_slicers``."""
    from nnunetv2.inference.sliding_window_prediction import compute_steps_for_sliding_window

    patch = tuple(patch)
    if len(patch) < len(image_size):  # a 2D configuration on 3D data: slice by slice
        steps = compute_steps_for_sliding_window(image_size[1:], patch, step)
        return [(slice(None), d, *[slice(s, s + p) for s, p in zip(st, patch)])
                for d in range(image_size[0]) for st in itertools.product(*steps)]
    steps = compute_steps_for_sliding_window(image_size, patch, step)
    return [(slice(None), *[slice(s, s + p) for s, p in zip(st, patch)]) for st in itertools.product(*steps)]


def mirror_combinations(axes: Sequence[int] | None) -> list[tuple[int, ...]]:
    """``[(), (2,), (3,), ...]``: flips of the ``(N, C, *patch)`` input, in nnU-Net's order."""
    if not axes:
        return [()]
    axes = [a + 2 for a in axes]
    return [()] + [c for i in range(len(axes)) for c in itertools.combinations(axes, i + 1)]


def _flip(x: np.ndarray, dims: tuple[int, ...]) -> np.ndarray:
    return np.flip(x, tuple(a - 1 for a in dims)) if dims else x


@dataclass(frozen=True)
class Window:
    """How the sliding window runs: the plan's patch, the heads (classes or regions) of the
    logits, the mirroring axes (none = off), the tile step, Gaussian weighting, the windows
    (mirrored copies included) per network call."""

    patch: tuple[int, ...]
    heads: int
    mirror_axes: tuple[int, ...] = ()
    step: float = 0.5
    gaussian: bool = True
    windows_per_call: int = 1
    sigma_scale: float = 1.0 / 8


def sliding_window(data, call: NetCall, win: Window):
    """One fold's logits ``(K, *data.shape[1:])`` float16 (``data``: a float32 tensor)."""
    import torch
    from acvl_utils.cropping_and_padding.padding import pad_nd_image
    from nnunetv2.inference.sliding_window_prediction import compute_gaussian

    patch, heads, combos = tuple(int(p) for p in win.patch), win.heads, mirror_combinations(win.mirror_axes)
    padded, revert = pad_nd_image(data, patch, "constant", {"value": 0}, True, None)
    windows = slicers(padded.shape[1:], patch, win.step)
    # nnU-Net accumulates in float16 on every device (predicted_logits / n_predictions).
    logits = torch.zeros((heads, *padded.shape[1:]), dtype=torch.half)
    n_pred = torch.zeros(padded.shape[1:], dtype=torch.half)
    gaussian = win.gaussian
    weight = compute_gaussian(patch, sigma_scale=win.sigma_scale, value_scaling_factor=10,
                              device=torch.device("cpu")) if gaussian else 1
    jobs = [(w, c) for w in range(len(windows)) for c in combos]  # a mirrored window is its own batch entry
    pending: dict[int, list] = {}
    arr = padded.numpy()
    per_call = max(1, int(win.windows_per_call))
    for b in range(0, len(jobs), per_call):
        batch = jobs[b:b + per_call]
        x = np.ascontiguousarray(np.stack([_flip(arr[windows[w]], c) for w, c in batch]), dtype=np.float32)
        y = call(x)
        if y.shape[0] != len(batch) or y.shape[1] != heads:
            raise RuntimeError(f"the network returned {tuple(y.shape)} for {tuple(x.shape)}; expected ({len(batch)}, {heads}, ...)")
        for (w, _), yi in zip(batch, y):
            pending.setdefault(w, []).append(torch.from_numpy(np.ascontiguousarray(yi, dtype=np.float32)))
            if len(pending[w]) < len(combos):
                continue
            outs = pending.pop(w)
            # _internal_maybe_mirror_and_predict: the plain output, += each flipped back, /= n
            pred = outs[0].clone()
            for dims, o in zip(combos[1:], outs[1:]):
                pred += torch.flip(o, [a - 1 for a in dims])
            if len(combos) > 1:
                pred /= len(combos)
            if gaussian:
                pred *= weight
            sl = windows[w]
            logits[sl] += pred
            n_pred[sl[1:]] += weight
    torch.div(logits, n_pred, out=logits)
    if torch.any(torch.isinf(logits)):
        raise RuntimeError("infinite float16 logits (nnU-Net's own failure mode): the network's outputs are too large")
    return logits[(slice(None), *revert[1:])]


def predict_logits(data: np.ndarray, calls: Sequence[NetCall], win: Window) -> np.ndarray:
    """Logits ``(K, *data.shape[1:])`` float16, as ``predict_logits_from_preprocessed_data``:
    one sliding window per fold (``calls``), the folds' float16 logits summed and averaged."""
    import torch

    t = torch.from_numpy(np.array(data, dtype=np.float32, copy=True))  # Ray hands read-only arrays
    pred = None
    for call in calls:  # the loop over list_of_parameters
        lf = sliding_window(t, call, win)
        pred = lf if pred is None else pred.add_(lf)
        del lf
    if len(calls) > 1:
        pred /= len(calls)
    return pred.numpy()


def to_segmentation(folder: str, configuration: str, logits: np.ndarray, props: dict, slab: int = 8) -> np.ndarray:
    """Logits → the label map in the reader's array order of the original image:
    ``convert_predicted_logits_to_segmentation_with_correct_shape`` (resample to the shape
    before resampling, argmax or the regions, crop and transpose reverted) with bounded
    memory: nnU-Net resamples each channel on its own and its argmax / region thresholds are
    per voxel, so it is done one channel (:func:`resample_channel`) and one slab of ``slab``
    slices at a time, into a float16 volume — the same values, without the float64 copies
    and coordinate maps of every channel at once (a 512×512×300 CT with 4 labels: about
    10 GB at nnU-Net's peak)."""
    import torch
    from acvl_utils.cropping_and_padding.bounding_boxes import insert_crop_into_image

    from medray.models.nnunet.folder import managers

    pm, cm, lm, _ = managers(folder, configuration)
    before = tuple(int(v) for v in props["shape_after_cropping_and_before_resampling"])
    spacing_t = [props["spacing"][i] for i in pm.transpose_forward]
    current = cm.spacing if len(cm.spacing) == len(before) else [spacing_t[0], *cm.spacing]
    if tuple(logits.shape[1:]) == before:  # nnU-Net's resampling returns its input then
        resampled = logits
    else:
        resampled = np.zeros((logits.shape[0], *before), dtype=logits.dtype)
        for c in range(logits.shape[0]):
            resample_channel(cm, logits[c], before, current, spacing_t, resampled[c])
    dtype = np.uint8 if len(lm.foreground_labels) < 255 else np.uint16
    seg = np.zeros(before, dtype=dtype)
    for a in range(0, before[0], slab):
        part = lm.convert_logits_to_segmentation(resampled[:, a:a + slab])
        seg[a:a + slab] = part.cpu().numpy() if isinstance(part, torch.Tensor) else part
    del resampled
    full = np.zeros(props["shape_before_cropping"], dtype=dtype)
    full = insert_crop_into_image(full, seg, props["bbox_used_for_cropping"])
    if isinstance(full, torch.Tensor):
        full = full.cpu().numpy()
    return np.ascontiguousarray(full.transpose(pm.transpose_backward))


def resample_channel(cm, x: np.ndarray, new_shape: tuple, current, target, out: np.ndarray) -> None:
    """One channel of ``cm.resampling_fn_probabilities`` into ``out``.  nnU-Net's default
    (``resample_data_or_seg_to_shape``, order_z 0) on anisotropic data resizes each slice in
    plane, then picks the nearest slice along the low-resolution axis through a float64
    coordinate map of the whole volume; here the slices are resized as it resizes them and
    each output slice takes the one its ``map_coordinates`` rounding picks — the same
    values, one slice in memory.  Any other resampling: nnU-Net's function on the channel."""
    from nnunetv2.configuration import ANISO_THRESHOLD
    from nnunetv2.preprocessing.resampling.default_resampling import determine_do_sep_z_and_axis
    from scipy.ndimage import map_coordinates
    from skimage.transform import resize

    kw = dict(cm.configuration.get("resampling_fn_probabilities_kwargs") or {})
    default = cm.configuration.get("resampling_fn_probabilities") == "resample_data_or_seg_to_shape"
    axis = None
    if default and not kw.get("is_seg", False) and kw.get("order_z", 0) == 0:
        sep, axis = determine_do_sep_z_and_axis(kw.get("force_separate_z", False), current, target,
                                                kw.get("separate_z_anisotropy_threshold", ANISO_THRESHOLD))
        axis = axis if sep else None
    if axis is None or x.ndim != 3:
        out[...] = cm.resampling_fn_probabilities(x[None], new_shape, current, target)[0]
        return
    plane = [int(n) for i, n in enumerate(new_shape) if i != axis]
    n_old, n_new = x.shape[axis], int(new_shape[axis])
    if n_old == n_new:
        pick = np.arange(n_new)
    else:  # nnU-Net's coordinates along the axis (align_corners=False) and its order-0 rounding
        coords = float(n_old) / n_new * (np.arange(n_new) + 0.5) - 0.5
        pick = map_coordinates(np.arange(n_old, dtype=np.float64), coords[None], order=0, mode="nearest").astype(int)
    done: dict[int, np.ndarray] = {}
    for j, i in enumerate(pick):
        if i not in done:
            done = {i: resize(np.take(x, i, axis=axis).astype(float), plane, kw.get("order", 3), mode="edge",
                              anti_aliasing=False)}
        idx = [slice(None)] * 3
        idx[axis] = j
        out[tuple(idx)] = done[i]


def patches(data: np.ndarray, patch: Sequence[int], step: float = 1.0) -> list[np.ndarray]:
    """The windows of a preprocessed case, padded as the sliding window pads it (tile
    step 1: no overlap) — INT8 calibration inputs as the network sees them."""
    import torch
    from acvl_utils.cropping_and_padding.padding import pad_nd_image

    padded, _ = pad_nd_image(torch.from_numpy(np.asarray(data, dtype=np.float32)), tuple(patch), "constant",
                             {"value": 0}, True, None)
    arr = padded.numpy()
    return [np.ascontiguousarray(arr[s]) for s in slicers(arr.shape[1:], patch, step)]
