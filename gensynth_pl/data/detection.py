"""Shared pieces of the detection datamodules: the batch format, box-aware transforms, the base class.

A detection batch is ``(images (N, 3, H, W), [{"boxes": (K, 4) float xyxy pixels, "labels": (K,) int64}, ...])``:
one target dict per image, ``K`` may be 0 (an image without objects).
"""
from __future__ import annotations

import torch
from PIL import Image
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import v2

from gensynth_pl.data.common import ImageDataModule

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

DetectionSample = tuple[Tensor, dict[str, Tensor]]


def collate_detection(samples: list[DetectionSample]) -> tuple[Tensor, list[dict[str, Tensor]]]:
    """Stack the images; keep the targets as a list, since images hold different numbers of boxes."""
    images, targets = zip(*samples)
    return torch.stack(images), list(targets)


def detection_transforms(image_size: int, augment: bool) -> v2.Compose:
    """Resize to ``image_size`` squared (boxes follow), random horizontal flip when ``augment``, normalise.

    Call it as ``transform(image, tv_tensors.BoundingBoxes(...))``: the v2 transforms move the boxes with the image.
    """
    steps = [v2.ToImage(), v2.Resize((image_size, image_size), antialias=True)]
    if augment:
        steps.append(v2.RandomHorizontalFlip())
    return v2.Compose([*steps, v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def transform_sample(transform: v2.Compose, image: Image.Image | Tensor, boxes: Tensor, labels: Tensor) -> DetectionSample:
    """Apply a box-aware transform to an image (PIL or tensor) and its xyxy pixel boxes."""
    height, width = v2.functional.get_size(image)
    image, boxes = transform(image, tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(height, width)))
    return image, {"boxes": boxes.as_subclass(Tensor).float(), "labels": labels}


class DetectionDataModule(ImageDataModule):
    """Base for detection datamodules: batches are collated as ``(images, list of target dicts)``."""

    collate_fn = staticmethod(collate_detection)

    def __init__(self, image_size: int, batch_size: int, num_workers: int, num_classes: int) -> None:
        super().__init__(batch_size, num_workers, num_classes)
        if image_size < 8:
            raise ValueError(f"data.image_size={image_size} must be >= 8")
        self.image_size = image_size

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (3, self.image_size, self.image_size)
