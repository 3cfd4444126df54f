"""A deterministic synthetic detection dataset, generated in memory (tests and the quick default).

Each image is a smooth colour gradient plus Gaussian noise with up to ``max_objects`` non-overlapping
filled shapes of random size; each class has its own shape (rectangle, ellipse, triangle, cross) and a
jittered colour of its own. A fraction ``empty_fraction`` of the images hold no object at all. Boxes are the
tight xyxy pixel bounds of each drawn shape. Everything derives from (seed, split): the same on every machine.
"""
from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.data import Dataset

from gensynth_pl.data.detection import DetectionDataModule, DetectionSample

SHAPES = ("rectangle", "ellipse", "triangle", "cross")
PALETTE = torch.tensor([[2.0, -1.0, -1.0], [-1.0, 2.0, -1.0], [-1.0, -1.0, 2.0], [2.0, 2.0, -1.0]])  # per class, jittered


def shape_mask(shape: str, size: int, centre: tuple[float, float], half: tuple[float, float]) -> Tensor:
    """Boolean (size, size) mask of a shape centred at ``centre`` (x, y) with half-extents ``half`` (w/2, h/2)."""
    coords = torch.arange(size, dtype=torch.float32) + 0.5
    y, x = torch.meshgrid(coords, coords, indexing="ij")
    dx, dy = (x - centre[0]) / half[0], (y - centre[1]) / half[1]  # the shape spans [-1, 1] on both axes
    if shape == "rectangle":
        return (dx.abs() <= 1) & (dy.abs() <= 1)
    if shape == "ellipse":
        return dx**2 + dy**2 <= 1
    if shape == "triangle":  # apex up
        return (dy.abs() <= 1) & (dx.abs() <= (dy + 1) / 2)
    if shape == "cross":
        return ((dx.abs() <= 1) & (dy.abs() <= 1 / 3)) | ((dx.abs() <= 1 / 3) & (dy.abs() <= 1))
    raise ValueError(f"unknown shape '{shape}'; use one of {SHAPES}")


def mask_box(mask: Tensor) -> Tensor:
    """Tight xyxy pixel box of a non-empty mask."""
    ys, xs = mask.nonzero(as_tuple=True)
    return torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)


def make_synthetic_detection(
    size: int,
    num_classes: int,
    image_size: int,
    seed: int,
    split: int,
    max_objects: int,
    empty_fraction: float,
    noise: float,
) -> tuple[Tensor, list[dict[str, Tensor]]]:
    """``size`` images (N, 3, S, S) and their targets, drawn from one generator seeded by (seed, split)."""
    rng = torch.Generator().manual_seed(seed * 1_000_003 + split)
    coords = torch.linspace(-1, 1, image_size)
    images, targets = torch.empty(size, 3, image_size, image_size), []
    for index in range(size):
        gradient = torch.randn(3, 2, generator=rng) * 0.5
        image = torch.randn(3, 1, 1, generator=rng) * 0.3 + gradient[:, :1, None] * coords[None, :, None]
        image = image + gradient[:, 1:, None] * coords[None, None, :]
        count = 0 if torch.rand(1, generator=rng).item() < empty_fraction else int(torch.randint(1, max_objects + 1, (1,), generator=rng))
        boxes, labels, occupied = [], [], torch.zeros(image_size, image_size, dtype=torch.bool)
        for _ in range(8 * count):  # rejection sampling of free spots; crowded images may get fewer objects
            if len(boxes) == count:
                break
            label = int(torch.randint(num_classes, (1,), generator=rng))
            half = (image_size * (0.08 + 0.14 * torch.rand(2, generator=rng))).tolist()
            centre = [half[i] + (image_size - 2 * half[i]) * torch.rand(1, generator=rng).item() for i in range(2)]
            colour = PALETTE[label] + 0.5 * torch.randn(3, generator=rng)
            mask = shape_mask(SHAPES[label], image_size, centre, half)
            box = mask_box(mask) if mask.any() else None
            if box is None or occupied[int(box[1]) : int(box[3]), int(box[0]) : int(box[2])].any():
                continue
            occupied[int(box[1]) : int(box[3]), int(box[0]) : int(box[2])] = True
            image = torch.where(mask, colour[:, None, None], image)
            boxes.append(box)
            labels.append(label)
        images[index] = image + noise * torch.randn(image.shape, generator=rng)
        targets.append(
            {"boxes": torch.stack(boxes) if boxes else torch.zeros(0, 4), "labels": torch.tensor(labels, dtype=torch.int64)}
        )
    return images, targets


class DetectionTensorDataset(Dataset):
    """In-memory images and their target dicts."""

    def __init__(self, images: Tensor, targets: list[dict[str, Tensor]]) -> None:
        if len(images) != len(targets):
            raise ValueError(f"{len(images)} images but {len(targets)} targets")
        self.images, self.targets = images, targets

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> DetectionSample:
        return self.images[index], self.targets[index]


class SyntheticDetectionDataModule(DetectionDataModule):
    def __init__(
        self,
        num_classes: int = 3,
        image_size: int = 64,
        train_size: int = 1000,
        val_size: int = 200,
        max_objects: int = 3,
        empty_fraction: float = 0.15,
        noise: float = 0.3,
        seed: int = 0,
        batch_size: int = 32,
        num_workers: int = 0,
        test_size: int = 0,
    ) -> None:
        super().__init__(image_size, batch_size, num_workers, num_classes)
        if not 1 <= num_classes <= len(SHAPES) or image_size < 16 or train_size < 1 or val_size < 1 or max_objects < 1 or test_size < 0:
            raise ValueError(
                f"synthetic detection needs 1 <= num_classes <= {len(SHAPES)}, image_size >= 16, train_size/val_size >= 1, "
                f"test_size >= 0 and max_objects >= 1; got {num_classes}, {image_size}, {train_size}/{val_size}/{test_size}, "
                f"{max_objects}"
            )
        if not 0 <= empty_fraction < 1 or noise < 0:
            raise ValueError(f"data.empty_fraction={empty_fraction} must be in [0, 1) and data.noise={noise} >= 0")
        self.train_size, self.val_size, self.test_size, self.max_objects = train_size, val_size, test_size, max_objects
        self.empty_fraction, self.noise, self.seed = empty_fraction, noise, seed

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            args = (self.num_classes, self.image_size, self.seed)
            extra = dict(max_objects=self.max_objects, empty_fraction=self.empty_fraction, noise=self.noise)
            self.train_set = DetectionTensorDataset(*make_synthetic_detection(self.train_size, *args, split=0, **extra))
            self.val_set = DetectionTensorDataset(*make_synthetic_detection(self.val_size, *args, split=1, **extra))
            if self.test_size:
                self.test_set = DetectionTensorDataset(*make_synthetic_detection(self.test_size, *args, split=2, **extra))
