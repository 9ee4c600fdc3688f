"""How a 3-D segmentation model is run, as it ships: its recipe.

A 3-D model is more than its network: how a case is read and preprocessed, what runs
around the network calls (sliding window, blending, mirroring, an ensemble of folds) and
how the prediction goes back to the original image's geometry are part of its contract.
The segmentation task (:mod:`medray.tasks.segmentation`) asks the model's recipe
(``ModelSpec.recipe``, a key of :data:`RECIPES`) for each of them and owns the rest
(Dice and the other metrics, the document, the report, the outputs):

* read task — :meth:`VolumeRecipe.read`: one case → the network's input volume, the label
  in the geometry masks are given in, and the small ``geometry`` record the recipe needs
  to go back (pickled bytes);
* actor — :meth:`VolumeRecipe.segment`: the windows around the backend's calls (one call
  per member network: nnU-Net's folds) → the label map in the original geometry;
* driver — :meth:`VolumeRecipe.calibration` (INT8 inputs as the network sees them),
  :meth:`VolumeRecipe.write_mask` (a file of the input's format with its geometry),
  :meth:`VolumeRecipe.view` (plots) and :meth:`VolumeRecipe.describe` (report).

A recipe never sees a backend: it gets plain callables ``x (N, C, *roi) -> logits``,
so it lives with the model sources (the layers below the backends).  Adding a way models
ship (MONAI bundles, ...) = a recipe class and one row here.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from medray.errors import ConfigError, registry_row

if TYPE_CHECKING:
    import pandas as pd

    from medray.data.calibration import CalibrationSet
    from medray.specs import ModelSpec

NetCall = Callable[[np.ndarray], np.ndarray]

RECIPES: dict[str, str] = {
    "monai": "medray.models.monai_window:MonaiRecipe",
    "nnunet": "medray.models.nnunet.recipe:NnUNetRecipe",
    "bundle": "medray.models.bundle.recipe:BundleRecipe",
}
# Where masks and 3-D metrics are given: the input file's own voxel grid (shape and
# affine), or the grid the network saw (reoriented / resampled).
SPACES = ("original", "model")


def recipe_of(model: ModelSpec) -> VolumeRecipe:
    """The recipe object of a 3-D model spec (MONAI's sliding window by default)."""
    return recipe_class(model.recipe)()


def recipe_class(name: str | None) -> type[VolumeRecipe]:
    """The recipe class registered as ``name`` (None: ``monai``)."""
    module, _, attr = registry_row(RECIPES, name or "monai", "model recipe").partition(":")
    return getattr(importlib.import_module(module), attr)


class VolumeRecipe(ABC):
    """What a 3-D segmentation model does around its network (see the module docstring)."""

    name: ClassVar[str]
    # The file name ending of written masks (the input's format).
    mask_suffix: ClassVar[str] = ".nii.gz"

    @abstractmethod
    def settings(self, model: ModelSpec, sliding: dict) -> dict:
        """The window settings the model runs with: ``sliding`` (sliding_window.* and
        model.mirroring, null = the model's own) resolved — ``overlap``, ``mode``,
        ``sigma_scale``, ``mirroring``, ``space``; ConfigError for what it cannot honour."""

    @abstractmethod
    def read(self, model: ModelSpec, settings: dict, case: dict) -> dict:
        """Read task: ``case`` (``sample_id``, ``path``, ``channels``: every channel's
        file, ``label_path`` or "") → ``image`` float32 ``(C, *shape)`` (the network's
        space), ``label`` (uint8 label map in the masks' geometry, or None), ``geometry``
        (pickled bytes for :meth:`segment` and :meth:`write_mask`), ``orig_shape`` (file
        voxel order x, y, z), ``orig_spacing`` (mm, per axis of the mask array) and
        ``spacing`` (mm, the network's grid).  Raises VolumeError naming the file."""

    @abstractmethod
    def segment(self, model: ModelSpec, settings: dict, calls: Sequence[NetCall], image: np.ndarray, geometry: bytes,
                windows_per_call: int) -> tuple[np.ndarray, dict]:
        """Actor: the label map (the masks' geometry) and ``n_windows``, ``n_calls``,
        ``model_shape``, ``post_ms`` (the way back: resampling, argmax...)."""

    @abstractmethod
    def windows(self, model: ModelSpec, image: np.ndarray) -> list[tuple[Any, np.ndarray]]:
        """Calibration: ``image`` (the network's input volume) cut into ROI windows as the
        model's sliding window tiles it (no overlap), each with where it was cut."""

    def calibration(self, model: ModelSpec, settings: dict, samples: pd.DataFrame, max_windows: int,
                    seed: int) -> CalibrationSet:
        """INT8 calibration inputs: windows of the calibration cases, read as the evaluated
        ones, at most ``max_windows`` drawn with ``seed``.  A case that cannot be read fails:
        a calibration set silently missing cases is not the one its cache key names."""
        from medray.data.calibration import CalibrationError, CalibrationSet
        from medray.data.volumes import VolumeError

        windows, ids = [], []
        for row in samples.to_dict("records"):
            try:
                image = self.read(model, settings, {**row, "label_path": ""})["image"]
            except VolumeError as e:
                raise CalibrationError(f"calibration case {row['sample_id']} cannot be read: {e}") from e
            for where, w in self.windows(model, image):
                windows.append(w)
                ids.append(f"{row['sample_id']}@{where}")
        windows, ids = draw(windows, ids, max_windows, seed)
        return CalibrationSet(np.ascontiguousarray(np.stack(windows), dtype=np.float32), ids)

    @abstractmethod
    def write_mask(self, model: ModelSpec, mask: np.ndarray, geometry: bytes, path: str) -> None:
        """A mask as a file of the input's format with its geometry (``path`` ends with
        :attr:`mask_suffix`)."""

    def open(self, model: ModelSpec, settings: dict) -> None:
        """Actor: one-time set-up before the first case (none by default)."""
        return None

    def view(self, model: ModelSpec, settings: dict, case: dict) -> tuple[np.ndarray, np.ndarray | None, tuple]:
        """Plots: the case's first channel and label in the masks' geometry, and the axis
        order that makes them (x, y, z)."""
        out = self.read(model, settings, case)
        return out["image"][0], out["label"], (0, 1, 2)

    def describe(self, preprocess: dict, settings: dict) -> str:
        """report.md's line on the preprocessing and the windows."""
        return f"preprocessing {preprocess}; windows {settings}"


def run_once(out: dict, sliding: dict, refusal: str) -> dict:
    """The settings ``out`` of a model whose windows run once: ``space`` checked, and
    model.mirroring=true refused with ``refusal``."""
    if out["space"] not in SPACES:
        raise ConfigError(f"sliding_window.space={out['space']!r}: use one of {', '.join(SPACES)}")
    if sliding.get("mirroring"):
        raise ConfigError(refusal)
    out["mirroring"] = None
    return out


def draw(items: list, ids: list[str], max_n: int, seed: int) -> tuple[list, list[str]]:
    """At most ``max_n`` of ``items`` drawn with ``seed``, in their order."""
    order = np.sort(np.random.default_rng(seed).permutation(len(items))[:max_n])
    return [items[i] for i in order], [ids[i] for i in order]


def describe_settings(settings: dict[str, Any]) -> str:
    """``overlap 0.5, gaussian blending, mirroring on`` for the report."""
    parts = [f"overlap {settings.get('overlap')}", f"{settings.get('mode')} blending"]
    if settings.get("mirroring") is not None:
        parts.append(f"mirroring {'on' if settings['mirroring'] else 'off'}")
    return ", ".join(parts)
