"""Shared pieces of the image datamodules: loaders, the seeded validation carve-out, transforms."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import lightning as L
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision import transforms as T

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def carve_split(length: int, val_size: int, seed: int, train_subset: int | None = None) -> tuple[list[int], list[int]]:
    """Disjoint (train, val) indices drawn with a fixed seed: the same split on every machine and run."""
    if not 0 < val_size < length:
        raise ValueError(f"data.val_size={val_size} must be between 1 and the {length - 1} images available")
    order = torch.randperm(length, generator=torch.Generator().manual_seed(seed)).tolist()
    val, train = order[:val_size], order[val_size:]
    if train_subset is not None:
        if not 0 < train_subset <= len(train):
            raise ValueError(f"data.train_subset={train_subset} must be between 1 and {len(train)}")
        train = train[:train_subset]
    return train, val


def cifar_transforms(augment: bool, image_size: int = 32) -> tuple[T.Compose, T.Compose]:
    """(train, eval) transforms: pad-crop + flip augmentation for training, CIFAR normalisation for both."""
    normalise = [T.ToTensor(), T.Normalize(CIFAR_MEAN, CIFAR_STD)]
    resize = [T.Resize((image_size, image_size))] if image_size != 32 else []
    train = resize + ([T.RandomCrop(image_size, padding=image_size // 8), T.RandomHorizontalFlip()] if augment else [])
    return T.Compose(train + normalise), T.Compose(resize + normalise)


def open_image(path: str | Path, mode: str | None = "RGB") -> Image.Image:
    """Read an image (converted to ``mode``; None keeps it, e.g. the class ids of a label PNG), naming the
    file when it cannot be read."""
    try:
        with Image.open(path) as image:
            return image.convert(mode) if mode else image.copy()  # the copy outlives the closed file
    except (OSError, ValueError) as error:
        raise OSError(f"cannot read image '{path}' ({error}); remove or replace the file") from error


def require_dir(path: str | Path, what: str, hint: str) -> Path:
    path = Path(path).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"data.root: {what} '{path}' does not exist ({path.resolve()}); {hint}")
    return path


class ImageDataModule(L.LightningDataModule):
    """Base for image datamodules: subclasses build ``train_set`` and ``val_set`` in ``setup``.

    ``collate_fn`` batches samples whose targets are not tensors (e.g. detection's per-image box dicts).
    """

    collate_fn: Callable | None = None

    def __init__(self, batch_size: int = 64, num_workers: int = 0, num_classes: int = 10) -> None:
        super().__init__()
        if batch_size < 1 or num_workers < 0:
            raise ValueError(f"data.batch_size={batch_size} must be >= 1 and data.num_workers={num_workers} >= 0")
        self.batch_size, self.num_workers, self.num_classes = batch_size, num_workers, num_classes
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None

    def _loader(self, dataset: Dataset, shuffle: bool) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            collate_fn=self.collate_fn,
            persistent_workers=self.num_workers > 0,
            drop_last=shuffle and len(dataset) > self.batch_size,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)

    def _split(self, train_view: Dataset, val_view: Dataset, val_size: int, seed: int, train_subset: int | None) -> None:
        """Carve train/val out of one dataset seen through two transforms."""
        train_idx, val_idx = carve_split(len(train_view), val_size, seed, train_subset)
        self.train_set, self.val_set = Subset(train_view, train_idx), Subset(val_view, val_idx)
