"""Judging: whether a network meets the run's requirements, and what follows. The referee owns the requirements,
the recovery allowance, early rejection, the ranking of networks and the choice of the answer and the leader; it
returns typed decisions with their reason and never changes the generator.

Judging a candidate by what it will reach: after one or two epochs a candidate has not recovered, and the polish
recovers more. The referee measures what fine-tuning recovers in this run (a candidate's metric after its last
epoch minus after its first) and accepts intermediate candidates that come within ``recovery_allowance`` times
that recovery of the bound. Only the answer must meet every condition, after its polish; if it does not, the run
keeps the best network that did (or, when none did, the one that comes closest).
"""
from __future__ import annotations

import copy
import dataclasses
import math
import statistics
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from torch import nn

from gensynth_pl.gates import Gate, Requirements
from gensynth_pl.graph import Architecture
from gensynth_pl.metrics import NetScoreUnits, NetworkReport, count_macs, count_params
from gensynth_pl.collective import Collective, SingleProcess
from gensynth_pl.timing import timed
from gensynth_pl.torch_utils import cpu_state_dict


class Reason(str, Enum):
    """Why a network was taken or not."""

    PASSED = "passed"  # every metric gate met
    ALLOWED = "allowed"  # below a bound, within the recovery the run measured: the polish is expected to recover it
    REJECTED_EARLY = "rejected early"  # after its first epoch, even the measured recovery leaves it short
    ROLLED_BACK = "rolled back"  # a metric gate missed: the generator returns to the last passing state
    DIVERGED = "diverged"  # non-finite training loss
    CLOSEST = "closest"  # the polish: not every condition met, but no network comes closer: kept as the answer

    @property
    def accepted(self) -> bool:
        return self in (Reason.PASSED, Reason.ALLOWED, Reason.CLOSEST)


@dataclass(frozen=True)
class Decision:
    """A judged network: the reason, its report (every condition's verdict), the allowance it was judged with and
    the margin the inquisitor learns from (the primary gate's, plus the allowance; -1 when rejected)."""

    reason: Reason
    report: NetworkReport
    allowance: float = 0.0
    margin: float = -1.0
    warnings: tuple[str, ...] = ()  # what the user should know about this decision (each said once per run)

    @property
    def accepted(self) -> bool:
        return self.reason.accepted


@dataclass
class Choice:
    """A network the run may answer with: its spec, a CPU copy, how it measured, the cycle that produced it."""

    arch: Architecture
    network: nn.Module
    report: NetworkReport
    cycle: int

    def state_dict(self) -> dict:
        return {"arch": self.arch.to_dict(), "weights": cpu_state_dict(self.network), "report": self.report.to_dict(),
                "cycle": self.cycle}


def rank(report: NetworkReport) -> tuple:
    """How good an answer a network is: every condition met, its metric gates met, how far its worst budget is
    exceeded (ratio to the bound; 1 when all are met), NetScore."""
    conditions = (report.conditions or {}).values()
    metrics_met = all(v.passed for v in conditions if not v.budget) if report.conditions else report.gate_passed
    excess = max([v.value / v.bound for v in conditions if v.budget] + [1.0])
    return report.gate_passed, metrics_met, -excess, report.netscore


def median_recovery(recoveries: list[list[float]], epochs: float | None = None) -> float | None:
    """The median of ``[rise, epochs]`` pairs' rises (None: none measured); with ``epochs``: the median rise per
    epoch, times ``epochs``."""
    if not recoveries:
        return None
    if epochs is None:
        return statistics.median(rise for rise, _ in recoveries)
    return statistics.median(rise / span for rise, span in recoveries) * epochs


