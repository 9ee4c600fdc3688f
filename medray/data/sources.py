"""The dataset layouts medray reads: one registry row per layout, the only list of them.

A row names its reader as an import path (``module:function``, called with the
:class:`~medray.data.config.DataConfig` and the root folder, returning a
:class:`~medray.data.table.SampleTable`), so that listing the layouts imports no reader;
and the rules the config and the pipeline ask of a layout: the kind of sample it holds
(the task axis accepts kinds, not names), whether it reads a user's folder, whether
``data.classes`` selects its classes, whether it knows patients, and where INT8
calibration samples come from by default.  Adding a layout = its reader module, one row
here, one ``conf/data/<name>.yaml`` (README: "Adding a dataset layout").
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from medray.errors import registry_row

IMAGE = "image"  # 2-D images with a class / labels per image
VOLUME = "volume"  # 3-D volumes with voxel labels


@dataclass(frozen=True)
class Source:
    """One dataset layout (see the module docstring)."""

    reader: str
    kind: str = IMAGE
    # Reads a user's folder as published: data.root is required and local.
    folder: bool = False
    # data.root may be a URI (s3://, gs://): medray's own manifest layout.
    remote: bool = False
    # data.classes chooses (and orders) the classes evaluated.
    classes: bool = False
    # Samples carry patient ids (data.check_patient_overlap can check the splits).
    patient_ids: bool = False
    # calibration.split=null: the first of these that exists and is not the evaluated split.
    calibration_splits: tuple[str, ...] = ("calibration",)
    # generator arguments (data.n_train ...) apply.
    generated: bool = False
    # data.datalist names the file listing its cases.
    datalist: bool = False

    def read(self, data, root: str):
        module, _, name = self.reader.partition(":")
        return getattr(importlib.import_module(module), name)(data, root)


SOURCES: dict[str, Source] = {
    "synthetic": Source("medray.data.load:read_synthetic", remote=True, generated=True),
    "synthetic_multilabel": Source("medray.data.load:read_synthetic", remote=True, generated=True),
    # Kermany: train (5,216 images) before val (16 images: too few to calibrate on).
    "imagefolder": Source("medray.data.imagefolder:read_folder", folder=True, classes=True,
                          calibration_splits=("train", "val")),
    # NIH's official split is patient-wise: train_val shares no patient with test.
    "chestxray14": Source("medray.data.chestxray14:read_folder", folder=True, classes=True, patient_ids=True,
                          calibration_splits=("train_val",)),
    # MSD task folders, or the synthetic phantoms without data.root; MSD's unlabelled
    # imagesTs serve to calibrate a model evaluated on the labelled imagesTr.
    "msd": Source("medray.data.msd:load_msd_table", kind=VOLUME, generated=True,
                  calibration_splits=("calibration", "val", "test", "train")),
    # nnU-Net's raw layout (DatasetXXX_Name); the training cases calibrate a model evaluated
    # on imagesTs, imagesTs one evaluated on imagesTr.
    "nnunet": Source("medray.data.nnunet:read_folder", kind=VOLUME, folder=True, calibration_splits=("train", "test")),
    # A MONAI datalist JSON (load_decathlon_datalist): its lists are the splits; bundles are
    # evaluated on "validation" and calibrated on "training".
    "datalist": Source("medray.data.datalist:read_datalist", kind=VOLUME, folder=True, classes=True, datalist=True,
                       calibration_splits=("training", "train", "calibration", "test", "validation")),
}


def source(name: str) -> Source:
    """The registry row of layout ``name``; a ConfigError listing them otherwise."""
    return registry_row(SOURCES, name, "data", "available datasets:")


def of_kind(kind: str) -> list[str]:
    """The layouts holding samples of ``kind``."""
    return [n for n, s in SOURCES.items() if s.kind == kind]
