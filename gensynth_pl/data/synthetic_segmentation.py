"""A deterministic synthetic segmentation dataset, generated in memory (the quick default and the tests).

Class 0 is a textured background; every image carries a few ellipses and rectangles, each filled with
the texture of its class (1..num_classes-1): the class texture of the classification set over a class
colour, so that a class can be told from a small neighbourhood, not only from a whole period. A one-pixel
band on both sides of every class boundary is void (``ignore_index``), like the boundary pixels of
hand-drawn annotations. Sample i of a split is the same on every machine: it derives from (seed, split, i).
"""
from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.data import TensorDataset

from gensynth_pl.data.synthetic import SyntheticDataModule, _class_templates


def make_synthetic_segmentation(
    size: int, num_classes: int, image_size: int, seed: int, split: int, noise: float, objects: int, ignore_index: int
) -> TensorDataset:
    """``size`` (image (3, S, S), mask (S, S) of class ids or ``ignore_index``) pairs."""
    colours = torch.randn(num_classes, 3, 1, 1, generator=torch.Generator().manual_seed(seed + 1))
    templates = _class_templates(num_classes, image_size, seed) + colours
    rng = torch.Generator().manual_seed(seed * 1_000_003 + split)
    coords = torch.arange(image_size, dtype=torch.float32)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    images, masks = torch.empty(size, 3, image_size, image_size), torch.empty(size, image_size, image_size, dtype=torch.long)
    for i in range(size):
        image, mask = _shifted(templates[0], rng), torch.zeros(image_size, image_size, dtype=torch.long)
        for _ in range(objects):
            label = int(torch.randint(1, num_classes, (1,), generator=rng))
            cy, cx, ry, rx, kind = torch.rand(5, generator=rng).tolist()
            cy, cx, ry, rx = cy * image_size, cx * image_size, (0.1 + 0.2 * ry) * image_size, (0.1 + 0.2 * rx) * image_size
            if kind < 0.5:
                region = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
            else:
                region = ((yy - cy).abs() <= ry) & ((xx - cx).abs() <= rx)
            image = torch.where(region, _shifted(templates[label], rng), image)
            mask[region] = label
        mask[_boundary(mask)] = ignore_index
        contrast = 0.6 + 0.8 * torch.rand(1, generator=rng)
        images[i] = contrast * image + noise * torch.randn(image.shape, generator=rng)
        masks[i] = mask
    return TensorDataset(images, masks)


def _shifted(template: Tensor, rng: torch.Generator) -> Tensor:
    """The texture rolled by a random offset: the class is in the texture, not in its phase."""
    size = template.shape[-1]
    return torch.roll(template, tuple(torch.randint(0, size, (2,), generator=rng).tolist()), dims=(1, 2))


def _boundary(mask: Tensor) -> Tensor:
    """Pixels with a 4-neighbour of another class."""
    edge = torch.zeros_like(mask, dtype=torch.bool)
    horizontal, vertical = mask[:, 1:] != mask[:, :-1], mask[1:, :] != mask[:-1, :]
    edge[:, 1:] |= horizontal
    edge[:, :-1] |= horizontal
    edge[1:, :] |= vertical
    edge[:-1, :] |= vertical
    return edge


class SyntheticSegmentationDataModule(SyntheticDataModule):
    """In-memory segmentation data with the synthetic classification set's knobs plus ``objects`` per
    image and the void id ``ignore_index``."""

    def __init__(
        self,
        num_classes: int = 4,
        image_size: int = 32,
        train_size: int = 512,
        val_size: int = 256,
        objects: int = 3,
        noise: float = 1.5,
        ignore_index: int = 255,
        seed: int = 0,
        batch_size: int = 16,
        num_workers: int = 0,
        test_size: int = 0,
    ) -> None:
        super().__init__(num_classes, image_size, train_size, val_size, noise, seed, batch_size, num_workers, test_size)
        if objects < 1 or 0 <= ignore_index < num_classes:
            raise ValueError(
                f"data.objects={objects} must be >= 1 and data.ignore_index={ignore_index} outside 0..{num_classes - 1}"
            )
        self.objects, self.ignore_index = objects, ignore_index

    def _make(self, size: int, split: int) -> TensorDataset:
        return make_synthetic_segmentation(size, self.num_classes, self.image_size, self.seed, split, self.noise,
                                           self.objects, self.ignore_index)
