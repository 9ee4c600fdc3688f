"""The task axis: one protocol (:class:`~medray.tasks.base.Task`), two implementations."""

from __future__ import annotations

from typing import TYPE_CHECKING

from medray.tasks.base import Task
from medray.tasks.classification import ClassificationTask
from medray.tasks.segmentation import SegmentationTask

if TYPE_CHECKING:
    from medray.config import EvalConfig
    from medray.data.table import SampleTable

TASKS: dict[str, type[Task]] = {"classification": ClassificationTask, "segmentation": SegmentationTask}


def make_task(cfg: EvalConfig, table: SampleTable) -> Task:
    """The task object for the loaded dataset (``cfg.task`` was checked against it)."""
    if table.task == "segmentation":
        return SegmentationTask.for_config(cfg, table)
    return ClassificationTask()


def task_of(name: str) -> Task:
    """A task object for rendering or writing a document of ``dataset.task`` ``name``."""
    return SegmentationTask() if name == "segmentation" else ClassificationTask()


__all__ = ["TASKS", "task_of", "ClassificationTask", "SegmentationTask", "Task", "make_task"]
