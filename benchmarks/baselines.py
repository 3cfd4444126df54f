"""The methods we compare against, built to a MAC budget: channel pruning as Torch-Pruning users run it,
unstructured pruning (Lightning's ModelPruning), and networks trained from scratch at a matched width."""
from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch_pruning as tp
from lightning.pytorch.callbacks import ModelPruning
from torch import nn

from gensynth_pl import count_macs, count_params
from gensynth_pl.graph import find_output_layers

MAC_TOLERANCE = 0.05  # "matched MACs": within 5% of the generated network's MACs


def match_macs(
    build: Callable[[float], nn.Module],
    input_shape: tuple[int, ...],
    target_macs: int,
    low: float,
    high: float,
    increasing: bool,
    resolution: float = 0.0005,
) -> tuple[nn.Module, float, int]:
    """Bisect the knob of ``build`` (a width multiplier or a pruning ratio) until its MACs are within 0.5% of
    the target or the knob is pinned down to ``resolution`` (fine: at small budgets a MAC value the knob can reach may
    lie in a window of the knob only a few thousandths wide); returns the closest network, its knob and MACs."""
    best: tuple[float, nn.Module, float, int] | None = None
    while best is None or high - low > resolution:
        knob = (low + high) / 2
        network = build(knob)
        macs = count_macs(network, input_shape)
        error = abs(macs - target_macs) / target_macs
        if best is None or error < best[0]:
            best = (error, network, knob, macs)
        if error < 0.005:
            break
        if (macs < target_macs) == increasing:
            low = knob
        else:
            high = knob
    return best[1], best[2], best[3]


def channel_pruner(
    network: nn.Module, input_shape: tuple[int, ...], importance: Callable[[], tp.importance.Importance], seed: int
) -> Callable[[float], nn.Module]:
    """``ratio -> copy of network`` with that fraction of every channel group removed (uniform, not global)."""
    output_layers = network.output_layers() if hasattr(network, "output_layers") else find_output_layers(network, input_shape)

    def prune(ratio: float) -> nn.Module:
        torch.manual_seed(seed)  # RandomImportance: the same draw for the same ratio
        pruned = copy.deepcopy(network).eval()
        example = torch.zeros((1, *input_shape), device=next(pruned.parameters()).device)
        pruner = tp.pruner.MetaPruner(
            pruned,
            example,
            importance=importance(),
            pruning_ratio=ratio,
            global_pruning=False,
            ignored_layers=[pruned.get_submodule(name) for name in output_layers],
        )
        pruner.step()
        return pruned.train()

    return prune


CHANNEL_PRUNING = {
    "l1_pruning": lambda: tp.importance.MagnitudeImportance(p=1),
    "random_pruning": tp.importance.RandomImportance,
}


def unstructured_pruning(network: nn.Module, target_params: int) -> tuple[ModelPruning, float]:
    """Lightning's ModelPruning (global L1, unstructured) on conv/linear weights, masking once at the end of the
    first fine-tuning epoch so that ``target_params`` parameters stay non-zero."""
    weights = [(m, "weight") for m in network.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    prunable = sum(m.weight.numel() for m, _ in weights)
    sparsity = min(max((count_params(network) - target_params) / prunable, 0.0), 0.99)
    callback = ModelPruning(
        "l1_unstructured",
        parameters_to_prune=weights,
        amount=lambda epoch: sparsity if epoch == 0 else 0.0,
        use_global_unstructured=True,
        make_pruning_permanent=True,
        verbose=0,
    )
    return callback, sparsity


def count_nonzero(network: nn.Module) -> int:
    return int(sum(int((p != 0).sum()) for p in network.parameters()))


@dataclass
class Contender:
    """A network trained from scratch at matched MACs: ``build(knob)`` with knob bisected in [low, high]
    (MACs grow with the knob), e.g. a width multiplier."""

    name: str
    build: Callable[[float], nn.Module]
    low: float
    high: float


def width_scaled(name: str, build_with_widths: Callable[[tuple[int, int, int]], nn.Module], width: int, seed: int) -> Contender:
    """The prototype's architecture with every stage's width multiplied by the knob, freshly initialised."""

    def build(multiplier: float) -> nn.Module:
        torch.manual_seed(seed)
        return build_with_widths(tuple(max(1, round(multiplier * width * k)) for k in (1, 2, 4)))

    return Contender(name, build, 0.05, 1.0)


def reinitialised(network: nn.Module, seed: int) -> nn.Module:
    """A copy of ``network``'s architecture, freshly initialised (every layer's ``reset_parameters``, seeded) and in
    training mode: what the search found, trained the way the from-scratch baselines are."""
    fresh = copy.deepcopy(network).train()
    torch.manual_seed(seed)
    for module in fresh.modules():
        if module is not fresh and hasattr(module, "reset_parameters"):
            module.reset_parameters()
    return fresh
