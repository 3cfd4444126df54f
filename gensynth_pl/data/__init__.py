from gensynth_pl.data.cifar import CIFAR10DataModule, ImageFolderDataModule
from gensynth_pl.data.coco import CocoDetectionDataModule, load_coco
from gensynth_pl.data.detection import DetectionDataModule, collate_detection
from gensynth_pl.data.segmentation import CamVidDataModule
from gensynth_pl.data.synthetic import SyntheticDataModule
from gensynth_pl.data.synthetic_detection import SyntheticDetectionDataModule
from gensynth_pl.data.synthetic_segmentation import SyntheticSegmentationDataModule

__all__ = [
    "CIFAR10DataModule",
    "CamVidDataModule",
    "CocoDetectionDataModule",
    "DetectionDataModule",
    "ImageFolderDataModule",
    "SyntheticDataModule",
    "SyntheticDetectionDataModule",
    "SyntheticSegmentationDataModule",
    "collate_detection",
    "load_coco",
]
