"""The targets of a classification run's predictions, in their order."""

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