class Referee:
    """Judges the prototype, each cycle's candidate, the polish and any network built later from the generator."""

    def __init__(self, requirements: Requirements, recovery_allowance: float = 0.75,
                 early_reject_margin: float | None = 0.02, netscore_units: NetScoreUnits = NetScoreUnits(),
                 collective: Collective | None = None) -> None:
        self.requirements = requirements
        self.recovery_allowance, self.early_reject_margin = recovery_allowance, early_reject_margin
        self.netscore_units = netscore_units
        self.collective = collective or SingleProcess()
        self.recoveries: list[list[float]] = []  # each candidate's gain toward the bound, first epoch to last, over how many
        self.best: Choice | None = None  # the best network that meets every condition: the answer so far
        self.leader: Choice | None = None  # the best accepted candidate (within the allowance): what the polish takes
        self.warned_undertrained = False
        self.warned_noisy = False

    @property
    def gate(self) -> Gate:
        return self.requirements.primary

    # --- what a network is -------------------------------------------------------------------------
    @timed("record")
    def report(self, network: nn.Module, input_shape: tuple[int, ...], metrics: dict[str, float],
               budgets: dict[str, float] | None = None) -> NetworkReport:
        """Size, cost, metric and every condition's verdict (gate_passed: all of them, as every process agrees).
        ``budgets``: the budgets' values when already known (the same architecture: a latency is not re-measured)."""
        report = NetworkReport.measure(network, input_shape, metrics[self.gate.monitor], False, self.netscore_units)
        if budgets is None:
            budgets = self.requirements.costs(network, input_shape, report.macs, report.params)
        verdicts = self.requirements.verdicts(metrics, budgets)
        passed = self.collective.all_agree(all(v.passed for v in verdicts))
        conditions = {v.name: v for v in verdicts} if len(verdicts) > 1 else None
        return dataclasses.replace(report, gate_passed=passed, conditions=conditions)

    def check_reachable(self, smallest: nn.Module, input_shape: tuple[int, ...], min_channels: float) -> None:
        """Before any training: a budget below the smallest network the prototype can become is an error."""
        values = self.requirements.costs(smallest, input_shape, count_macs(smallest, input_shape), count_params(smallest))
        for name, value in values.items():
            if value > self.requirements.bounds[name]:
                raise ValueError(
                    f"gate.max_{name}: no network can meet {name} <= {self.requirements.bounds[name]:.4g}: the smallest "
                    f"this prototype can become (every group at synthesis.min_channels={min_channels}, every removable "
                    f"block removed, the output layers kept) has {value:.4g}. Raise the budget or lower "
                    "synthesis.min_channels"
                )

    # --- the run's decisions -------------------------------------------------------------------------
    def judge_prototype(self, network: nn.Module, arch: Architecture, input_shape: tuple[int, ...],
                        metrics: dict[str, float], diverged: bool) -> NetworkReport:
        """φ is trained: resolve the gates from its scores; φ is the first answer."""
        metric = metrics[self.gate.monitor]
        if not math.isfinite(metric) or diverged:
            raise FloatingPointError(
                f"the prototype's training diverged ({self.gate.monitor}={metric}, non-finite loss); "
                "lower optimizer.lr or check the data for NaN/inf values"
            )
        self.requirements.resolve(metrics)
        report = self.report(network, input_shape, metrics)
        self._set_best(Choice(arch, network, report, 0))
        failing = [v.describe() for v in self.requirements.verdicts(metrics, None) if not v.passed]
        if failing and self.collective.is_main:
            warnings.warn(
                f"the prototype itself fails the gate ({', '.join(failing)}): candidates are unlikely to pass. Lower "
                "gate.threshold, make it relative, or train the prototype longer (synthesis.prototype_epochs)."
            )
        return report

    def measured_recovery(self, epochs: float | None = None) -> float | None:
        """The median rise of a candidate's metric from its first epoch to its last in this run (None: unmeasured);
        with ``epochs``: over that many further epochs (the median rise per epoch, times ``epochs``)."""
        return median_recovery(self.recoveries, epochs)

    def allowance(self) -> float:
        """How far below the bound an intermediate candidate may be and still be accepted."""
        recovery = self.measured_recovery()
        return self.recovery_allowance * max(recovery, 0.0) if recovery is not None else 0.0

    def rejects_early(self, epochs_into_phase: int, metric: float, epochs_left: int | None = None) -> bool:
        """After a network's first epoch: reject when even the recovery this run measured (over ``epochs_left`` more
        epochs; None: a cycle's) leaves it more than ``early_reject_margin`` below the allowed bound (or its
        training diverged)."""
        if self.early_reject_margin is None or epochs_into_phase != 1:
            return False
        if not math.isfinite(metric):
            return True
        recovery = self.measured_recovery(epochs_left)
        if recovery is None:
            return False
        expected = self.gate.margin(metric) + max(recovery, 0.0) + self.allowance()
        return not self.collective.all_agree(expected + self.early_reject_margin >= 0)

    def judge_candidate(self, network: nn.Module, arch: Architecture, cycle: int, input_shape: tuple[int, ...],
                        metrics: dict[str, float], epoch_metrics: list[float], early: bool, diverged: bool) -> Decision:
        """A cycle's candidate after its epochs (``epoch_metrics``: the primary metric after each): accepted when
        its metric gates are met within the allowance (budgets never block a candidate); an accepted candidate may
        become the leader and the answer."""
        allowance = self.allowance()
        met = all(v.passed for v in self.requirements.verdicts(metrics, None))
        within = all(v.passed for v in self.requirements.verdicts(metrics, None, allowance))
        accepted = not early and self.collective.all_agree(within)
        report = self.report(network, input_shape, metrics)
        if len(epoch_metrics) >= 2 and not diverged:
            rise = self.gate.margin(epoch_metrics[-1]) - self.gate.margin(epoch_metrics[0])  # toward passing, either way
            self.recoveries.append([rise, len(epoch_metrics) - 1])
        if diverged:
            reason = Reason.DIVERGED
        elif early:
            reason = Reason.REJECTED_EARLY
        elif not accepted:
            reason = Reason.ROLLED_BACK
        else:
            reason = Reason.PASSED if self.collective.all_agree(met) else Reason.ALLOWED
        margin = self.gate.margin(metrics[self.gate.monitor]) + allowance if accepted else -1.0
        said = (self._undertrained(report.metric) if accepted else None, self._noisy())
        if accepted:
            choice = Choice(arch, network, report, cycle)
            if self.leader is None or rank(report)[2:] > rank(self.leader.report)[2:]:  # budgets met first, NetScore
                self.leader = Choice(arch, copy.deepcopy(network).cpu(), report, cycle)
            if rank(report) > rank(self.best.report):
                self._set_best(choice)
        return Decision(reason, report, allowance, margin, tuple(w for w in said if w))

    def judge_polish(self, network: nn.Module, input_shape: tuple[int, ...], metrics: dict[str, float]) -> Decision:
        """The polished leader is the answer when it ranks at least as high as the best network so far: it meets
        every condition, or none does and it is the closest. Its budgets are the leader's (the same architecture:
        latency noise cannot rank the polished network below its own unpolished self)."""
        leader = self.leader
        report = self.report(network, input_shape, metrics, leader.report.budgets)
        if rank(report) < rank(self.best.report):
            return Decision(Reason.ROLLED_BACK, report)
        self._set_best(Choice(leader.arch, network, report, leader.cycle))
        return Decision(Reason.PASSED if report.gate_passed else Reason.CLOSEST, report)

    def _undertrained(self, metric: float) -> str | None:
        """An accepted candidate beating φ by more than a relative gate's allowed drop: φ looks under-trained, so the
        gate is weak. Warns once (with the settings that fix it) and returns the warning."""
        gate = self.gate
        if not gate.relative or self.warned_undertrained:
            return None
        gain = metric - gate.prototype_metric if gate.higher_is_better else gate.prototype_metric - metric
        if gain <= gate.threshold:
            return None
        self.warned_undertrained = True
        message = (f"a candidate scores {metric:.4f}, beating the prototype's {gate.prototype_metric:.4f} by more than the "
                f"allowed drop {gate.threshold:g}: the prototype looks under-trained, so a gate relative to it is weak. "
                "Train it longer (synthesis.prototype_epochs) or set an absolute gate (gate.relative=false "
                "gate.threshold=...)")
        return self._say(message)

    def _noisy(self) -> str | None:
        """Fine-tuning that improves no candidate's metric (two or more measured, none rising toward the bound from
        its first epoch to its last, most falling): the metric moves more from epoch to epoch than training moves
        it, so the gate judges noise and early rejection has no recovery to expect. Warns once (with what fixes it)
        and returns the warning."""
        rises = [rise for rise, _ in self.recoveries]
        if self.warned_noisy or len(rises) < 2 or max(rises) > 0 or statistics.median(rises) == 0:  # mostly flat: saturated
            return None
        self.warned_noisy = True
        changes = ", ".join(f"{rise:+.4f}" for rise in rises)
        return self._say(
            f"none of {len(rises)} candidates' {self.gate.monitor} improved with fine-tuning (change toward the bound, "
            f"first epoch to last: {changes}): the metric moves more between epochs than training moves it, so the gate "
            "judges noise. Use a larger validation split, train the prototype longer (synthesis.prototype_epochs), or "
            "widen gate.threshold"
        )

    def _say(self, message: str) -> str:
        """A warning about the run's gate: raised once, by the main process, and returned for the run's log."""
        if self.collective.is_main:
            warnings.warn(message)
        return message

    def _set_best(self, choice: Choice) -> None:
        self.best = Choice(choice.arch, copy.deepcopy(choice.network).cpu(), choice.report, choice.cycle)

    # --- checkpointing -------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"requirements": self.requirements.state_dict(), "recoveries": list(self.recoveries),
                "warned_undertrained": self.warned_undertrained, "warned_noisy": self.warned_noisy,
                "best": self.best.state_dict(), "leader": None if self.leader is None else self.leader.state_dict()}

    def load_state_dict(self, state: dict, rebuild: Callable[[Architecture, dict], nn.Module]) -> None:
        """``rebuild(arch, weights)`` materialises a network of the run's prototype."""

        def choice(saved: dict) -> Choice:
            arch = Architecture.from_dict(saved["arch"])
            return Choice(arch, rebuild(arch, saved["weights"]), NetworkReport.from_dict(saved["report"]), saved["cycle"])

        self.requirements.load_state_dict(state["requirements"])
        self.recoveries = [list(pair) for pair in state["recoveries"]]
        self.warned_undertrained, self.warned_noisy = state["warned_undertrained"], state.get("warned_noisy", False)
        self.best = choice(state["best"])
        self.leader = None if state["leader"] is None else choice(state["leader"])

