"""``predictions/<run>.parquet``: one row per sample (ids, target, probs, timing, worker)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from medray.tasks.classification.scores import targets

if TYPE_CHECKING:
    import pandas as pd

    from medray.data.table import SampleTable
    from medray.results import RunResult


def write(out: str, result: RunResult, table: SampleTable, samples: pd.DataFrame) -> None:
    """predictions/<run>.parquet: one row per sample (ids, target, probs, timing, worker)."""
    import pyarrow as pa

    from medray import io as medray_io

    df = result.predictions
    t = targets(table, samples, df["sample_id"])
    probs = np.stack(df["probs"].to_numpy()).astype(np.float32)
    cols = {
        "sample_id": pa.array(df["sample_id"].astype(str)),
        "target": pa.array(t.tolist()),
        "probs": pa.FixedSizeListArray.from_arrays(pa.array(probs.ravel()), probs.shape[1]),
        "batch_uid": pa.array(df["batch_uid"].astype(str)),
        "batch_ms": pa.array(df["batch_ms"].astype(float)),
        "batch_size": pa.array(df["batch_size"].astype(int)),
        "node_id": pa.array(df["node_id"].astype(str)),
        "worker_pid": pa.array(df["worker_pid"].astype(int)),
    }
    medray_io.write_parquet(pa.table(cols), medray_io.join(out, "predictions", f"{result.spec.name}.parquet"))
