"""nnU-Net v2 models as ``nnUNetv2_train`` writes them (``model=nnunet model.path=<folder>``).

What nnunetv2 owns is taken from nnunetv2 (imported lazily, ``pip install -e ".[nnunet]"``):
the plans and dataset json, the image reader/writer the plans name, the preprocessor, the
network the trainer builds, padding, tile steps, the Gaussian, and the conversion of logits
back to the original geometry.  medray re-implements only the sliding-window loop, op for
op as ``nnUNetPredictor`` runs it (float16 accumulation, mirroring, fold average), so that
each window batch is a call of the backend's session of that fold's network.

* :mod:`.folder` — the trained model folder: folds, checkpoints, plans, the fold networks;
* :mod:`.inference` — preprocessing, the sliding window, the way back to the original geometry;
* :mod:`.recipe` — the segmentation task's recipe (:class:`medray.models.recipes.VolumeRecipe`);
* :mod:`.resolve` — config + dataset → the :class:`~medray.specs.ModelSpec` (one member per fold).
"""

from __future__ import annotations

from medray.errors import ConfigError

# The nnunetv2 minor medray is built and tested against (pyproject's `nnunet` extra).
NNUNET_VERSION = "2.8"
INSTALL = 'pip install -e ".[nnunet]"'


def require_nnunet() -> None:
    """ConfigError naming the install when nnunetv2 is missing (before Ray starts)."""
    try:
        import nnunetv2  # noqa: F401
    except ImportError:
        raise ConfigError(f"model=nnunet needs nnunetv2 {NNUNET_VERSION}.x: {INSTALL}") from None
