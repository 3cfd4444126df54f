"""A deterministic synthetic image-classification dataset, generated in memory (the embedded default).

Each class is a fixed random texture (a mix of oriented colour gratings); every sample is its class
texture, randomly shifted and scaled in contrast, plus Gaussian noise. Sample i of a split is the
same on every machine: everything derives from (seed, split, i).
"""
from __future__ import annotations

import math

import torch
from torch.utils.data import TensorDataset

from gensynth_pl.data.common import ImageDataModule


def make_synthetic_images(size: int, num_classes: int, image_size: int, seed: int, split: int, noise: float) -> TensorDataset:
    templates = _class_templates(num_classes, image_size, seed)
    rng = torch.Generator().manual_seed(seed * 1_000_003 + split)
    labels = torch.arange(size) % num_classes
    shifts = torch.randint(-image_size // 4, image_size // 4 + 1, (size, 2), generator=rng)
    contrast = 0.6 + 0.8 * torch.rand(size, 1, 1, 1, generator=rng)
    images = torch.stack([torch.roll(templates[y], tuple(s.tolist()), dims=(1, 2)) for y, s in zip(labels, shifts)])
    images = contrast * images + noise * torch.randn(images.shape, generator=rng)
    return TensorDataset(images, labels)


def _class_templates(num_classes: int, image_size: int, seed: int, gratings: int = 3) -> torch.Tensor:
    rng = torch.Generator().manual_seed(seed)
    coords = torch.arange(image_size, dtype=torch.float32)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    templates = torch.zeros(num_classes, 3, image_size, image_size)
    for c in range(num_classes):
        for _ in range(gratings):
            angle = math.pi * torch.rand(1, generator=rng).item()
            period = image_size / (1 + 3 * torch.rand(1, generator=rng).item())  # whole periods: rolls stay seamless
            period = image_size / round(image_size / period)
            phase = 2 * math.pi * torch.rand(1, generator=rng).item()
            wave = torch.sin(2 * math.pi * (xx * math.cos(angle) + yy * math.sin(angle)) / period + phase)
            colour = torch.randn(3, 1, 1, generator=rng)
            templates[c] += colour * wave
    return templates / templates.flatten(1).std(1).view(-1, 1, 1, 1)


class SyntheticDataModule(ImageDataModule):
    def __init__(
        self,
        num_classes: int = 10,
        image_size: int = 32,
        train_size: int = 2000,
        val_size: int = 500,
        noise: float = 1.0,
        seed: int = 0,
        batch_size: int = 64,
        num_workers: int = 0,
        test_size: int = 0,
    ) -> None:
        super().__init__(batch_size, num_workers, num_classes)
        if num_classes < 2 or image_size < 8 or train_size < 1 or val_size < 1 or test_size < 0 or noise < 0:
            raise ValueError(
                f"synthetic data needs num_classes >= 2, image_size >= 8, train_size/val_size >= 1, test_size >= 0, "
                f"noise >= 0; got {num_classes}, {image_size}, {train_size}/{val_size}/{test_size}, {noise}"
            )
        self.image_size, self.train_size, self.val_size, self.test_size = image_size, train_size, val_size, test_size
        self.noise, self.seed = noise, seed

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (3, self.image_size, self.image_size)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            self.train_set, self.val_set = self._make(self.train_size, split=0), self._make(self.val_size, split=1)
            self.test_set = self._make(self.test_size, split=2) if self.test_size else None

    def _make(self, size: int, split: int) -> TensorDataset:
        """Split 0 trains, 1 validates, 2 tests: each its own images."""
        return make_synthetic_images(size, self.num_classes, self.image_size, self.seed, split=split, noise=self.noise)
