from gensynth_pl.tasks.classification import ClassificationTask
from gensynth_pl.tasks.segmentation import SegmentationTask

__all__ = ["ClassificationTask", "SegmentationTask"]
