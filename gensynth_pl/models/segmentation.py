"""Semantic-segmentation prototypes: any segmentation-models-pytorch (smp) architecture, and a
Light-Weight RefineNet (Nekrasov et al. 2018) on any smp encoder, wrapped for synthesis."""
from __future__ import annotations

import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from segmentation_models_pytorch.encoders import get_encoder
from torch import Tensor, nn
from torchvision.models.mobilenetv2 import InvertedResidual
from torchvision.models.resnet import BasicBlock, Bottleneck


class Segmenter(nn.Module):
    """A segmentation network prepared for synthesis.

    - Declares its classifier conv as the output layer: its channels are the classes, and tracing
      cannot find it when an upsampling follows it (FPN, DeepLabV3+).
    - Declares the identity-shortcut residual blocks of its encoder as removable.
    - Replaces GroupNorm by BatchNorm: synthesis removes arbitrary channel subsets, and a GroupNorm
      would be left with a channel count its (unchanged) number of groups does not divide.
    - Pads inputs to a multiple of ``stride`` and crops the logits back, so masks always have the
      input's size (e.g. CamVid's 360 rows with a stride-32 encoder).
    """

    def __init__(self, network: nn.Module, head: str, stride: int = 1, in_channels: int = 3) -> None:
        super().__init__()
        classifier = network.get_submodule(head)
        if not isinstance(classifier, nn.Conv2d):
            raise ValueError(f"head '{head}' of {type(network).__name__} is not the classifier Conv2d")
        for name, module in list(network.named_modules()):
            if isinstance(module, nn.GroupNorm):
                network.set_submodule(name, nn.BatchNorm2d(module.num_channels))
        self.network, self.head, self.stride = network, head, stride
        self._check_and_drop_unused(in_channels, classifier.out_channels)

    def _check_and_drop_unused(self, in_channels: int, num_classes: int) -> None:
        """Fail at construction, not mid-run, when the masks do not have the input's size; and replace the
        modules the forward pass never runs (smp keeps e.g. layer3/layer4 of a depth-3 ResNet encoder) by
        identities, so they count neither as parameters nor as removable blocks."""
        size = (2 * self.stride, 3 * self.stride)
        ran: set[str] = set()
        hooks = [
            module.register_forward_hook(lambda *_, name=name: ran.add(name))
            for name, module in self.network.named_modules()
        ]
        self.eval()
        try:
            with torch.no_grad():
                shape = tuple(self.network(torch.zeros(1, in_channels, *size)).shape)
        finally:
            self.train()
            for hook in hooks:
                hook.remove()
        if shape != (1, num_classes, *size):
            raise ValueError(
                f"model: {type(self.network).__name__} maps a {size} input to logits of shape {shape}, expected "
                f"{(1, num_classes, *size)}; for FPN use encoder_depth=5 (or set its upsampling to match the depth)"
            )
        unused = [
            name
            for name, module in self.network.named_modules()
            if any(True for _ in module.parameters()) and not any(r == name or r.startswith(name + ".") for r in ran)
        ]  # containers (ModuleList) never run themselves: they count as used when a child ran
        for name in unused:
            if not any(name.startswith(other + ".") for other in unused):
                self.network.set_submodule(name, nn.Identity())

    def output_layers(self) -> list[str]:
        """The head; for DeepLabV3+ also the decoder's first fusion conv, which reads ASPP's concatenation in
        another channel order than the groups that produce it (the tracer refuses to cut it)."""
        layers = [f"network.{self.head}"]
        if isinstance(self.network, smp.DeepLabV3Plus):
            layers.append("network.decoder.block2.0.0")
        return layers

    def removable_blocks(self) -> list[str]:
        """Residual blocks whose shortcut is the identity: dropping one leaves the stream's shape unchanged."""
        return [
            f"network.{name}"
            for name, module in self.network.named_modules()
            if (isinstance(module, (BasicBlock, Bottleneck)) and module.downsample is None)
            or (isinstance(module, InvertedResidual) and module.use_res_connect)
        ]

    def forward(self, x: Tensor) -> Tensor:
        height, width = x.shape[-2:]
        pad_h, pad_w = -height % self.stride, -width % self.stride
        if not (pad_h or pad_w):
            return self.network(x)
        return self.network(F.pad(x, (0, pad_w, 0, pad_h)))[..., :height, :width]


