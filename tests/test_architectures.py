"""Architectures users bring: grouped and depthwise convolutions, channel shuffles, concatenations, channels-last
LayerNorm, attention heads and squeeze-and-excitation, each as a tiny network (mostly torchvision's and timm's own
constructors at toy widths), traced, probed and cut, with pruned networks checked against their parent."""
import copy

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from gensynth_pl.generator import Generator
from gensynth_pl.graph import Architecture, NetworkGraph
from gensynth_pl.inquisitor import Inquisitor


def drop(graph: NetworkGraph, units: dict[str, list[int]]) -> Architecture:
    """The full architecture less the given unit indices of the given groups."""
    full = graph.full_architecture()
    return Architecture({g: [u for u in kept if u not in units.get(g, [])] for g, kept in full.channels.items()})


def masked_parent(parent: nn.Module, graph: NetworkGraph, arch: Architecture) -> nn.Module:
    """The parent with every consumer's input weights zeroed at the channels ``arch`` drops (consumers that read a
    group's channels in its own order): if the cut is right, it computes what the pruned network computes."""
    masked = copy.deepcopy(parent)
    modules = dict(masked.named_modules())
    for group_id, group in graph.groups.items():
        dropped = [u for u in range(group.size) if u not in arch.channels[group_id]]
        for channel in group.channel_positions(dropped, group.size):
            for name in group.consumers:
                layer = modules[name]
                if isinstance(layer, nn.Conv2d) and layer.groups > 1:  # the outputs of the conv group reading it
                    per_group, outputs = layer.in_channels // layer.groups, layer.out_channels // layer.groups
                    first = channel // per_group * outputs
                    layer.weight.data[first : first + outputs, channel % per_group] = 0
                else:
                    layer.weight.data[:, channel] = 0
    return masked


def assert_cut_is_exact(parent: nn.Module, graph: NetworkGraph, arch: Architecture, input_shape) -> nn.Module:
    pruned = graph.materialize(parent, graph.full_architecture(), arch).eval()
    x = torch.randn(3, *input_shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), masked_parent(parent, graph, arch).eval()(x), atol=1e-5, rtol=1e-5)
    return pruned


class GroupedNet(nn.Module):
    """A RegNet/ResNeXt-style bottleneck: a grouped 3x3 convolution between two 1x1 convolutions."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.grouped = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=4), nn.BatchNorm2d(16), nn.ReLU())
        self.reduce = nn.Sequential(nn.Conv2d(16, 8, 1), nn.BatchNorm2d(8), nn.ReLU())
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(self.reduce(self.grouped(self.stem(x))).mean((2, 3)))


def test_grouped_convolution_keeps_equal_groups_and_computes_what_its_parent_did():
    torch.manual_seed(0)
    net = GroupedNet().eval()
    graph = NetworkGraph.trace(net, (3, 8, 8))
    into, out_of = graph.groups["stem.0"], graph.groups["grouped.0"]
    assert (into.tiles, into.size) == (4, 4) and (out_of.tiles, out_of.size) == (4, 4)  # 4 conv groups of 4 channels
    assert graph.groups["reduce.0"].tiles == 1
    arch = drop(graph, {"stem.0": [1, 2], "grouped.0": [0]})
    pruned = assert_cut_is_exact(net, graph, arch, (3, 8, 8))
    conv = pruned.grouped[0]
    assert (conv.in_channels, conv.out_channels, conv.groups) == (8, 12, 4)  # the same positions left every group


def test_grouped_convolutions_of_a_torchvision_regnet_are_cut_consistently():
    torch.manual_seed(0)
    regnet = torchvision.models.RegNet(
        torchvision.models.regnet.BlockParams.from_init_params(depth=2, w_0=16, w_a=8.0, w_m=2.0, group_width=8),
        num_classes=4,
    ).eval()
    graph = NetworkGraph.trace(regnet, (3, 16, 16))
    tiled = [g for g in graph.groups.values() if g.tiles > 1]
    assert tiled and all(g.size * g.tiles in (16, 32, 48, 64) for g in tiled)
    assert_cut_is_exact(regnet, graph, drop(graph, {g.id: [0] for g in tiled}), (3, 16, 16))


def test_channel_shuffle_keeps_the_shuffled_stream_and_prunes_the_branches():
    torch.manual_seed(0)
    net = torchvision.models.ShuffleNetV2([2, 1, 1], [8, 16, 32, 64, 64], num_classes=4).eval()
    graph = NetworkGraph.trace(net, (3, 32, 32))
    assert graph.kept_whole and all("channel" in reason for reason in graph.kept_whole.values())
    assert {"conv1.0", "stage2.0.branch2.0", "stage2.1.branch2.0", "conv5.0"} <= set(graph.groups)
    assert not any(name.endswith("branch2.5") or name.endswith("branch1.2") for g in graph.groups.values() for name in g.producers)
    arch = drop(graph, {g: [0, 3] for g in graph.groups})
    pruned = assert_cut_is_exact(net, graph, arch, (3, 32, 32))
    assert pruned.stage2[1].branch2[0].out_channels == 6 and pruned.stage2[1].branch2[5].out_channels == 8


class ConcatNet(nn.Module):
    """Two convolutions concatenated and normalised together, as in a DenseNet layer's input."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(3, 6, 3, padding=1)
        self.norm = nn.BatchNorm2d(10)
        self.fc = nn.Linear(10, 3)

    def forward(self, x):
        return self.fc(F.relu(self.norm(torch.cat([self.a(x), self.b(x)], 1))).mean((2, 3)))


