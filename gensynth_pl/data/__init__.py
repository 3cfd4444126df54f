from gensynth_pl.data.cifar import CIFAR10DataModule, ImageFolderDataModule
from gensynth_pl.data.synthetic import SyntheticDataModule

__all__ = ["CIFAR10DataModule", "ImageFolderDataModule", "SyntheticDataModule"]