def smp_segmenter(
    arch: str = "Unet",
    encoder_name: str = "resnet18",
    encoder_depth: int = 5,
    encoder_weights: str | None = None,
    num_classes: int = 11,
    in_channels: int = 3,
    **arch_kwargs,
) -> Segmenter:
    """An smp architecture (Unet, FPN, DeepLabV3Plus, ...) with any smp encoder; ``arch_kwargs`` are the
    architecture's own options (e.g. Unet ``decoder_channels``, FPN ``decoder_pyramid_channels``).
    ``encoder_weights`` defaults to None: prototypes are trained from scratch, nothing is downloaded."""
    try:
        model = smp.create_model(
            arch,
            encoder_name=encoder_name,
            encoder_depth=encoder_depth,
            encoder_weights=encoder_weights,
            in_channels=in_channels,
            classes=num_classes,
            **arch_kwargs,
        )
    except (KeyError, ValueError, TypeError) as error:
        raise ValueError(f"model: cannot build smp {arch} with encoder {encoder_name} (depth {encoder_depth}): {error}") from error
    return Segmenter(model, "segmentation_head.0", model.encoder.output_stride, in_channels)


def _conv_bn(in_channels: int, out_channels: int) -> nn.Sequential:
    """1x1 conv + BatchNorm: the original decoder has no normalisation, and from scratch at the smp models'
    learning rate its chained sums diverge."""
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels))


class ChainedResidualPool(nn.Sequential):
    """Light-Weight RefineNet's CRP: successive 5x5 max-pool + 1x1 conv stages, each added to the input."""

    def __init__(self, channels: int, stages: int) -> None:
        super().__init__(*[_conv_bn(channels, channels) for _ in range(stages)])

    def forward(self, x: Tensor) -> Tensor:
        top = x
        for stage in self:
            top = stage(F.max_pool2d(top, 5, stride=1, padding=2))
            x = x + top
        return x


class LightRefineNet(nn.Module):
    """Light-Weight RefineNet on an smp encoder: from the deepest feature map up to stride 4, each level is
    reduced to ``channels`` by a 1x1 conv, summed with the (1x1 conv, upsampled) coarser path and refined
    by a chained residual pool; a 3x3 classifier at stride 4 is upsampled to the input size. Unlike the
    original, every decoder conv is followed by BatchNorm (see ``_conv_bn``)."""

    def __init__(
        self,
        encoder_name: str = "resnet18",
        encoder_depth: int = 5,
        encoder_weights: str | None = None,
        num_classes: int = 11,
        in_channels: int = 3,
        channels: int = 128,
        crp_stages: int = 4,
    ) -> None:
        super().__init__()
        if encoder_depth < 3 or channels < 1 or crp_stages < 1:
            raise ValueError(
                f"model: LightRefineNet needs encoder_depth >= 3, channels >= 1 and crp_stages >= 1; "
                f"got {encoder_depth}, {channels}, {crp_stages}"
            )
        self.encoder = get_encoder(encoder_name, in_channels=in_channels, depth=encoder_depth, weights=encoder_weights)
        levels = list(reversed(self.encoder.out_channels[2:]))  # deepest first, down to stride 4
        self.reduce = nn.ModuleList(_conv_bn(c, channels) for c in levels)
        self.refine = nn.ModuleList(ChainedResidualPool(channels, crp_stages) for _ in levels)
        self.fuse = nn.ModuleList(_conv_bn(channels, channels) for _ in levels[1:])
        self.head = nn.Conv2d(channels, num_classes, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        features = self.encoder(x)[2:][::-1]
        path: Tensor | None = None
        for level, feature in enumerate(features):
            feature = self.reduce[level](feature)
            if path is not None:
                coarser = self.fuse[level - 1](path)
                feature = feature + F.interpolate(coarser, size=feature.shape[-2:], mode="bilinear", align_corners=False)
            path = self.refine[level](F.relu(feature))
        return F.interpolate(self.head(path), size=x.shape[-2:], mode="bilinear", align_corners=False)


def light_refinenet(
    encoder_name: str = "resnet18",
    encoder_depth: int = 5,
    encoder_weights: str | None = None,
    num_classes: int = 11,
    in_channels: int = 3,
    channels: int = 128,
    crp_stages: int = 4,
) -> Segmenter:
    """A RefineNet-style prototype (RefineNet is the paper's segmentation prototype), in its light-weight form."""
    network = LightRefineNet(encoder_name, encoder_depth, encoder_weights, num_classes, in_channels, channels, crp_stages)
    return Segmenter(network, "head", network.encoder.output_stride, in_channels)
