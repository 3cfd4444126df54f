"""Synthesis quality at GPU scale: full CIFAR-10 training set, ResNet-56 prototype, and a CIFAR-adapted
MobileNetV2 at matched MACs as the hand-designed baseline, next to the CPU-scale comparison's methods.

    python -m benchmarks.gpu_scale                              # on a GPU: all 45,000 images, 5,000 for validation
    python -m benchmarks.gpu_scale --tiny --device cpu          # a small end-to-end run on generated data
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torchvision.models import mobilenet_v2

from benchmarks.common import Contender, compare
from benchmarks.synthesis_quality import datamodule, parser, schedule, width_scaled_resnet
from gensynth_pl.models import cifar_resnet
from gensynth_pl.tasks import ClassificationTask

# MobileNetV2's stages for 32x32 inputs: stem and first downsampling stage at stride 1 (8x overall, not 32x)
CIFAR_SETTING = [[1, 16, 1, 1], [6, 24, 2, 1], [6, 32, 3, 2], [6, 64, 4, 2], [6, 96, 3, 1], [6, 160, 3, 2], [6, 320, 1, 1]]
TINY = dict(synthetic=True, train_subset=64, val_size=64, image_size=16, batch_size=32, depth=8, width=8,
            prototype_epochs=1, cycles=2, epochs_per_cycle=1, probe_batches=3, step=0.4, gate_drop=1.0, channel_multiple=1,
            latency_repeats=2, output=Path("outputs/benchmarks/gpu_scale_tiny.json"))


def cifar_mobilenet_v2(width_mult: float, num_classes: int = 10) -> nn.Module:
    """torchvision's MobileNetV2 with a stride-1 stem for 32x32 images; channels rounded to 1, not 8, so the
    width multiplier can match a MAC budget closely."""
    network = mobilenet_v2(num_classes=num_classes, width_mult=width_mult, inverted_residual_setting=CIFAR_SETTING,
                           round_nearest=1)
    network.features[0][0].stride = (1, 1)
    return network


def mobilenet_contender(seed: int) -> Contender:
    def build(width_mult: float) -> nn.Module:
        torch.manual_seed(seed)
        return cifar_mobilenet_v2(width_mult)

    return Contender("mobilenet_v2", build, 0.05, 2.0)


def main(argv: list[str] | None = None) -> dict:
    p = parser({"train_subset": 0, "val_size": 5_000, "depth": 56, "prototype_epochs": 40, "cycles": 8,
                "epochs_per_cycle": 4, "device": "gpu", "num_workers": 8,
                "output": Path("outputs/benchmarks/gpu_scale.json")})
    p.add_argument("--tiny", action="store_true", help="generated data, ResNet-8, one-epoch phases (checks the pipeline)")
    args = p.parse_args(argv)
    if args.tiny:  # the tiny sizes win over the GPU defaults, but not over --device
        p.set_defaults(**TINY)
        args = p.parse_args(argv)
    input_shape = (3, args.image_size, args.image_size)
    torch.manual_seed(args.seed)
    prototype = cifar_resnet(args.depth, 10, args.width)
    recipe = {"_target_": "gensynth_pl.models.cifar_resnet", "depth": args.depth, "width": args.width, "num_classes": 10}
    contenders = [width_scaled_resnet(args.depth, args.width, 10, args.seed), mobilenet_contender(args.seed)]
    result = compare(prototype, datamodule(args), ClassificationTask(10), schedule(args), input_shape, args.output,
                     from_scratch=contenders, prototype_config=recipe, config=vars(args))
    return result


if __name__ == "__main__":
    main()
