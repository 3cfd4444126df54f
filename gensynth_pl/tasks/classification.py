"""Image classification: cross-entropy loss and top-1 accuracy (the gate metric)."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy


class ClassificationTask:
    name = "classification"

    def __init__(self, num_classes: int, label_smoothing: float = 0.0) -> None:
        if num_classes < 2:
            raise ValueError(f"task.num_classes={num_classes} must be >= 2")
        self.num_classes, self.label_smoothing = num_classes, label_smoothing

    def loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        return F.cross_entropy(outputs, targets, label_smoothing=self.label_smoothing)

    def metric_inputs(self, outputs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        return outputs, targets

    def metrics(self) -> MetricCollection:
        """Logged as ``val/<name>``; ``acc`` is micro-averaged top-1 accuracy (the fraction correct)."""
        return MetricCollection(
            {
                "acc": MulticlassAccuracy(self.num_classes, average="micro", top_k=1),
                "acc_macro": MulticlassAccuracy(self.num_classes, average="macro", top_k=1),
            }
        )
