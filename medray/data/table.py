"""The one in-memory description of a dataset every source produces."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

TASKS = ("multiclass", "multilabel", "segmentation")


@dataclass
class SampleTable:
    """A labelled dataset: one row per sample, all splits.

    ``samples`` columns: ``sample_id`` (str, unique, derived from the file path — never
    from patient tags), ``path`` (absolute path or URI), ``split`` (train / calibration /
    test / val ...), ``target``: an int class index (multiclass) or a tuple of 0/1 per
    label (multilabel).  Extra source-specific columns may follow.
    """

    name: str
    task: str
    classes: list[str]
    root: str
    samples: pd.DataFrame
    notes: list[str] = field(default_factory=list)

    def split(self, name: str) -> pd.DataFrame:
        return self.samples[self.samples["split"] == name].reset_index(drop=True)

    def targets(self, df: pd.DataFrame) -> np.ndarray:
        """Targets of ``df`` as an array: ``(N,)`` int or ``(N, L)`` uint8."""
        if self.task == "multilabel":
            return np.asarray([list(t) for t in df["target"]], dtype=np.uint8).reshape(len(df), len(self.classes))
        return df["target"].to_numpy(dtype=np.int64)


def read_manifest_dir(root: str | Path) -> SampleTable:
    """Read medray's own manifest layout: ``dataset.json`` + ``manifest.csv``.

    ``manifest.csv`` columns: sample_id, path (relative to root), split, labels
    (class names joined by ``|``; exactly one for multiclass, possibly none for multilabel).
    ``root`` may be a URI (s3://, gs://...): files are read through :mod:`medray.io` and
    sample paths are URIs too.
    """
    import io

    from medray import io as medray_io

    root = medray_io.normalize(str(root))
    meta = json.loads(medray_io.read_text(medray_io.join(root, "dataset.json")))
    classes = list(meta["classes"])
    index = {c: i for i, c in enumerate(classes)}
    manifest = io.BytesIO(medray_io.read_bytes(medray_io.join(root, "manifest.csv")))
    df = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    names = df["labels"].str.split("|")
    if meta["task"] == "multilabel":
        df["target"] = [tuple(int(c in set(n)) for c in classes) for n in names]
    else:
        df["target"] = [index[n[0]] for n in names]
    df["path"] = [medray_io.join(root, p) for p in df["path"]]
    return SampleTable(meta["name"], meta["task"], classes, str(root), df.drop(columns=["labels"]))
