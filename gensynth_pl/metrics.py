"""Cost and efficiency metrics, always measured on a real (materialised) module."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from gensynth_pl.torch_utils import evaluating


@dataclass(frozen=True)
class NetScoreUnits:
    """Units and exponents of NetScore (Wong 2018): Ω = 20·log10(a^α / (p^β · m^γ))."""

    alpha: float = 2.0
    beta: float = 0.5
    gamma: float = 0.5
    params_unit: float = 1e6  # p in millions of parameters
    macs_unit: float = 1e9  # m in billions of MACs


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _run_counted(module: nn.Module, input_shape: tuple[int, ...]) -> FlopCounterMode:
    """Run one batch-1 forward pass in eval mode under FlopCounterMode; restores the training flag."""
    device = next(module.parameters()).device
    counter = FlopCounterMode(display=False)
    with evaluating(module), counter, torch.no_grad():
        module(torch.zeros((1, *input_shape), device=device))
    return counter


def count_macs(module: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of one forward pass at batch 1 (FLOPs / 2)."""
    return _run_counted(module, input_shape).get_total_flops() // 2


def macs_per_module(module: nn.Module, input_shape: tuple[int, ...]) -> dict[str, int]:
    """MACs of each named submodule (names as in ``named_modules``; nested modules include children)."""
    counts = _run_counted(module, input_shape).get_flop_counts()
    per_module: dict[str, int] = {}
    for key, ops in counts.items():
        if key == "Global":
            continue
        name = key.split(".", 1)[1] if "." in key else ""
        per_module[name] = sum(ops.values()) // 2
    return per_module


def netscore(metric: float, params: int, macs: int, units: NetScoreUnits = NetScoreUnits()) -> float:
    """NetScore Ω with the metric given as a fraction in [0, 1] (converted to %)."""
    accuracy = 100.0 * metric
    if accuracy <= 0:
        return float("-inf")
    p = params / units.params_unit
    m = macs / units.macs_unit
    return 20.0 * math.log10(accuracy**units.alpha / (p**units.beta * m**units.gamma))


def information_density(metric: float, params: int) -> float:
    """Accuracy (%) per million parameters (Canziani et al.)."""
    return 100.0 * metric / (params / 1e6)


@dataclass(frozen=True)
class Verdict:
    """One condition of the requirements on one network: a metric gate or a cost budget."""

    name: str  # the metric ("val/acc") or the budget ("macs", "params", "latency_ms")
    value: float
    bound: float
    passed: bool
    budget: bool  # a cost ceiling (it never blocks an intermediate candidate): the one definition of a budget
    op: str = ">="

    def describe(self) -> str:
        return f"{self.name} {self.value:.4g} ({'meets' if self.passed else 'misses'} {self.op} {self.bound:.4g})"


@dataclass(frozen=True)
class NetworkReport:
    """What a run reports for one network: size, cost, its gate metric and derived scores."""

    params: int
    macs: int
    metric: float
    netscore: float
    information_density: float
    gate_passed: bool
    test: dict[str, float] | None = None  # metrics on the data's test split, measured after the synthesis
    conditions: dict[str, Verdict] | None = None  # with several requirements: each one's verdict, by name

    @classmethod
    def measure(
        cls,
        module: nn.Module,
        input_shape: tuple[int, ...],
        metric: float,
        gate_passed: bool,
        units: NetScoreUnits = NetScoreUnits(),
        test: dict[str, float] | None = None,
    ) -> "NetworkReport":
        params, macs = count_params(module), count_macs(module, input_shape)
        return cls(
            params=params,
            macs=macs,
            metric=float(metric),
            netscore=netscore(metric, params, macs, units),
            information_density=information_density(metric, params),
            gate_passed=bool(gate_passed),
            test=test,
        )

    @property
    def budgets(self) -> dict[str, float]:
        """The network's value for each budget it was judged against."""
        return {name: v.value for name, v in (self.conditions or {}).items() if v.budget}

    def unmet(self) -> list[Verdict]:
        return [v for v in (self.conditions or {}).values() if not v.passed]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "NetworkReport":
        """The inverse of ``to_dict`` (keys it does not know, such as a cycle entry's, are ignored)."""
        values = {f.name: data[f.name] for f in fields(cls) if f.name in data}
        if values.get("conditions") is not None:
            values["conditions"] = {name: Verdict(**verdict) for name, verdict in values["conditions"].items()}
        return cls(**values)
