from gensynth_pl.data.cifar import CIFAR10DataModule, ImageFolderDataModule
from gensynth_pl.data.segmentation import CamVidDataModule
from gensynth_pl.data.synthetic import SyntheticDataModule
from gensynth_pl.data.synthetic_segmentation import SyntheticSegmentationDataModule

__all__ = [
    "CIFAR10DataModule",
    "CamVidDataModule",
    "ImageFolderDataModule",
    "SyntheticDataModule",
    "SyntheticSegmentationDataModule",
]
