"""The task axis: one protocol (:class:`~medray.tasks.base.Task`), one registry of tasks.

A task is named by its registry key everywhere (``task=segmentation``,
``conf/task/<name>.yaml``); its class is imported from the import path here only when
used.  Adding a task = its package (a :class:`Task` subclass split by phase), one row
here, one ``conf/task/<name>.yaml`` (README: "Adding a task").
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from medray.data.table import KINDS
from medray.errors import ConfigError, registry_row
from medray.tasks.base import RunConfig, SweepMetric, Task

if TYPE_CHECKING:
    from medray.data.table import SampleTable

TASKS: dict[str, str] = {
    "classification": "medray.tasks.classification:ClassificationTask",
    "segmentation": "medray.tasks.segmentation:SegmentationTask",
}


def task_class(name: str) -> type[Task]:
    """The Task class registered as ``name``; a ConfigError listing them otherwise."""
    module, _, attr = registry_row(TASKS, name, "task").partition(":")
    return getattr(importlib.import_module(module), attr)


def task_for_kind(kind: str) -> type[Task] | None:
    """The first registered task that evaluates datasets of ``kind``."""
    return next((cls for cls in map(task_class, TASKS) if kind in cls.data_kinds), None)


def make_task(cfg: RunConfig, table: SampleTable) -> Task:
    """The task object of ``cfg.task`` for the loaded dataset (checked against it by the config)."""
    return task_class(cfg.task).for_config(cfg, table)


def task_of_document(doc: dict) -> Task:
    """The task that wrote a metrics / sweep document: its ``task`` key, else (documents of
    older medray versions) the task of its dataset's kind."""
    if doc.get("task") in TASKS:
        return task_class(doc["task"])()
    return task_of(doc["dataset"]["task"])


def task_of(dataset_task: str) -> Task:
    """A task object for rendering or writing a document whose ``dataset.task`` is
    ``dataset_task`` (multiclass / multilabel / segmentation)."""
    cls = task_for_kind(KINDS[dataset_task])
    if cls is None:
        raise ConfigError(f"no task evaluates {dataset_task} datasets")
    return cls()


__all__ = ["TASKS", "RunConfig", "SweepMetric", "Task", "make_task", "task_class", "task_for_kind", "task_of", "task_of_document"]
