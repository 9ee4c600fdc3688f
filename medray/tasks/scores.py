"""Per-sample scores of a classification run as arrays: targets in the predictions' order,
stacked probabilities, and the rows whose outputs are finite."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from medray.data.table import SampleTable


def targets(table: SampleTable, samples: pd.DataFrame, ids) -> np.ndarray:
    """The targets of the samples ``ids``, in that order."""
    idx = pd.Index(samples["sample_id"]).get_indexer(ids)
    if (idx < 0).any():
        raise RuntimeError("predictions contain sample ids that were not evaluated")
    return table.targets(samples.iloc[idx])


def stacked_probs(df: pd.DataFrame) -> np.ndarray:
    return np.stack(df["probs"].to_numpy()).astype(np.float64)


def finite_rows(probs: np.ndarray) -> np.ndarray:
    """Rows whose probabilities are all finite (fp16 overflow gives NaN/inf rows)."""
    return np.isfinite(probs).all(axis=1)


def nonfinite_entry(df: pd.DataFrame, ok: np.ndarray) -> dict | None:
    """The samples whose outputs were NaN/inf, by id: evaluated, not scored."""
    if ok.all():
        return None
    ids = df["sample_id"].astype(str).to_numpy()[~ok]
    return {"n": int(ids.size), "sample_ids": ids[:50].tolist()}