def expected_taylor(network: nn.Module, layer: nn.Module, loss_of, channel_axis: int) -> torch.Tensor:
    """|Σ a·dL/da| per sample over every axis but the channel axis, summed over the batch, from the layer's output."""
    seen = {}

    def hook(module, inputs, output):
        output.retain_grad()
        seen["output"] = output

    handle = layer.register_forward_hook(hook)
    loss_of(network).backward()
    handle.remove()
    a = seen["output"]
    moved = (a * a.grad).detach().movedim(channel_axis, -1)
    return moved.reshape(moved.shape[0], -1, moved.shape[-1]).sum(1).abs().sum(0)


def probe_taylor(network: nn.Module, graph: NetworkGraph, arch: Architecture, loss_of) -> dict:
    probe = Inquisitor().attach(network, graph, arch)
    loss_of(network).backward()
    result = probe.detach()
    network.zero_grad()
    return result


def test_probe_credits_each_concatenated_producer_its_own_slice():
    torch.manual_seed(0)
    net = ConcatNet().eval()
    x, y = torch.randn(4, 3, 6, 6), torch.randint(0, 3, (4,))
    graph = NetworkGraph.trace(net, (3, 6, 6))
    assert graph.module_channels["norm"].owners[5] == ("b", 1)  # the norm holds a's 4 channels, then b's 6
    arch = drop(graph, {"a": [0, 2], "b": [5]})
    pruned = graph.materialize(net, graph.full_architecture(), arch).eval()

    def loss_of(network):
        return F.cross_entropy(network(x), y)

    result = probe_taylor(pruned, graph, arch, loss_of)
    expected = expected_taylor(pruned, pruned.norm, loss_of, 1)  # the pruned norm's 7 channels: a's 2, then b's 5
    torch.testing.assert_close(result.taylor["a"], expected[:2])
    torch.testing.assert_close(result.taylor["b"], expected[2:])
    assert result.magnitude["b"].shape == (5,) and result.responses["a"].shape == (4, 2)
    dense = torchvision.models.DenseNet(growth_rate=4, block_config=(2, 2), num_init_features=8, bn_size=2, num_classes=3)
    generator = Generator.from_prototype(dense, (3, 32, 32))
    result = probe_taylor(dense.eval(), generator.graph, generator.parent_arch, lambda n: F.cross_entropy(n(torch.randn(2, 3, 32, 32)), y[:2]))
    assert all(result.taylor[g].shape == (group.size,) for g, group in generator.graph.groups.items())


