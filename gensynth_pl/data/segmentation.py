"""Semantic-segmentation data from files: (image, label PNG) pairs, augmented jointly; CamVid in the
SegNet layout (``train/``, ``trainannot/``, ``val/``, ``valannot/``, optional ``test/``, ``testannot/``)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2 as T

from gensynth_pl.data.common import ImageDataModule, open_image, require_dir

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def segmentation_transforms(
    image_size: tuple[int, int], crop_size: tuple[int, int] | None, hflip: bool
) -> tuple[T.Compose, T.Compose]:
    """(train, eval) transforms of an (image, Mask) pair: both are resized to ``image_size`` (the mask with
    nearest-neighbour, so class ids stay class ids); training adds the same random crop and flip to both."""
    if crop_size is not None and (crop_size[0] > image_size[0] or crop_size[1] > image_size[1]):
        raise ValueError(f"data.crop_size={list(crop_size)} must fit inside data.image_size={list(image_size)}")
    resize = [T.ToImage(), T.Resize(image_size)]
    to_float = T.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True)  # masks keep their ids
    normalise = [to_float, T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    augment = ([T.RandomCrop(crop_size)] if crop_size is not None else []) + ([T.RandomHorizontalFlip()] if hflip else [])
    return T.Compose(resize + augment + normalise), T.Compose(resize + normalise)


def paired_files(images: Path, annotations: Path) -> list[tuple[Path, Path]]:
    """Every image of ``images`` with the label PNG of the same name in ``annotations``."""
    image_paths = sorted(p for p in images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not image_paths:
        raise FileNotFoundError(f"data.root: no images ({', '.join(IMAGE_SUFFIXES)}) in '{images}'")
    pairs = []
    for image in image_paths:
        annotation = annotations / f"{image.stem}.png"
        if not annotation.is_file():
            raise FileNotFoundError(
                f"annotation '{annotation}' for image '{image}' is missing: every image in {images.name}/ needs a "
                f"label PNG of the same name in {annotations.name}/"
            )
        pairs.append((image, annotation))
    return pairs


class SegmentationFiles(Dataset):
    """(image, label PNG) pairs, checked as they are read: same size, class ids in range or void."""

    def __init__(self, pairs: list[tuple[Path, Path]], transform: T.Compose, num_classes: int, ignore_index: int | None) -> None:
        self.pairs, self.transform = pairs, transform
        self.num_classes, self.ignore_index = num_classes, ignore_index

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        image_path, mask_path = self.pairs[index]
        image, mask = open_image(image_path), open_image(mask_path, mode=None)
        if image.size != mask.size:
            raise ValueError(
                f"annotation '{mask_path}' is {mask.size[0]}x{mask.size[1]} but its image '{image_path}' is "
                f"{image.size[0]}x{image.size[1]}: a label PNG must have its image's size"
            )
        labels = torch.from_numpy(np.array(mask))
        if labels.dim() != 2:
            raise ValueError(f"annotation '{mask_path}' is not a single-channel label image (mode {mask.mode})")
        invalid = labels >= self.num_classes
        if self.ignore_index is not None:
            invalid &= labels != self.ignore_index
        if invalid.any():
            raise ValueError(
                f"annotation '{mask_path}' holds class ids {labels[invalid].unique().tolist()} outside 0..{self.num_classes - 1} "
                f"that are not the void id {self.ignore_index}; check data.num_classes and data.ignore_index"
            )
        image, labels = self.transform(image, tv_tensors.Mask(labels))
        return image.as_subclass(Tensor), labels.as_subclass(Tensor).long()


class CamVidDataModule(ImageDataModule):
    """CamVid (11 classes, id 11 = void) in the SegNet layout; gates on the official val split."""

    def __init__(
        self,
        root: str,
        image_size: tuple[int, int] = (360, 480),
        crop_size: tuple[int, int] | None = None,
        hflip: bool = True,
        num_classes: int = 11,
        ignore_index: int | None = 11,
        batch_size: int = 8,
        num_workers: int = 2,
    ) -> None:
        super().__init__(batch_size, num_workers, num_classes)
        self.root, self.ignore_index = Path(root).expanduser(), ignore_index
        self.image_size = tuple(image_size)
        self.crop_size = tuple(crop_size) if crop_size is not None else None
        self.hflip = hflip
        self.transforms = segmentation_transforms(self.image_size, self.crop_size, hflip)
        self.input_shape = (3, *self.image_size)  # what the networks are measured (MACs) and deployed at

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        require_dir(self.root, "CamVid root", "set data.root to the folder that holds train/, trainannot/, val/ and valannot/")
        train_tf, eval_tf = self.transforms
        self.train_set, self.val_set = self._files("train", train_tf), self._files("val", eval_tf)
        if (self.root / "test").is_dir():
            self.test_set = self._files("test", eval_tf)

    def missing_test_split(self) -> Exception:
        return FileNotFoundError(f"data.root: '{self.root}' has no test/ and testannot/ folders")

    def _files(self, split: str, transform: T.Compose) -> SegmentationFiles:
        hint = f"the SegNet layout has {split}/ (images) and {split}annot/ (label PNGs) under data.root"
        images = require_dir(self.root / split, f"CamVid {split} folder", hint)
        annotations = require_dir(self.root / f"{split}annot", f"CamVid {split}annot folder", hint)
        return SegmentationFiles(paired_files(images, annotations), transform, self.num_classes, self.ignore_index)
