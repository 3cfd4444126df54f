import math

import torch
from torch import nn

from gensynth_pl.graph import Architecture, NetworkGraph
from gensynth_pl.metrics import count_macs, count_params, information_density, netscore


def small_net() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 4, 1, bias=False),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 2),
    )


def hand_count(c1: int, c2: int) -> tuple[int, int]:
    """MACs and params of small_net with c1/c2 hidden channels on an 8x8 input, counted by hand."""
    macs = c1 * 3 * 9 * 64 + c2 * c1 * 64 + 2 * c2
    params = 3 * c1 * 9 + 2 * c1 + c1 * c2 + 2 * c2 + c2 * 2 + 2
    return macs, params


def test_macs_and_params_match_hand_count_before_and_after_materialisation():
    net = small_net()
    assert (count_macs(net, (3, 8, 8)), count_params(net)) == hand_count(8, 4)

    graph = NetworkGraph.trace(net, (3, 8, 8))
    assert graph.output_layers == ["8"]  # the classifier is found by tracing and never pruned
    assert sorted(g.size for g in graph.groups.values()) == [4, 8]
    arch = Architecture({"0": [0, 2, 3, 5, 7], "3": [1, 2, 3]})
    smaller = graph.materialize(net, graph.full_architecture(), arch)
    assert (count_macs(smaller, (3, 8, 8)), count_params(smaller)) == hand_count(5, 3)
    assert smaller[0].weight.shape == (5, 3, 3, 3) and smaller[3].weight.shape == (3, 5, 1, 1)
    assert torch.equal(smaller[0].weight, net[0].weight[[0, 2, 3, 5, 7]])  # weights are inherited, not re-initialised


def test_netscore_and_information_density_follow_their_definitions():
    # a = 90 %, p = 1 M params, m = 1 G MACs: Ω = 20 log10(90^2 / (1 * 1))
    assert math.isclose(netscore(0.9, 1_000_000, 1_000_000_000), 20 * math.log10(8100))
    assert math.isclose(netscore(0.9, 250_000, 40_000_000), 20 * math.log10(8100 / (0.25**0.5 * 0.04**0.5)))
    assert math.isclose(information_density(0.9, 500_000), 180.0)
    assert netscore(0.0, 1000, 1000) == float("-inf")


def test_counting_macs_gives_each_layer_its_own_mode_back():
    """A network that trains with frozen normalization keeps it frozen after we measure it."""
    network = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4))
    network.train()
    network[1].eval()
    count_macs(network, (3, 8, 8))
    assert [m.training for m in network] == [True, False, True, True, True] and network.training
