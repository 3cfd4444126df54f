from gensynth_pl.tasks.classification import ClassificationTask

__all__ = ["ClassificationTask"]
