"""Proposal: what the next network is. The proposer owns the generator's sampling, the step, aiming the cut at
the step, redraws and their state, and hands out a typed ``Proposal``; it never judges.

Aiming: the inquisitor aims at an expected saving that counts each channel's cost linearly and ignores rounding,
so a sample cuts more or less than asked. ``aim_cut`` measures what a built network really cuts and corrects the
aim until the cut is within a tolerance of the goal; the synthesis cycles and the family (networks for budgets)
both aim with it.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from torch import nn

from gensynth_pl.collective import Collective

from gensynth_pl.costs import CostContext, Costs, resolve_costs
from gensynth_pl.generator import Generator, KeepLogits
from gensynth_pl.gates import Requirements
from gensynth_pl.graph import Architecture, NetworkGraph
from gensynth_pl.inquisitor import Inquisitor
from gensynth_pl.metrics import macs_per_module
from gensynth_pl.schedule import Schedule
from gensynth_pl.settings import SynthesisSettings
from gensynth_pl.timing import timed

DRAWS_PER_STEP = 8  # samples tried before the step grows, when each one builds the parent's network again
AIMS = 4  # proposals per cycle at most while aiming the cut at the step
AIM_TOLERANCE = 0.25  # a cut within 25% of the step is on target
AIM_RANGE = (0.25, 4.0)  # how far the aim may correct the inquisitor's expected saving

T = TypeVar("T")


def aim_cut(attempt: Callable[[float], tuple[float, T]], goal: Callable[[], float], aim: float, tolerance: float,
            attempts: int) -> tuple[T, float]:
    """Call ``attempt(aim)`` (it proposes, builds and returns the fraction it really cut and its result) until the
    cut is within ``tolerance`` x ``goal()`` of the goal, at most ``attempts`` times; the aim is corrected by
    goal / cut (doubled when nothing was cut), kept inside the bracket of aims that cut too little and too much. Returns the result that came
    closest and the last aim (the next call starts from it)."""
    closest: tuple[float, T] | None = None
    too_little, too_much = AIM_RANGE[0], AIM_RANGE[1]
    for _ in range(attempts):
        cut, result = attempt(aim)
        target = goal()
        distance = abs(cut - target)
        if closest is None or distance < closest[0]:
            closest = (distance, result)
        if distance <= tolerance * target:
            break
        if cut > target:
            too_much = min(too_much, aim)
        else:
            too_little = max(too_little, aim)
        corrected = aim * target / cut if cut > 0 else aim * 2  # nothing cut: ask for more
        aim = corrected if too_little <= corrected <= too_much else math.sqrt(too_little * too_much)
        aim = min(AIM_RANGE[1], max(AIM_RANGE[0], aim))
    return closest[1], aim


@dataclass(frozen=True)
class Proposal:
    """A candidate: its spec, the built network (weights inherited), the seed it was drawn from, how many samples
    were redrawn because they rebuilt the parent, and the fraction of the parent's cost it cuts."""

    arch: Architecture
    network: nn.Module
    seed: int
    redraws: int
    cut: float

    def state_dict(self) -> dict:
        """Everything but the network (a checkpoint holds its weights)."""
        return {"arch": self.arch.to_dict(), "seed": self.seed, "redraws": self.redraws, "cut": self.cut}

    @classmethod
    def restore(cls, state: dict, network: nn.Module) -> "Proposal":
        return cls(Architecture.from_dict(state["arch"]), network, state["seed"], state["redraws"], state["cut"])


