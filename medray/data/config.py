"""The data axis' options: which dataset and samples (``data.*``), 3-D volume
preprocessing (``data.volume.*``) and the INT8 calibration samples (``calibration.*``).

Layout-specific rules come from the layout's registry row (:mod:`medray.data.sources`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from medray.data.sources import SOURCES, source
from medray.errors import fail as _fail

INTENSITY_MODES = ("auto", "window", "zscore", "none")
_AXIS_CODES = ("LR", "AP", "SI")


@dataclass
class VolumeConfig:
    """3D volume preprocessing (segmentation sources); training and evaluation use the same.

    Defaults are the abdominal CT window of MONAI's spleen tutorial.
    """

    # auto = `window` for CT (dataset.json "modality"), `zscore` for anything else (MR...).
    intensity: str = "auto"
    # window: HU range [a_min, a_max] mapped linearly to [b_min, b_max] (clipped if clip).
    a_min: float = -175.0
    a_max: float = 250.0
    b_min: float = 0.0
    b_max: float = 1.0
    clip: bool = True
    # Resample to this voxel spacing in mm (one per axis); null = keep each file's spacing.
    spacing: list[float] | None = None
    # Reorient to these axis codes (e.g. RAS); null = keep the file's orientation.
    orientation: str | None = "RAS"

    def __post_init__(self) -> None:
        if self.intensity not in INTENSITY_MODES:
            _fail("data.volume.intensity", self.intensity, f"use one of {', '.join(INTENSITY_MODES)}")
        if not self.a_max > self.a_min:
            _fail("data.volume.a_max", self.a_max, f"must be greater than data.volume.a_min={self.a_min}")
        if self.spacing is not None:
            self.spacing = [float(v) for v in self.spacing]
            if len(self.spacing) != 3 or min(self.spacing) <= 0:
                _fail("data.volume.spacing", self.spacing, "use three positive spacings in mm, e.g. [1.5, 1.5, 2.0], or null")
        if self.orientation is not None:
            o = str(self.orientation).upper()
            axes = sorted(next((i for i, a in enumerate(_AXIS_CODES) if c in a), -1) for c in o)
            if axes != [0, 1, 2]:
                _fail("data.volume.orientation", self.orientation, "use three axis codes, one of L/R, A/P, S/I each (e.g. RAS), or null")
            self.orientation = o


@dataclass
class DataConfig:
    """Which dataset, where, and which part of it is evaluated."""

    name: str = "synthetic"
    # Folder (or URI) of the dataset; null = medray's cache for the synthetic sets.
    root: str | None = None
    split: str = "test"
    # Evaluate a deterministic random subset of this many samples (null = all).
    limit: int | None = None
    seed: int = 0
    # Synthetic generator only.
    n_train: int = 2000
    n_calibration: int = 300
    n_test: int = 1000
    image_size: int = 256
    # Samples per read task and per actor call (the actor runs it as backend batches of
    # batch_size; a multiple of batch_size avoids ragged batches). null = about 256 samples,
    # at most 64 MiB of decoded input, several blocks per actor (classification).
    read_block_size: int | None = None
    # Decode once (medray.data.cache): the read stage's outputs cached in cache_dir/decoded
    # and read back by later runs (baseline, candidate, sweep trials). auto = images yes,
    # 3D volumes no (preprocessed float volumes are large); on / off force it.
    cache: str = "auto"
    # A sample that cannot be read (missing/truncated/undecodable file, NaN pixels, unknown
    # label): fail = stop with its path and reason; skip = evaluate the rest and list it.
    on_error: str = "fail"
    # imagefolder: class names in model-output order (null = sorted folder names);
    # chestxray14: the labels evaluated, in model-output order (null = the 14 in CheXNet order);
    # datalist: the names of label values 0..K-1, background first (null = the model's).
    classes: list[str] | None = None
    # datalist: the MONAI datalist JSON (absolute, or relative to data.root).
    datalist: str | None = None
    # Two-class datasets: the class whose sensitivity / specificity / PPV / F1 are reported
    # (null = the dataset's declared one, else the class that is not NORMAL/negative/benign...).
    positive_class: str | None = None
    # A CSV with a sample_id column and metadata columns (sex, age, site, scanner...) joined
    # onto the samples: subgroups (report.subgroups); a patient_id column makes the
    # bootstrap resample patients.
    metadata: str | None = None
    # chestxray14: fail if a patient has images in both the calibration and evaluated split.
    check_patient_overlap: bool = False
    # 3D sources (data=msd): intensity normalisation, resampling, orientation.
    volume: VolumeConfig = field(default_factory=VolumeConfig)

    def __post_init__(self) -> None:
        src = source(self.name)
        self._check_paths(src)
        if self.classes is not None:
            if not src.classes:
                _fail("data.classes", self.classes, f"data={self.name} has fixed classes; remove data.classes")
            dup = sorted({c for c in self.classes if list(self.classes).count(c) > 1})
            if not self.classes or dup:
                _fail("data.classes", self.classes, f"give each class name once ({'duplicates: ' + ', '.join(dup) if dup else 'empty list'})")
        if self.datalist is not None and not src.datalist:
            _fail("data.datalist", self.datalist, f"data={self.name} lists its own cases; a datalist file is for "
                  f"data={'|'.join(n for n, r in SOURCES.items() if r.datalist)} (remove data.datalist)")
        if self.check_patient_overlap and not src.patient_ids:
            _fail(
                "data.check_patient_overlap",
                True,
                f"data={self.name} has no patient IDs; the check exists for "
                f"data={'|'.join(n for n, r in SOURCES.items() if r.patient_ids)} only",
            )
        if self.limit is not None and self.limit < 1:
            _fail("data.limit", self.limit, "use a positive number of samples, or null for the whole split")
        for k in ("n_train", "n_calibration", "n_test", "image_size"):
            if getattr(self, k) < 1:
                _fail(f"data.{k}", getattr(self, k), "must be a positive integer")
        if self.read_block_size is not None and self.read_block_size < 1:
            _fail("data.read_block_size", self.read_block_size, "use a positive number or null (automatic)")
        if self.cache not in ("auto", "on", "off"):
            _fail("data.cache", self.cache, "use auto (cache decoded images, not volumes), on or off")
        if self.on_error not in ("fail", "skip"):
            _fail("data.on_error", self.on_error, "use fail (stop at the first bad sample) or skip (list and exclude it)")

    def _check_paths(self, src) -> None:
        """``data.root`` (local unless the layout reads URIs; required for a user's folder)
        and ``data.metadata``, made absolute."""
        from medray.io import is_local, local_path

        if self.root is not None:
            if is_local(self.root):
                self.root = local_path(self.root)  # file:///x is /x
            elif not src.remote:
                _fail(
                    "data.root",
                    self.root,
                    f"data={self.name} reads a folder on a local disk or a shared mount (the same path on every "
                    "node); s3://, gs:// roots work with medray's manifest layout (dataset.json + manifest.csv, "
                    "e.g. an uploaded data=synthetic set)",
                )
        if src.folder:
            if self.root is None:
                _fail("data.root", None, f"data={self.name} reads your copy of the dataset; set data.root=<its folder>")
            self.root = str(Path(self.root).expanduser().resolve())
            if not Path(self.root).is_dir():
                _fail("data.root", self.root, f"not a directory; point it at the unpacked {self.name} dataset")
        if self.metadata is not None:
            if is_local(self.metadata):
                self.metadata = str(Path(local_path(self.metadata)).expanduser().resolve())
                if not Path(self.metadata).is_file():
                    _fail("data.metadata", self.metadata, "no such file; give a CSV with a sample_id column and metadata columns")


@dataclass
class CalibrationConfig:
    """INT8 calibration samples: drawn from a split disjoint from the evaluated one."""

    # null = the dataset's own calibration split, never the evaluated one: synthetic
    # `calibration`, imagefolder `train` (else `val`), chestxray14 `train_val`.
    split: str | None = None
    num_samples: int = 300
    seed: int = 0

    def __post_init__(self) -> None:
        if self.num_samples < 1:
            _fail("calibration.num_samples", self.num_samples, "use a positive number of samples")
