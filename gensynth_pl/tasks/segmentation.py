"""Semantic segmentation: per-pixel cross-entropy and two gate metrics, pixel accuracy and mean IoU.

Void pixels (``ignore_index``, e.g. CamVid's "Unlabelled") count in neither the loss nor the metrics.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex


class SegmentationTask:
    name = "segmentation"

    def __init__(self, num_classes: int, ignore_index: int | None = None) -> None:
        if num_classes < 2:
            raise ValueError(f"task.num_classes={num_classes} must be >= 2")
        if ignore_index is not None and 0 <= ignore_index < num_classes:
            raise ValueError(
                f"task.ignore_index={ignore_index} is one of the {num_classes} classes; "
                f"the void id must lie outside 0..{num_classes - 1}"
            )
        self.num_classes, self.ignore_index = num_classes, ignore_index

    def loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """Mean cross-entropy over the non-void pixels of ``outputs`` (N, C, H, W) against ``targets`` (N, H, W)."""
        return F.cross_entropy(outputs, targets, ignore_index=-100 if self.ignore_index is None else self.ignore_index)

    def metric_inputs(self, outputs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        return outputs, targets

    def metrics(self) -> MetricCollection:
        """Logged as ``val/acc`` (micro pixel accuracy) and ``val/miou`` (IoU averaged over the classes present)."""
        return MetricCollection(
            {
                "acc": MulticlassAccuracy(self.num_classes, average="micro", ignore_index=self.ignore_index),
                "miou": MulticlassJaccardIndex(self.num_classes, average="macro", ignore_index=self.ignore_index),
            }
        )
