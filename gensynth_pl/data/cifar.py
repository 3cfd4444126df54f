"""CIFAR-10 in its official python-pickle format, and any ImageFolder layout (e.g. CIFAR-10 as JPEGs).

Both gate on a validation split carved out of the training images with a fixed seed. The test split
(CIFAR-10's official test batch; an ImageFolder ``test/`` folder beside ``train/``, or ``test_size`` images
carved from training images nothing else uses) is evaluated after a synthesis and never used for gating.
"""
from __future__ import annotations

from pathlib import Path

from torch.utils.data import Subset
from torchvision.datasets import CIFAR10, ImageFolder

from gensynth_pl.data.common import DecodedImages, ImageDataModule, cifar_transforms, open_image, require_dir


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
            CIFAR10(self.root, train=True, download=True)  # one archive holds the training and the test batches

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
        if (self.root / "cifar-10-batches-py" / "test_batch").is_file():
            self.test_set = CIFAR10(self.root, False, eval_tf)


class CheckedImageFolder(ImageFolder):
    """ImageFolder whose unreadable files raise an error naming the file."""

    def __init__(self, root: str, transform) -> None:
        super().__init__(root, transform=transform, loader=open_image)


class ImageFolderDataModule(ImageDataModule):
    """``root/<class>/<image>`` or ``root/train/<class>/<image>``; validation carved from it by ``seed``. Test split:
    ``root/test/<class>/<image>`` when it exists, else ``test_size`` images carved from the training images.
    ``in_memory``: decode the images used once, at setup, instead of every epoch (small images, e.g. CIFAR's)."""

    def __init__(
        self,
        root: str,
        val_size: int = 5000,
        train_subset: int | None = None,
        test_size: int = 0,
        image_size: int = 32,
        num_classes: int = 10,
        augment: bool = True,
        seed: int = 0,
        batch_size: int = 128,
        num_workers: int = 2,
        in_memory: bool = False,
    ) -> None:
        super().__init__(batch_size, num_workers, num_classes)
        self.root, self.val_size, self.train_subset = Path(root).expanduser(), val_size, train_subset
        self.test_size, self.in_memory = test_size, in_memory
        self.image_size, self.augment, self.seed = image_size, augment, seed
        self.input_shape = (3, image_size, image_size)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        root = require_dir(self.root, "image folder", "set data.root to a folder of <class>/<image> sub-folders (e.g. ../shared/datasets/cifar10)")
        test_dir = root / "test" if (root / "train").is_dir() and (root / "test").is_dir() else None
        if (root / "train").is_dir():
            root = root / "train"
        train_tf, eval_tf = cifar_transforms(self.augment, self.image_size)
        train_view = self._folder(root, train_tf)
        carved = 0 if test_dir else self.test_size
        self._split(train_view, CheckedImageFolder(str(root), eval_tf), self.val_size, self.seed, self.train_subset, carved)
        if test_dir:
            self.test_set = self._folder(test_dir, eval_tf)
            if self.test_set.classes != train_view.classes:
                raise ValueError(f"'{test_dir}' has classes {self.test_set.classes}, the training folder {train_view.classes}")
        if self.in_memory:
            self._decode()

    def _decode(self) -> None:
        """Every split as DecodedImages, with the same transforms working on tensors."""
        train_tf, eval_tf = cifar_transforms(self.augment, self.image_size, decoded=True)
        splits = {"train_set": train_tf, "val_set": eval_tf, "test_set": eval_tf}
        for name, transform in splits.items():
            split = getattr(self, name)
            if split is not None:
                folder, indices = (split.dataset, split.indices) if isinstance(split, Subset) else (split, range(len(split)))
                setattr(self, name, DecodedImages(folder, list(indices), transform))

    def _folder(self, root: Path, transform) -> CheckedImageFolder:
        try:
            folder = CheckedImageFolder(str(root), transform)
        except FileNotFoundError as error:
            raise FileNotFoundError(f"data.root: '{root}' holds no class folders with images ({error})") from error
        if len(folder.classes) != self.num_classes:
            raise ValueError(
                f"data.num_classes={self.num_classes} but '{root}' has {len(folder.classes)} class folders; "
                f"set data.num_classes={len(folder.classes)}"
            )
        return folder
