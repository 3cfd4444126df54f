"""Shared pieces of the image datamodules: loaders, the seeded validation carve-out, transforms."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import lightning as L
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Subset
from lightning.pytorch.utilities.model_helpers import is_overridden
from torchvision import transforms as T
from torchvision.transforms.functional import pil_to_tensor

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def carve_split(
    length: int, val_size: int, seed: int, train_subset: int | None = None, test_size: int = 0
) -> tuple[list[int], list[int], list[int]]:
    """Disjoint (train, val, test) indices drawn with a fixed seed: the same split on every machine and run.
    The test images come from the end of the seeded order, so carving them out changes no training or
    validation image as long as ``train_subset`` leaves them unused."""
    if not 0 < val_size < length:
        raise ValueError(f"data.val_size={val_size} must be between 1 and the {length - 1} images available")
    if not 0 <= test_size < length - val_size:
        raise ValueError(f"data.test_size={test_size} must be between 0 and the {length - val_size - 1} images left after validation")
    order = torch.randperm(length, generator=torch.Generator().manual_seed(seed)).tolist()
    val, train, test = order[:val_size], order[val_size : length - test_size], order[length - test_size :]
    if train_subset is not None:
        if not 0 < train_subset <= len(train):
            raise ValueError(f"data.train_subset={train_subset} must be between 1 and {len(train)}")
        train = train[:train_subset]
    return train, val, test


def cifar_transforms(augment: bool, image_size: int = 32, decoded: bool = False) -> tuple[T.Compose, T.Compose]:
    """(train, eval) transforms: pad-crop + flip augmentation for training, CIFAR normalisation for both; of PIL
    images, or of ``decoded`` uint8 tensors (``DecodedImages``)."""
    normalise = [T.ConvertImageDtype(torch.float32) if decoded else T.ToTensor(), T.Normalize(CIFAR_MEAN, CIFAR_STD)]
    resize = [T.Resize((image_size, image_size))] if image_size != 32 else []
    train = resize + ([T.RandomCrop(image_size, padding=image_size // 8), T.RandomHorizontalFlip()] if augment else [])
    return T.Compose(train + normalise), T.Compose(resize + normalise)


class DecodedImages(Dataset):
    """Images of an ImageFolder decoded once into memory (uint8), transformed at every access: for small images,
    decoding a file every epoch costs more than the network's step."""

    def __init__(self, folder, indices: list[int], transform: Callable) -> None:
        self.transform = transform
        samples = [folder.samples[i] for i in indices]
        self.images = [pil_to_tensor(open_image(path)) for path, _ in samples]
        self.targets = [target for _, target in samples]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.images[index]), self.targets[index]


def has_test_split(datamodule: L.LightningDataModule) -> bool:
    """Our datamodules have ``test_set`` once set up (None: no test split); others, a ``test_dataloader``."""
    if hasattr(datamodule, "test_set"):
        datamodule.setup("test")
        return datamodule.test_set is not None
    return is_overridden("test_dataloader", datamodule, L.LightningDataModule)


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
        self.test_set: Dataset | None = None  # set up only where the data has a test split

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

    def test_dataloader(self) -> DataLoader:
        """The test split: it is evaluated after a synthesis and never influences a decision."""
        if self.test_set is None:
            raise self.missing_test_split()
        return self._loader(self.test_set, shuffle=False)

    def missing_test_split(self) -> Exception:
        return ValueError(f"{type(self).__name__} has no test split here: set data.test_size (or its test files)")

    def _split(
        self, train_view: Dataset, val_view: Dataset, val_size: int, seed: int, train_subset: int | None, test_size: int = 0
    ) -> None:
        """Carve train/val (and ``test_size`` test images) out of one dataset seen through two transforms."""
        train_idx, val_idx, test_idx = carve_split(len(train_view), val_size, seed, train_subset, test_size)
        self.train_set, self.val_set = Subset(train_view, train_idx), Subset(val_view, val_idx)
        if test_idx:
            self.test_set = Subset(val_view, test_idx)
