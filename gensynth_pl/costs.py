"""What a channel costs, for the inquisitor's information-per-cost ranking: MACs (the default) or measured time.

``synthesis.cost=macs`` counts each channel's share of its layers' MACs; ``synthesis.cost=latency`` uses a
per-layer latency model measured on the target runtime (gensynth_pl.latency.LatencyModel), so the generator
cuts where time goes, not only where MACs go. Both also give a network's total, in the same unit, which the
proposer uses to aim each candidate's cut at the step. The choice is pluggable like the importance rule: a
name from ``COSTS`` or a factory ``(prototype, CostContext) -> Costs``.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from torch import nn

from gensynth_pl.graph import PRUNABLE_TYPES, ChannelGroup
from gensynth_pl.latency import LatencyMeter, LatencyModel
from gensynth_pl.metrics import count_macs


class Costs(Protocol):
    unit: str

    def channel(self, group: ChannelGroup, modules: dict[str, nn.Module], macs: dict[str, int]) -> float: ...

    def block(self, block: str, modules: dict[str, nn.Module], macs: dict[str, int]) -> float: ...

    def total(self, network: nn.Module, input_shape: tuple[int, ...]) -> float: ...


class MacCosts:
    """A channel costs its producers' and consumers' MACs per channel (in the network it is cut from); a unit of a
    tiled group (conv groups, attention heads) costs its tiles' channels."""

    unit = "MACs"

    def channel(self, group: ChannelGroup, modules: dict[str, nn.Module], macs: dict[str, int]) -> float:
        cost = 0.0
        for names, out in ((group.producers, True), (group.consumers, False)):
            for name in names:
                module = modules.get(name)
                if isinstance(module, PRUNABLE_TYPES):
                    cost += macs.get(name, 0) / _width(module, out)
        return max(cost * group.tiles, 1.0)

    def block(self, block: str, modules: dict[str, nn.Module], macs: dict[str, int]) -> float:
        return float(macs.get(block, 0))

    def total(self, network: nn.Module, input_shape: tuple[int, ...]) -> float:
        return float(count_macs(network, input_shape))


class LatencyCosts:
    """A channel costs the milliseconds one more channel adds to its producers and consumers at their current widths
    (a unit of a tiled group: its tiles' channels)."""

    unit = "ms"

    def __init__(self, model: LatencyModel) -> None:
        self.model = model

    def channel(self, group: ChannelGroup, modules: dict[str, nn.Module], macs: dict[str, int]) -> float:
        cost = 0.0
        for names, side in ((group.producers, "out"), (group.consumers, "in")):
            for name in names:
                module = modules.get(name)
                if isinstance(module, PRUNABLE_TYPES) and name in self.model.curves:
                    cost += self.model.slope(name, _width(module, False), _width(module, True), side)
        return max(cost * group.tiles, 1e-9)

    def block(self, block: str, modules: dict[str, nn.Module], macs: dict[str, int]) -> float:
        return sum(
            self.model.layer_ms(name, _width(module, False), _width(module, True))
            for name, module in modules.items()
            if name.startswith(block + ".") and isinstance(module, PRUNABLE_TYPES) and name in self.model.curves
        )

    def total(self, network: nn.Module, input_shape: tuple[int, ...]) -> float:
        return self.model.total(network)


def _width(module: nn.Module, out: bool) -> int:
    if isinstance(module, nn.Linear):
        return module.out_features if out else module.in_features
    return module.out_channels if out else module.in_channels


@dataclass(frozen=True)
class CostContext:
    """What a cost factory may use: the input shape, the requirements' latency settings, where a measured model is
    cached (None: nowhere) and whether this process writes it (one process of several does), and the run's log."""

    input_shape: tuple[int, ...]
    latency: LatencyMeter
    cache: Path | None = None
    writes_cache: bool = True
    log: Callable[[str], None] = print


CostFactory = Callable[[nn.Module, CostContext], Costs]


def mac_costs(prototype: nn.Module, context: CostContext) -> MacCosts:
    return MacCosts()


def latency_costs(prototype: nn.Module, context: CostContext) -> LatencyCosts:
    """A latency model of the prototype's layers: read from the cache when it was measured with these settings."""
    model = LatencyModel.load(context.cache, context.latency) if context.cache is not None else None
    if model is None:
        model = LatencyModel.build(prototype, context.input_shape, context.latency, context.log)
        if context.cache is not None and context.writes_cache:
            model.save(context.cache)
    return LatencyCosts(model)


COSTS: dict[str, CostFactory] = {"macs": mac_costs, "latency": latency_costs}


def resolve_costs(cost: str | CostFactory) -> CostFactory:
    """A cost factory from its name (``COSTS``) or the factory itself."""
    if isinstance(cost, str):
        if cost not in COSTS:
            raise ValueError(f"synthesis.cost={cost!r} is unknown; choose one of {sorted(COSTS)} or pass a factory")
        return COSTS[cost]
    if not callable(cost):
        raise TypeError(f"synthesis.cost must be a cost name or a callable, got {type(cost).__name__}")
    return cost
