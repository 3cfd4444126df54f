from gensynth_pl.tasks.classification import ClassificationTask
from gensynth_pl.tasks.detection import DetectionTask

__all__ = ["ClassificationTask", "DetectionTask"]