class Proposer:
    """The generator's side of a run: G_0 from the trained prototype, Δθ_G from the inquisitor, candidates aimed at
    the step (more while a budget is unmet), lineage updates on acceptance, rollback on rejection."""

    def __init__(self, settings: SynthesisSettings, inquisitor: Inquisitor, requirements: Requirements,
                 schedule: Schedule, collective: Collective) -> None:
        self.settings, self.inquisitor, self.requirements, self.schedule = settings, inquisitor, requirements, schedule
        self.collective = collective
        self.costs: Costs | None = None
        self.generator: Generator | None = None
        self.aim = 1.0  # the correction of the inquisitor's expected saving that makes candidates cut what the step asks
        self.parent_cost = 0.0  # the parent's total cost (MACs or modelled ms): what a candidate's cut is a fraction of
        self.parent_budgets: dict[str, float] = {}  # the parent's value for each budget
        self.after_rejection = False  # the last candidate was rejected: its halved step stands

    def price(self, prototype: nn.Module, context: CostContext) -> None:
        """Decide what a channel costs (before φ trains: a latency model times the prototype's layers)."""
        self.costs = resolve_costs(self.settings.cost)(prototype, context)

    def smallest(self, graph: NetworkGraph, network: nn.Module) -> nn.Module:
        """The smallest network the prototype can become: every group at its floor, every removable block removed."""
        fraction = self.settings.min_channels
        floor = Architecture(
            {g: list(range(max(1, math.ceil(fraction * group.size)))) for g, group in graph.groups.items()},
            list(graph.removable_blocks),
        )
        return graph.materialize(network, graph.full_architecture(), floor)

    def start(self, prototype: nn.Module, graph: NetworkGraph, prototype_config: dict | None,
              budgets: dict[str, float]) -> Generator:
        """G_0 from the trained prototype (it reproduces φ)."""
        s = self.settings
        self.generator = Generator(prototype, graph, s.min_channels, prototype_config, s.channel_multiple)
        self.parent_budgets = dict(budgets)
        return self.generator

    def step(self) -> float:
        """The inquisitor's step, or more while a budget is unmet: what reaching it in the cycles left needs; but
        after a rejection the halved step stands (a forced cut as deep as the one that just failed fails too)."""
        step, schedule = self.inquisitor.step, self.schedule
        if self.after_rejection:
            return step
        left = max(1, (schedule.cycle_budget - schedule.cycle_epochs_used) // schedule.epochs_per_cycle)
        for name, bound in self.requirements.bounds.items():
            value = self.parent_budgets.get(name)
            if value and value > bound:
                step = max(step, min(self.inquisitor.max_step, 1 - (bound / value) ** (1 / left)))
        return step

    def propose(self, cycle: int) -> Proposal:
        """Δθ_G from the inquisitor, then the candidate of ``cycle`` sampled and built, its cut aimed at the step
        (the attempt that came closest is kept, and the aim carries over to the next cycle)."""
        generator = self.generator
        with timed("propose"):
            macs = macs_per_module(generator.parent, generator.input_shape)
            self.parent_cost = self.costs.total(generator.parent, generator.input_shape)

        def attempt(aim: float) -> tuple[float, tuple[KeepLogits, Proposal]]:
            generator.update(self._logits(macs, aim))
            own, seed, redraws = self._draw(cycle, macs, aim)
            arch = self.collective.broadcast(own)
            if not self.collective.all_agree(arch == own):
                raise RuntimeError(f"cycle {cycle}: ranks generated different architectures from the same generator state")
            network = generator.build(arch)
            cut = self.cut(network)
            logits = KeepLogits(dict(generator.channel_logits), dict(generator.block_logits))
            return cut, (logits, Proposal(arch, network, seed, redraws, cut))

        (logits, proposal), self.aim = aim_cut(attempt, self.step, self.aim, AIM_TOLERANCE, AIMS)
        generator.update(logits)
        return proposal

    def cut(self, network: nn.Module) -> float:
        """The fraction of the parent's cost ``network`` removes."""
        with timed("propose"):
            return 1.0 - self.costs.total(network, self.generator.input_shape) / self.parent_cost if self.parent_cost else 0.0

    def _logits(self, macs: dict[str, int], aim: float) -> KeepLogits:
        return self.inquisitor.propose(self.generator, macs, self.parent_cost, aim, step=self.step(), costs=self.costs)

    def _draw(self, cycle: int, macs: dict[str, int], aim: float) -> tuple[Architecture, int, int]:
        """Sample until the architecture differs from the parent's network; after ``DRAWS_PER_STEP`` draws that
        rebuild the parent the step grows and θ_G is proposed again (until the step is at its maximum)."""
        generator, redraws = self.generator, 0
        while True:
            for attempt in range(DRAWS_PER_STEP):
                seed = self.settings.seed * 100_003 + cycle + attempt * 1_000_003
                arch = generator.sample(seed, self.settings.temperature)
                if not generator.graph.same_network(arch, generator.parent_arch):
                    return arch, seed, redraws
                redraws += 1
            if not self.inquisitor.grow_step():
                return arch, seed, redraws  # nothing left to cut at the largest step: the parent is trained again
            generator.update(self._logits(macs, aim))

    def accept(self, arch: Architecture, network: nn.Module, budgets: dict[str, float]) -> None:
        """``network`` was accepted: it becomes the parent."""
        self.generator.accept(arch, network)
        self.parent_budgets = dict(budgets)
        self.after_rejection = False

    def reject(self) -> None:
        """The candidate was rejected: θ_G returns to the last passing generator."""
        self.generator.rollback()
        self.after_rejection = True

    def state_dict(self) -> dict:
        return {"generator": self.generator.state_dict(), "aim": self.aim, "parent_cost": self.parent_cost,
                "parent_budgets": dict(self.parent_budgets), "after_rejection": self.after_rejection}

    def load_state_dict(self, state: dict, prototype: nn.Module, graph: NetworkGraph, prototype_config: dict | None) -> None:
        self.start(prototype, graph, prototype_config, state["parent_budgets"])
        self.generator.load_state_dict(state["generator"])
        self.aim, self.parent_cost, self.after_rejection = state["aim"], state["parent_cost"], state["after_rejection"]
