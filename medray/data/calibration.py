"""INT8 calibration inputs, shared by ONNX Runtime's static quantization, NNCF and
TensorRT's Q/DQ graphs.

The samples are chosen by :func:`medray.data.load.calibration_samples` (disjoint from
the evaluated ones); the task turns them into model inputs exactly as it preprocesses the
evaluated samples (images: ``decode_gray`` → ``to_model_input``, :func:`load_calibration`;
volumes: ROI windows, :func:`medray.tasks.segmentation.read.calibration_windows`).  A backend
gets a :class:`CalibrationSource`: the ids that enter its artifact's cache key, and the
inputs, loaded only when the artifact is not cached.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd

log = logging.getLogger("medray.data")


class CalibrationError(ValueError):
    """No usable calibration samples (missing context, empty split, undecodable files)."""


@dataclass
class CalibrationSet:
    """Preprocessed float32 calibration inputs ``(N, C, H, W)`` and their sample ids."""

    inputs: np.ndarray
    sample_ids: list[str]

    def __len__(self) -> int:
        return len(self.sample_ids)

    def batches(self, batch_size: int) -> Iterator[np.ndarray]:
        """Consecutive batches (the last one may be smaller), C-contiguous float32."""
        for i in range(0, len(self.inputs), batch_size):
            yield np.ascontiguousarray(self.inputs[i : i + batch_size])


@dataclass
class CalibrationSource:
    """The calibration samples of a run and how its task makes model inputs of them."""

    samples: pd.DataFrame
    loader: Callable[[pd.DataFrame], CalibrationSet]

    def ids(self) -> dict:
        return calibration_ids(self.samples)

    def load(self) -> CalibrationSet:
        if self.samples is None or len(self.samples) == 0:
            raise CalibrationError(
                "precision=int8 needs calibration samples (calibration.split / calibration.num_samples); none were given"
            )
        return self.loader(self.samples)


def calibration_source(context: dict, what: str) -> CalibrationSource:
    """``context["calibration"]`` of a backend's ``prepare``, or a CalibrationError naming ``what``."""
    src = context.get("calibration")
    if src is None:
        raise CalibrationError(
            f"{what}: precision=int8 needs calibration samples (calibration.split / calibration.num_samples); none were given"
        )
    return src


def calibration_ids(samples: pd.DataFrame) -> dict:
    """What an artifact built from ``samples`` depends on: the sorted ids and their hash.

    The hash (not the ids) goes into cache keys so that 300 ids do not bloat meta.json;
    the count is kept readable.
    """
    ids = sorted(map(str, samples["sample_id"]))
    digest = hashlib.sha256("\n".join(ids).encode()).hexdigest()
    splits = sorted(map(str, set(samples["split"]))) if "split" in samples else []
    return {"n": len(ids), "splits": splits, "ids_sha256": digest}


def load_calibration(samples: pd.DataFrame | None, prep, in_chans: int) -> CalibrationSet:
    """Decode and preprocess ``samples`` (columns ``sample_id``, ``path``) exactly as the
    evaluated images are (``prep``: the resolved preprocessing, an int = the medray preset).

    Raises :class:`CalibrationError` when there are none (int8 needs a calibration
    split) and when a file cannot be decoded: a calibration set silently missing
    samples would be a different calibration than the one the cache key says.
    """
    from medray.data.preprocess import decode_image, medray_preset, to_model_input
    from medray.errors import DecodeError

    if samples is None or len(samples) == 0:
        raise CalibrationError(
            "precision=int8 needs calibration samples (calibration.split / calibration.num_samples); none were given"
        )
    if isinstance(prep, int):
        prep = medray_preset(prep)
    samples = samples.sort_values("sample_id")
    images = []
    for sid, path in zip(samples["sample_id"], samples["path"]):
        try:
            images.append(decode_image(str(path), prep))
        except (DecodeError, FileNotFoundError) as e:
            raise CalibrationError(f"calibration sample {sid} ({path}) cannot be decoded: {e}") from e
    log.info("calibration: %d samples preprocessed at %s px", len(samples), "x".join(map(str, prep["size"])))
    return CalibrationSet(to_model_input(np.stack(images), in_chans, prep), [str(s) for s in samples["sample_id"]])