class ChannelsLastNet(nn.Module):
    """A ConvNeXt block (torchvision's own) between a stem and a classifier: depthwise conv, channels-last LayerNorm and
    linear layers, a layer scale."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 2, stride=2)
        self.block = torchvision.models.convnext.CNBlock(8, layer_scale=0.5, stochastic_depth_prob=0.0)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc(self.block(self.stem(x)).mean((2, 3)))


def test_channels_last_layernorm_and_token_dimensions_are_probed_on_their_channel_axis():
    torch.manual_seed(0)
    net = ChannelsLastNet().eval()
    x, y = torch.randn(4, 3, 10, 10), torch.randint(0, 3, (4,))
    graph = NetworkGraph.trace(net, (3, 10, 10))
    hidden = graph.groups["block.block.3"]  # the 4x-wide linear layer, channels last
    assert hidden.size == 32 and "block.block.2" in graph.groups["stem"].producers  # the LayerNorm normalises the stream
    result = probe_taylor(net, graph, graph.full_architecture(), lambda n: F.cross_entropy(n(x), y))
    torch.testing.assert_close(result.taylor[hidden.id], expected_taylor(net, net.block.block[3], lambda n: F.cross_entropy(n(x), y), -1))
    torch.testing.assert_close(result.taylor["stem"], expected_taylor(net, net.block.block[2], lambda n: F.cross_entropy(n(x), y), -1))
    pruned = graph.materialize(net, graph.full_architecture(), drop(graph, {"stem": [1], hidden.id: list(range(8))}))
    assert pruned.block.layer_scale.shape == (7, 1, 1) and pruned(x).shape == (4, 3)

    vit = torchvision.models.VisionTransformer(16, 8, num_layers=1, num_heads=2, hidden_dim=8, mlp_dim=16, num_classes=3).eval()
    graph = NetworkGraph.trace(vit, (3, 16, 16))
    mlp = vit.encoder.layers[0].mlp[0]
    images = torch.randn(4, 3, 16, 16)
    result = probe_taylor(vit, graph, graph.full_architecture(), lambda n: F.cross_entropy(n(images), y))
    expected = expected_taylor(vit, mlp, lambda n: F.cross_entropy(n(images), y), -1)  # (batch, tokens, 16): over the tokens
    torch.testing.assert_close(result.taylor["encoder.layers.encoder_layer_0.mlp.0"], expected)


def test_attention_heads_are_cut_alike_in_every_head():
    import timm

    torch.manual_seed(0)
    vit = torchvision.models.VisionTransformer(16, 8, num_layers=1, num_heads=2, hidden_dim=8, mlp_dim=16, num_classes=3).eval()
    graph = NetworkGraph.trace(vit, (3, 16, 16))
    stream = graph.groups["conv_proj"]  # the embedding dimension: each head keeps the same positions
    assert (stream.size, stream.tiles) == (4, 2)
    pruned = graph.materialize(vit, graph.full_architecture(), drop(graph, {"conv_proj": [3]}))
    attention = pruned.encoder.layers[0].self_attention
    assert (pruned.hidden_dim, attention.embed_dim, attention.num_heads, attention.head_dim) == (6, 6, 2, 3)
    assert pruned(torch.randn(2, 3, 16, 16)).shape == (2, 3)

    timm_vit = timm.models.vision_transformer.VisionTransformer(
        img_size=16, patch_size=8, embed_dim=8, depth=1, num_heads=2, mlp_ratio=2, num_classes=3
    ).eval()
    graph = NetworkGraph.trace(timm_vit, (3, 16, 16))
    qkv = graph.groups["blocks.0.attn.qkv"]  # q, k and v of each head: 6 tiles of the head dimension
    assert (qkv.size, qkv.tiles) == (4, 6)
    arch = drop(graph, {qkv.id: [1]})
    pruned = graph.materialize(timm_vit, graph.full_architecture(), arch).eval()
    assert (pruned.blocks[0].attn.head_dim, pruned.blocks[0].attn.qkv.out_features) == (3, 18)
    masked = copy.deepcopy(timm_vit)  # dimension 1 of every head's q, k and v is zero: the same attention
    rows = qkv.channel_positions([1], qkv.size)
    masked.blocks[0].attn.qkv.weight.data[rows] = 0
    masked.blocks[0].attn.qkv.bias.data[rows] = 0
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), masked(x), atol=1e-5, rtol=1e-5)


class ExcitedNet(nn.Module):
    """A squeeze-and-excitation block (torchvision's) scaling the channels of a convolution."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.excite = torchvision.ops.SqueezeExcitation(8, 4)
        self.head = nn.Conv2d(8, 6, 1)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        return self.fc(self.head(self.excite(self.conv(x))).mean((2, 3)))


def test_squeeze_and_excitation_scales_are_cut_with_the_channels_they_scale():
    torch.manual_seed(0)
    net = ExcitedNet().eval()
    graph = NetworkGraph.trace(net, (3, 8, 8))
    assert "excite.fc2" in graph.groups["conv.0"].producers and "excite.fc1" in graph.groups["conv.0"].consumers
    pruned = assert_cut_is_exact(net, graph, drop(graph, {"conv.0": [0, 5], "excite.fc1": [2]}), (3, 8, 8))
    assert (pruned.excite.fc1.in_channels, pruned.excite.fc1.out_channels, pruned.excite.fc2.out_channels) == (6, 3, 6)


class OutputReshape(nn.Module):
    """A detection-style head: a convolution whose channels become (anchors, values) of the output."""

    def __init__(self, hard_coded: bool = False) -> None:
        super().__init__()
        self.hard_coded = hard_coded
        self.stem = nn.Conv2d(3, 5, 3, padding=1)
        self.features = nn.Conv2d(5, 8, 3, padding=1)
        self.boxes = nn.Conv2d(8, 12, 1)

    def forward(self, x):
        features = F.relu(self.features(F.relu(self.stem(x))))
        if self.hard_coded:  # a width written into the forward: pruning ``features`` cannot work
            features = features.reshape(features.shape[0], 8, -1).mean(2)[..., None, None]
        boxes = self.boxes(features)
        return boxes.view(boxes.shape[0], 3, 4, *boxes.shape[2:]).permute(0, 3, 4, 1, 2).reshape(boxes.shape[0], -1, 4)


def test_channels_reaching_the_output_through_a_reshape_are_kept_and_a_breaking_group_is_named():
    graph = NetworkGraph.trace(OutputReshape(), (3, 4, 4))
    assert set(graph.groups) == {"stem", "features"} and "boxes" in graph.kept_whole  # the 12 box channels are the output
    with pytest.raises(ValueError, match=r"pruning the channels of 'features' breaks the network.*output_layers=\['features'\]"):
        NetworkGraph.trace(OutputReshape(hard_coded=True), (3, 4, 4))
    kept = NetworkGraph.trace(OutputReshape(hard_coded=True), (3, 4, 4), output_layers=["features"])
    assert set(kept.groups) == {"stem"}
