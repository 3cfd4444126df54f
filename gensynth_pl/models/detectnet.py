"""DetectNet-style prototype (NVIDIA DIGITS' DetectNet): a fully-convolutional network that predicts, on a
grid of ``stride``-pixel cells, the object coverage of every cell (one channel per class) and a box (4 channels).

The backbone is a ResNet (the CIFAR ResNet's basic blocks): a stride-2 stem, then one stage per further
halving of the resolution, each opening with a strided projection block followed by identity-shortcut blocks,
which the generator may drop whole. Two 1x1 heads read the last stage; their outputs are the network's output,
so they are declared as output layers and never pruned.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from gensynth_pl.models.cifar_resnet import BasicBlock


class DetectNet(nn.Module):
    """Output: ``(N, num_classes + 4, H / stride, W / stride)`` — coverage logits, then the box regression."""

    def __init__(
        self,
        num_classes: int = 1,
        width: int = 16,
        stride: int = 16,
        blocks_per_stage: int = 2,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if stride < 4 or stride & (stride - 1):
            raise ValueError(f"model.stride={stride} must be a power of two >= 4 (4, 8, 16, 32)")
        if num_classes < 1 or width < 1 or blocks_per_stage < 1:
            raise ValueError(
                f"model.num_classes ({num_classes}), model.width ({width}) and model.blocks_per_stage "
                f"({blocks_per_stage}) must be positive"
            )
        self.num_classes, self.stride = num_classes, stride
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, 2, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)
        )
        stages, channels = [], width
        for stage in range(int(math.log2(stride)) - 1):  # the stem halves once, every stage once more
            stage_width = width * 2**stage
            blocks = [BasicBlock(channels, stage_width, 2)]
            blocks += [BasicBlock(stage_width, stage_width, 1) for _ in range(blocks_per_stage - 1)]
            stages.append(nn.Sequential(*blocks))
            channels = stage_width
        self.stages = nn.Sequential(*stages)
        self.coverage = nn.Conv2d(channels, num_classes, 1)
        self.bbox = nn.Conv2d(channels, 4, 1)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        # coverage starts near the prior of a sparse grid (RetinaNet's p=0.01), so early losses are not swamped
        nn.init.normal_(self.coverage.weight, std=0.01)
        nn.init.constant_(self.coverage.bias, -math.log(99.0))
        nn.init.normal_(self.bbox.weight, std=0.01)
        nn.init.zeros_(self.bbox.bias)

    def removable_blocks(self) -> list[str]:
        return [name for name, module in self.named_modules() if isinstance(module, BasicBlock) and module.removable]

    def output_layers(self) -> list[str]:
        return ["coverage", "bbox"]

    def forward(self, x: Tensor) -> Tensor:
        features = self.stages(self.stem(x))
        return torch.cat([self.coverage(features), self.bbox(features)], dim=1)

