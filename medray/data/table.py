"""The one in-memory description of a dataset every source produces."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from medray.data.sources import IMAGE, VOLUME

# What a table's ``task`` says its labels are, and the kind of sample that makes it.
KINDS = {"multiclass": IMAGE, "multilabel": IMAGE, "segmentation": VOLUME}
TASKS = tuple(KINDS)


@dataclass
class SampleTable:
    """A labelled dataset: one row per sample, all splits.

    ``samples`` columns: ``sample_id`` (str, unique, derived from the file path — never
    from patient tags), ``path`` (absolute path or URI), ``split`` (train / calibration /
    test / val ...), ``target``: an int class index (multiclass) or a tuple of 0/1 per
    label (multilabel).  Extra source-specific columns may follow; an optional ``problem``
    column says why a row cannot be evaluated (e.g. an unknown label; "" = fine), which
    ``data.on_error`` turns into a failure or a skipped sample.
    """

    name: str
    task: str
    classes: list[str]
    root: str
    samples: pd.DataFrame
    notes: list[str] = field(default_factory=list)
    # Binary datasets: the class whose sensitivity / PPV / F1 are reported (and which a
    # one-score model scores); see :func:`positive_class`.
    positive_class: str | None = None
    # Metadata columns of ``samples`` the report breaks results down by (report.subgroups);
    # a ``patient_id`` column, when present, makes the bootstrap resample patients.
    subgroup_columns: list[str] = field(default_factory=list)
    # Classes the evaluated model has no output for (matched by name: medray.models.labels),
    # listed in the report as not scored; their label columns are left out of ``targets``.
    not_scored: list[str] = field(default_factory=list)
    # The columns of ``samples["target"]`` that ``classes`` are, when some are not scored.
    label_columns: list[int] | None = None

    def without(self, names: list[str]) -> SampleTable:
        """This dataset with the labels ``names`` not scored (a multi-label dataset: every
        image keeps its other labels; a single-label one cannot lose a class)."""
        if not names:
            return self
        if self.task != "multilabel":
            raise ValueError(f"dataset {self.name} is {self.task}: every class is scored or the run is refused")
        keep = [i for i, c in enumerate(self.classes) if c not in set(names)]
        cols = keep if self.label_columns is None else [self.label_columns[i] for i in keep]
        return replace(self, classes=[self.classes[i] for i in keep], label_columns=cols,
                       not_scored=[*self.not_scored, *names])
    # 3-D datasets: the image channels by name (modalities), the label values each class
    # name covers when it is not just its index (nnU-Net's region-based labels: several
    # values), and the label value that marks voxels left out of every metric.
    channels: list[str] = field(default_factory=list)
    # The layout that read it (data=<name>: medray.data.sources), for its registry rules.
    layout: str = ""
    values: dict[str, list[int]] | None = None
    ignore_label: int | None = None

    def label_values(self) -> dict[str, tuple[int, ...]]:
        """``{class name: label values}``: its index, or the values it was declared with."""
        if self.values is not None:
            return {c: tuple(int(v) for v in self.values[c]) for c in self.classes}
        return {c: (i,) for i, c in enumerate(self.classes)}

    @property
    def kind(self) -> str:
        """The kind of sample (:data:`medray.data.sources.IMAGE` / ``VOLUME``)."""
        return KINDS[self.task]

    def positive_index(self) -> int:
        """Index of a binary dataset's positive class (1 when none is set)."""
        return list(self.classes).index(self.positive_class) if self.positive_class in self.classes else 1

    def split(self, name: str) -> pd.DataFrame:
        return self.samples[self.samples["split"] == name].reset_index(drop=True)

    def targets(self, df: pd.DataFrame) -> np.ndarray:
        """Targets of ``df`` as an array: ``(N,)`` int or ``(N, L)`` uint8."""
        if self.task == "multilabel":
            n = len(self.classes) + len(self.not_scored)
            y = np.asarray([list(t) for t in df["target"]], dtype=np.uint8).reshape(len(df), n)
            return y if self.label_columns is None else y[:, self.label_columns]
        return df["target"].to_numpy(dtype=np.int64)


# Class names that mean "no finding": in a two-class dataset the other class is positive.
NEGATIVE_NAMES = frozenset({"normal", "negative", "benign", "healthy", "no finding", "no_finding", "nofinding",
                            "absent", "control", "no", "0", "false"})


def positive_class(classes: list[str], configured: str | None = None, declared: str | None = None) -> tuple[str, str]:
    """The positive class of a binary dataset and how it was chosen.

    ``configured`` (data.positive_class) wins, then the dataset's ``declared`` one
    (dataset.json's ``positive_class``), then the class that is not a "no finding" name
    (NORMAL/PNEUMONIA → PNEUMONIA, whatever the folder order); failing all, the second class.
    """
    from medray.errors import ConfigError

    for key, name in (("data.positive_class", configured), ("the dataset's positive_class", declared)):
        if name is None:
            continue
        if name not in classes:
            raise ConfigError(f"{key}={name!r} is not one of the classes {list(classes)}; name one of them")
        return name, key
    negative = [c for c in classes if str(c).strip().lower() in NEGATIVE_NAMES]
    if len(negative) == 1:
        return next(c for c in classes if c != negative[0]), f"the class that is not {negative[0]!r}"
    return classes[1], "the second class (set data.positive_class to choose)"


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
    # A row whose labels are not in the class list is marked, not fatal here: the run
    # fails on it or skips it (data.on_error), never silently drops the unknown label.
    problems = []
    for n in names:
        unknown = [x for x in n if x and x not in index]
        if unknown:
            problems.append(f"label {'|'.join(unknown)!r} not in the class list {classes}")
        elif meta["task"] != "multilabel" and (len(n) != 1 or not n[0]):
            problems.append(f"expected exactly one label, got {'|'.join(n)!r}")
        else:
            problems.append("")
    if meta["task"] == "multilabel":
        df["target"] = [tuple(int(c in set(n)) for c in classes) for n in names]
    else:
        df["target"] = [index.get(n[0], -1) if len(n) == 1 else -1 for n in names]
    df["problem"] = problems
    df["path"] = [medray_io.join(root, p) for p in df["path"]]
    return SampleTable(meta["name"], meta["task"], classes, str(root), df.drop(columns=["labels"]),
                       positive_class=meta.get("positive_class"))
