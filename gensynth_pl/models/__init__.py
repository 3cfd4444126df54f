from gensynth_pl.models.cifar_resnet import CifarResNet, cifar_resnet

__all__ = ["CifarResNet", "cifar_resnet"]
