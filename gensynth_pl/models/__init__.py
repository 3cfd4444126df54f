from gensynth_pl.models.cifar_resnet import CifarResNet, cifar_resnet
from gensynth_pl.models.detectnet import DetectNet

__all__ = ["CifarResNet", "DetectNet", "cifar_resnet"]
