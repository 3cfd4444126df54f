from gensynth_pl.tasks.classification import ClassificationTask
from gensynth_pl.tasks.detection import DetectionTask
from gensynth_pl.tasks.segmentation import SegmentationTask

__all__ = ["ClassificationTask", "DetectionTask", "SegmentationTask"]
