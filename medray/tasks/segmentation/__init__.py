"""task=segmentation: 3D volumes by sliding windows, Dice per class (:mod:`.task`)."""

from medray.tasks.segmentation.task import SegmentationTask

__all__ = ["SegmentationTask"]
