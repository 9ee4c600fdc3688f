"""A dataset config → its :class:`SampleTable` (through the layout's registry row), and
the evaluated, calibration and validation subsets of it."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from medray.data.config import DataConfig
from medray.data.sources import SOURCES, source
from medray.data.table import SampleTable, positive_class, read_manifest_dir
from medray.errors import ConfigError

log = logging.getLogger("medray.data")


def load_table(data: DataConfig, root: str) -> SampleTable:
    """Read (generating it first, for the synthetic sets) the dataset of ``data``; a binary
    one gets its positive class (:func:`medray.data.table.positive_class`)."""
    table = source(data.name).read(data, root)
    table.layout = data.name
    if data.metadata is not None:
        join_metadata(table, data.metadata)
    if table.task == "multiclass" and len(table.classes) == 2:
        table.positive_class, how = positive_class(list(table.classes), data.positive_class, table.positive_class)
        table.notes.append(f"positive class: {table.positive_class} ({how})")
        log.info("positive class: %s (%s)", table.positive_class, how)
    elif data.positive_class is not None:
        raise ConfigError(
            f"data.positive_class={data.positive_class!r}: dataset {table.name} is {table.task} with "
            f"{len(table.classes)} classes; a positive class applies to two-class datasets only (remove it)"
        )
    return table


def join_metadata(table: SampleTable, path: str) -> None:
    """Join ``data.metadata`` (CSV: ``sample_id`` + columns) onto ``table.samples``; its
    columns (but ``patient_id``) become subgroup columns.  A sample it does not list is in
    group ``(missing)`` — counted in the report, never dropped."""
    import io

    from medray import io as medray_io

    try:
        meta = pd.read_csv(io.BytesIO(medray_io.read_bytes(path)), dtype=str, keep_default_na=False)
    except Exception as e:
        raise ConfigError(f"data.metadata={path}: cannot read it as CSV ({e})") from None
    if "sample_id" not in meta.columns:
        raise ConfigError(f"data.metadata={path}: no sample_id column (has {list(meta.columns)[:8]}); "
                          "the first row must name the columns, one of them sample_id")
    cols = [c for c in meta.columns if c != "sample_id"]
    if not cols:
        raise ConfigError(f"data.metadata={path}: only a sample_id column; add the metadata columns (e.g. sex, age, site)")
    dup = meta["sample_id"][meta["sample_id"].duplicated()]
    if len(dup):
        raise ConfigError(f"data.metadata={path}: {len(dup)} sample_id(s) listed twice (e.g. {list(dup[:3])}); give each once")
    clash = [c for c in cols if c in table.samples.columns and c != "patient_id"]
    if clash:
        raise ConfigError(f"data.metadata={path}: column(s) {clash} already exist in the dataset; rename them")
    df = table.samples
    if "patient_id" in cols and "patient_id" in df.columns:
        df = df.drop(columns=["patient_id"])  # the metadata's patient ids win (the user's own)
    joined = df.merge(meta, on="sample_id", how="left")
    known = joined[cols[0]].notna()
    for c in cols:
        joined[c] = joined[c].fillna("(missing)" if c != "patient_id" else "")
    missing = int((~known).sum())
    if missing:
        log.warning("data.metadata: %d of %d samples are not listed in %s (group '(missing)')", missing, len(joined), path)
    if "patient_id" in cols:  # an unlisted sample is its own patient
        joined["patient_id"] = [p or f"sample:{s}" for p, s in zip(joined["patient_id"], joined["sample_id"])]
    table.samples = joined
    table.subgroup_columns = [*table.subgroup_columns, *(c for c in cols if c != "patient_id")]


def resolve_calibration_split(table: SampleTable, requested: str | None, evaluated_split: str) -> str:
    """``calibration.split``, or the dataset's default calibration split when it is null."""
    if requested is not None:
        return requested
    have = set(table.samples["split"].unique())
    layout = table.layout if table.layout in SOURCES else table.name
    for split in source(layout).calibration_splits if layout in SOURCES else ("calibration",):
        if split != evaluated_split and split in have:
            return split
    others = sorted(have - {evaluated_split})
    raise ConfigError(
        f"calibration.split=None: {table.name} has no default calibration split besides the evaluated "
        f"split {evaluated_split!r}; set calibration.split to one of {others or 'another split (there is none)'}"
    )


