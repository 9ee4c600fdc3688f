"""Dataset sources: config → :class:`SampleTable`, and the evaluated / calibration subsets."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from medray.config import ConfigError, DataConfig
from medray.data.table import SampleTable, read_manifest_dir

log = logging.getLogger("medray.data")

_SYNTHETIC_KIND = {"synthetic": "binary", "synthetic_multilabel": "multilabel"}


def load_table(data: DataConfig, root: str) -> SampleTable:
    """Read (generating it first, for the synthetic sets) the dataset of ``data``."""
    if data.name in _SYNTHETIC_KIND:
        from medray.data.synthetic import ensure_synthetic

        if not (Path(root) / "dataset.json").is_file():
            log.info("generating the %s dataset in %s (once; cached)", data.name, root)
        ensure_synthetic(
            _SYNTHETIC_KIND[data.name],
            root,
            n_train=data.n_train,
            n_calibration=data.n_calibration,
            n_test=data.n_test,
            image_size=data.image_size,
            seed=data.seed,
        )
        return read_manifest_dir(root)
    raise ConfigError(f"data={data.name!r}: no reader for this dataset")


def select_samples(table: SampleTable, split: str, limit: int | None, seed: int) -> pd.DataFrame:
    """The evaluated samples: ``split``, optionally a deterministic random ``limit`` subset.

    A random (not first-N) subset keeps the class mix of the split, so a limited run
    still has positives and negatives for AUC.
    """
    df = table.split(split)
    if df.empty:
        have = sorted(table.samples["split"].unique())
        raise ConfigError(f"data.split={split!r}: no samples in that split of {table.name}; splits: {have}")
    if limit is not None and limit < len(df):
        df = df.sample(n=limit, random_state=seed)
    return df.sort_values("sample_id").reset_index(drop=True)


def calibration_samples(table: SampleTable, split: str, num: int, seed: int, evaluated: pd.DataFrame) -> pd.DataFrame:
    """INT8 calibration samples, guaranteed disjoint from the evaluated ones."""
    df = table.split(split)
    if df.empty:
        raise ConfigError(f"calibration.split={split!r}: no samples in that split of {table.name}")
    overlap = set(df["sample_id"]) & set(evaluated["sample_id"])
    if overlap:
        raise ConfigError(
            f"calibration.split={split!r} shares {len(overlap)} samples with the evaluated split "
            f"(e.g. {sorted(overlap)[:3]}); calibrate on a different split"
        )
    if num < len(df):
        df = df.sample(n=num, random_state=seed)
    return df.sort_values("sample_id").reset_index(drop=True)
