from gensynth_pl.models.cifar_resnet import CifarResNet, cifar_resnet
from gensynth_pl.models.detectnet import DetectNet
from gensynth_pl.models.segmentation import LightRefineNet, Segmenter, light_refinenet, smp_segmenter

__all__ = ["CifarResNet", "DetectNet", "LightRefineNet", "Segmenter", "cifar_resnet", "light_refinenet", "smp_segmenter"]