def check_patient_overlap(table: SampleTable, evaluated_split: str, calibration_split: str) -> None:
    """Raise ConfigError if a patient has images in both splits (a leak between them).

    Counts and image ids are named, never patient ids.
    """
    if "patient_id" not in table.samples.columns:
        raise ConfigError(f"data.check_patient_overlap=true: dataset {table.name} has no patient IDs to check")
    ev = table.split(evaluated_split)
    cal = table.split(calibration_split)
    both = set(ev["patient_id"]) & set(cal["patient_id"])
    if both:
        imgs = ev[ev["patient_id"].isin(both)]["sample_id"]
        raise ConfigError(
            f"data.check_patient_overlap=true: {len(both)} of {ev['patient_id'].nunique()} patients of the "
            f"evaluated split {evaluated_split!r} also have images in the calibration split "
            f"{calibration_split!r} ({cal['patient_id'].nunique()} patients); {len(imgs)} evaluated images are "
            f"affected (e.g. {sorted(imgs)[:3]}). Use a patient-wise split (NIH's test_list.txt / "
            f"train_val_list.txt are) or set calibration.split to a split without these patients"
        )
    log.info(
        "patient overlap check: no patient of %r (%d) in %r (%d)",
        evaluated_split, ev["patient_id"].nunique(), calibration_split, cal["patient_id"].nunique(),
    )


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


def calibration_samples(
    table: SampleTable, split: str | None, num: int, seed: int, evaluated: pd.DataFrame, evaluated_split: str | None = None
) -> pd.DataFrame:
    """INT8 calibration samples, guaranteed disjoint from the evaluated ones.

    ``split=None`` = the dataset's default calibration split (:func:`resolve_calibration_split`).
    """
    if split is None:
        if evaluated_split is None:
            evaluated_split = str(evaluated["split"].iloc[0]) if len(evaluated) else ""
        split = resolve_calibration_split(table, None, evaluated_split)
        log.info("calibration split: %r (the default of %s)", split, table.name)
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


# data=synthetic / synthetic_multilabel: the kind of set each generates.
SYNTHETIC_KIND = {"synthetic": "binary", "synthetic_multilabel": "multilabel"}


def read_synthetic(data: DataConfig, root: str) -> SampleTable:
    """The synthetic set of ``data`` (a :class:`~medray.data.config.DataConfig`) at ``root``:
    generated there once and cached, or read as uploaded to shared storage."""
    from medray.data.synthetic import ensure_synthetic
    from medray.io import is_remote

    if is_remote(root):
        return _read_uploaded_synthetic(data, root)
    if not (Path(root) / "dataset.json").is_file():
        log.info("generating the %s dataset in %s (once; cached)", data.name, root)
    ensure_synthetic(SYNTHETIC_KIND[data.name], root, n_train=data.n_train, n_calibration=data.n_calibration,
                     n_test=data.n_test, image_size=data.image_size, seed=data.seed)
    return read_manifest_dir(root)


def _read_uploaded_synthetic(data: DataConfig, root: str) -> SampleTable:
    """A synthetic set on shared storage (s3://, gs://): generated once on a local disk,
    uploaded, read as is — if its generator arguments are the configured ones."""
    import json

    from medray import io as medray_io
    from medray.data.generated import generator_diff

    meta_uri = medray_io.join(root, "dataset.json")
    if not medray_io.exists(meta_uri):
        raise ConfigError(
            f"data.root={root!r}: no dataset.json there; synthetic sets are generated on a local disk: run once "
            f"with data.root=<local folder>, upload that folder (e.g. `aws s3 sync <folder> {root}`), then use it"
        )
    gen = json.loads(medray_io.read_text(meta_uri)).get("generator") or {}
    want = {"kind": SYNTHETIC_KIND[data.name], "n_train": data.n_train, "n_calibration": data.n_calibration,
            "n_test": data.n_test, "image_size": data.image_size, "seed": data.seed}
    if diff := generator_diff(gen, want):
        raise ConfigError(
            f"data.root={root!r} holds a synthetic set made with other arguments ({', '.join(diff)}); "
            "set data.* to match it or upload the set you mean"
        )
    return read_manifest_dir(root)
