"""CIFAR-10 in its official python-pickle format, and any ImageFolder layout (e.g. CIFAR-10 as JPEGs).

Both gate on a validation split carved out of the training images with a fixed seed; the official
test split is never used for gating.
"""
from __future__ import annotations

from pathlib import Path

from torchvision.datasets import CIFAR10, ImageFolder

from gensynth_pl.data.common import ImageDataModule, cifar_transforms, open_image, require_dir


class CIFAR10DataModule(ImageDataModule):
    def __init__(
        self,
        root: str = "data/cifar10",
        download: bool = False,
        val_size: int = 5000,
        train_subset: int | None = None,
        augment: bool = True,
        seed: int = 0,
        batch_size: int = 128,
        num_workers: int = 2,
    ) -> None:
        super().__init__(batch_size, num_workers, num_classes=10)
        self.root, self.download, self.val_size = Path(root).expanduser(), download, val_size
        self.train_subset, self.augment, self.seed = train_subset, augment, seed
        self.input_shape = (3, 32, 32)

    def prepare_data(self) -> None:
        if self.download:
            CIFAR10(self.root, train=True, download=True)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        if not (self.root / "cifar-10-batches-py").is_dir():
            raise FileNotFoundError(
                f"data.root: no CIFAR-10 at '{self.root}' (expected {self.root / 'cifar-10-batches-py'}); "
                "set data.root to the folder that holds cifar-10-batches-py, or data.download=true"
            )
        train_tf, eval_tf = cifar_transforms(self.augment)
        self._split(CIFAR10(self.root, True, train_tf), CIFAR10(self.root, True, eval_tf), self.val_size, self.seed, self.train_subset)


class CheckedImageFolder(ImageFolder):
    """ImageFolder whose unreadable files raise an error naming the file."""

    def __init__(self, root: str, transform) -> None:
        super().__init__(root, transform=transform, loader=open_image)


class ImageFolderDataModule(ImageDataModule):
    """``root/<class>/<image>`` or ``root/train/<class>/<image>``; validation carved from it by ``seed``."""

    def __init__(
        self,
        root: str,
        val_size: int = 5000,
        train_subset: int | None = None,
        image_size: int = 32,
        num_classes: int = 10,
        augment: bool = True,
        seed: int = 0,
        batch_size: int = 128,
        num_workers: int = 2,
    ) -> None:
        super().__init__(batch_size, num_workers, num_classes)
        self.root, self.val_size, self.train_subset = Path(root).expanduser(), val_size, train_subset
        self.image_size, self.augment, self.seed = image_size, augment, seed
        self.input_shape = (3, image_size, image_size)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        root = require_dir(self.root, "image folder", "set data.root to a folder of <class>/<image> sub-folders (e.g. ../shared/datasets/cifar10)")
        if (root / "train").is_dir():
            root = root / "train"
        train_tf, eval_tf = cifar_transforms(self.augment, self.image_size)
        try:
            train_view = CheckedImageFolder(str(root), train_tf)
        except FileNotFoundError as error:
            raise FileNotFoundError(f"data.root: '{root}' holds no class folders with images ({error})") from error
        if len(train_view.classes) != self.num_classes:
            raise ValueError(
                f"data.num_classes={self.num_classes} but '{root}' has {len(train_view.classes)} class folders; "
                f"set data.num_classes={len(train_view.classes)}"
            )
        self._split(train_view, CheckedImageFolder(str(root), eval_tf), self.val_size, self.seed, self.train_subset)
