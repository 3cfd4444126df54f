"""CIFAR-style ResNets (He et al. 2015, section 4.2): 6n+2 layers, three stages, configurable width."""
from __future__ import annotations

from torch import Tensor, nn


class BasicBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    @property
    def removable(self) -> bool:
        """A block with an identity shortcut can be dropped whole: the stream passes through unchanged."""
        return isinstance(self.shortcut, nn.Identity)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-{6n+2} for 32x32 inputs. ``width`` is the channel count of the first stage (16 in the paper);
    ``stage_widths`` sets the three stages' channel counts directly (e.g. a width-scaled baseline)."""

    def __init__(
        self,
        depth: int = 20,
        num_classes: int = 10,
        width: int = 16,
        in_channels: int = 3,
        stage_widths: tuple[int, int, int] | None = None,
    ) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6 != 0:
            raise ValueError(f"model.depth={depth} is not a CIFAR ResNet depth; use 6n+2, e.g. 20, 32, 56 or 110")
        stage_widths = tuple(stage_widths) if stage_widths is not None else (width, 2 * width, 4 * width)
        if len(stage_widths) != 3 or min(stage_widths) < 1 or num_classes < 1:
            raise ValueError(f"model.width/stage_widths ({stage_widths}) and num_classes ({num_classes}) must be positive")
        blocks_per_stage = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, stage_widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(stage_widths[0])
        self.relu = nn.ReLU(inplace=True)
        stages, channels = [], stage_widths[0]
        for stage, stage_width in enumerate(stage_widths):
            blocks = []
            for index in range(blocks_per_stage):
                stride = 2 if stage > 0 and index == 0 else 1
                blocks.append(BasicBlock(channels, stage_width, stride))
                channels = stage_width
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def removable_blocks(self) -> list[str]:
        return [name for name, module in self.named_modules() if isinstance(module, BasicBlock) and module.removable]

    def output_layers(self) -> list[str]:
        return ["fc"]

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.pool(x).flatten(1))


def cifar_resnet(
    depth: int = 20,
    num_classes: int = 10,
    width: int = 16,
    in_channels: int = 3,
    stage_widths: tuple[int, int, int] | None = None,
) -> CifarResNet:
    return CifarResNet(depth=depth, num_classes=num_classes, width=width, in_channels=in_channels, stage_widths=stage_widths)
