"""task=classification: 2-D images, one label or several (:mod:`.task`)."""

from medray.tasks.classification.task import ClassificationTask

__all__ = ["ClassificationTask"]
