"""The synthesis loop, free of any Trainer: generator, inquisitor, gate, schedule, record and best network.

Whoever trains the networks (the Lightning callback, a test, a script) calls ``end_epoch`` after every
training epoch with the network and its validation metric; the loop decides (conclude the prototype,
conclude a cycle or reject its candidate early, propose the next candidate, polish the best one) and
returns the network to train next when a phase starts with a new one. Probing is attached and detached
around the batches the schedule names; distillation from φ is attached to every network the loop hands
out. Work that must agree across processes (gate decisions, probe insights, sampled architectures) goes
through a ``Collective``; the default is a single process.

Judging a candidate by what it will reach: after one or two epochs a candidate has not recovered, and the
polish recovers more. The loop measures what fine-tuning recovers in this run (a candidate's metric after
its last epoch minus after its first) and accepts intermediate candidates that come within
``recovery_allowance`` times that recovery of the bound. Only the answer must pass the real gate, after its
polish; if it does not, the run falls back to the best network that did, and says so.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from gensynth_pl.distillation import DistillationLoss, Distiller, check_distillation_settings, soft_target_loss
from gensynth_pl.export import export_onnx, save_network
from gensynth_pl.costs import COSTS, LatencyCosts
from gensynth_pl.gates import BUDGETS, Gate, Requirements, Verdict
from gensynth_pl.generator import Generator, KeepLogits
from gensynth_pl.graph import Architecture, NetworkGraph
from gensynth_pl.inquisitor import CycleOutcome, Inquisitor, Probe, ProbeResult
from gensynth_pl.latency import LatencyModel
from gensynth_pl.metrics import NetScoreUnits, NetworkReport, count_macs, count_params, macs_per_module
from gensynth_pl.record import CycleEntry, PolishEntry, SynthesisRecord
from gensynth_pl.report import cycle_header, cycle_row, epoch_line, final_summary, pareto_plot, polish_line
from gensynth_pl.rundir import ONNX_FILE, RunDirectory
from gensynth_pl.schedule import CYCLE, POLISH, PROTOTYPE, Schedule
from gensynth_pl.timing import timed
from gensynth_pl.torch_utils import cpu_state_dict

DRAWS_PER_STEP = 8  # samples tried before the step grows, when each one builds the parent's network again
AIMS = 4  # proposals per cycle at most while aiming the cut at the step
AIM_TOLERANCE = 0.25  # a cut within 25% of the step is on target


class Collective(Protocol):
    """How the loop keeps several training processes in agreement (DDP); a single process needs nothing."""

    is_main: bool

    def all_agree(self, decision: bool) -> bool: ...

    def mean(self, value: Tensor) -> Tensor: ...

    def broadcast(self, obj: Any) -> Any: ...


class SingleProcess:
    is_main = True

    def all_agree(self, decision: bool) -> bool:
        return decision

    def mean(self, value: Tensor) -> Tensor:
        return value

    def broadcast(self, obj: Any) -> Any:
        return obj


@dataclasses.dataclass
class Choice:
    """A network the run may answer with: its spec, a CPU copy, how it measured, the cycle that produced it."""

    arch: Architecture
    network: nn.Module
    report: NetworkReport
    cycle: int

    def state_dict(self) -> dict:
        return {"arch": self.arch.to_dict(), "weights": cpu_state_dict(self.network), "report": self.report.to_dict(),
                "cycle": self.cycle}


class SynthesisLoop:
    """Generative synthesis of one prototype: see the module docstring for how it is driven.

    ``recovery_allowance`` scales the measured recovery into the allowance (0: every candidate must pass the real
    bound); ``early_reject_margin``: a candidate whose first-epoch metric, plus the recovery this run measured,
    stays more than this below the allowed bound is rejected after that epoch (None: never); ``distill_weight``
    and ``distill_temperature``: distillation from φ into every candidate and the polish (weight 0: off), on every
    ``distill_every``-th batch (weighted that many times: fewer teacher passes, the same weight on average).

    ``gate`` is a ``Gate`` or ``Requirements`` (metric gates and budgets): candidates are accepted on the metric
    gates, while a budget the run has not met yet keeps the compression going (each step is at least what reaching
    it in the cycles left needs); the answer must meet every condition. ``cost``: what a channel costs in the
    inquisitor's ranking, ``macs`` or ``latency`` (a per-layer model measured with the requirements' latency
    settings at the start of the run, cached in the run directory).
    """

    def __init__(
        self,
        gate: Gate | Requirements,
        schedule: Schedule,
        inquisitor: Inquisitor | None = None,
        seed: int = 0,
        temperature: float = 1.0,
        min_channels: float = 0.1,
        channel_multiple: int = 8,
        probe_batches: int = 16,
        netscore_units: NetScoreUnits = NetScoreUnits(),
        prototype_config: dict | None = None,
        task_name: str = "custom",
        output_dir: str | Path | None = None,
        export_onnx: bool = True,
        recovery_allowance: float = 0.75,
        early_reject_margin: float | None = 0.02,
        distill_weight: float = 1.0,
        distill_temperature: float = 4.0,
        distill_every: int = 1,
        cost: str = "macs",
        log: Callable[[str], None] = print,
        collective: Collective | None = None,
    ) -> None:
        if temperature <= 0:
            raise ValueError(f"synthesis.temperature={temperature} must be > 0")
        if not 0 < min_channels <= 1:
            raise ValueError(f"synthesis.min_channels={min_channels} must be a fraction in (0, 1]")
        for name, value in (("channel_multiple", channel_multiple), ("probe_batches", probe_batches)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"synthesis.{name}={value!r} is invalid: it must be an integer >= 1")
        if recovery_allowance < 0 or (early_reject_margin is not None and early_reject_margin < 0):
            raise ValueError(
                f"synthesis.recovery_allowance={recovery_allowance} and synthesis.early_reject_margin={early_reject_margin} "
                "must be >= 0 (early_reject_margin=null: never reject early)"
            )
        check_distillation_settings(distill_weight, distill_temperature, distill_every)
        if cost not in COSTS:
            raise ValueError(f"synthesis.cost={cost!r} is unknown; choose one of {COSTS}")
        self.requirements = Requirements.of(gate)
        self.gate, self.schedule, self.cost = self.requirements.primary, schedule, cost
        self.inquisitor = inquisitor or Inquisitor()
        self.seed, self.temperature, self.min_channels = seed, temperature, min_channels
        self.channel_multiple, self.probe_batches, self.netscore_units = channel_multiple, probe_batches, netscore_units
        self.prototype_config = prototype_config
        self.run_dir = RunDirectory(output_dir) if output_dir is not None else None
        self.export_onnx, self.log = export_onnx, log
        self.recovery_allowance, self.early_reject_margin = recovery_allowance, early_reject_margin
        self.distill_weight, self.distill_temperature, self.distill_every = distill_weight, distill_temperature, distill_every
        self.distillation_loss: DistillationLoss | None = soft_target_loss  # None: the trained module opts out
        self.collective = collective or SingleProcess()
        self.record = SynthesisRecord(task=task_name, gate=self.requirements.to_dict())
        self.graph: NetworkGraph | None = None
        self.generator: Generator | None = None
        self.candidate_arch: Architecture | None = None
        self.candidate_seed: int | None = None
        self.candidate_redraws = 0
        self.best: Choice | None = None  # the best network that passed the real gate: the answer so far
        self.leader: Choice | None = None  # the best accepted candidate (within the allowance): what the polish takes
        self.diverged = False
        self._phase_metrics: list[float] = []
        self._probe_result: ProbeResult | None = None
        self._distiller: Distiller | None = None
        self._distilling = None
        self._metrics: dict[str, float] = {}
        self._parent_cost = 0.0  # the parent's total cost (MACs or modelled ms): what a candidate's cut is a fraction of
        self._parent_values: dict[str, float] = {}  # the parent's value for each budget
        self.aim = 1.0  # the correction of the inquisitor's budget that makes candidates cut what the step asks
        self._epoch = 0
        self._phase_started = self._run_started = time.monotonic()
        self._best_unsaved = False

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.graph.input_shape

    @property
    def best_network(self) -> nn.Module | None:
        return None if self.best is None else self.best.network

    @property
    def best_arch(self) -> Architecture | None:
        return None if self.best is None else self.best.arch

    # --- driving ---------------------------------------------------------------------------------
    def trace(
        self,
        network: nn.Module,
        input_shape: tuple[int, ...],
        output_layers: list[str] | None = None,
        removable_blocks: list[str] | None = None,
    ) -> NetworkGraph:
        """Trace the prototype's channel groups (once, before its first training batch); resolve and check the
        budgets against the prototype; with latency costs, build (or reuse) the latency model."""
        self.graph = NetworkGraph.trace(network, input_shape, output_layers, removable_blocks)
        self.requirements.resolve_budgets(count_macs(network, input_shape), count_params(network))
        if self.requirements.bounds:
            self._check_budgets_reachable(network)
        if self.cost == "latency":
            self.inquisitor.costs = LatencyCosts(self._latency_model(network))
        return self.graph

    def _check_budgets_reachable(self, network: nn.Module) -> None:
        """Before any training: a budget below the smallest network the prototype can become is an error."""
        graph, fraction = self.graph, self.min_channels
        floor = Architecture(
            {g: list(range(max(1, math.ceil(fraction * group.size)))) for g, group in graph.groups.items()},
            list(graph.removable_blocks),
        )
        smallest = graph.materialize(network, graph.full_architecture(), floor)
        values = self.requirements.costs(smallest, self.input_shape, count_macs(smallest, self.input_shape), count_params(smallest))
        for name, value in values.items():
            if value > self.requirements.bounds[name]:
                raise ValueError(
                    f"gate.max_{name}: no network can meet {name} <= {self.requirements.bounds[name]:.4g}: the smallest this "
                    f"prototype can become (every group at synthesis.min_channels={fraction}, every removable block removed, "
                    f"the output layers kept) has {value:.4g}. Raise the budget or lower synthesis.min_channels"
                )

    def _latency_model(self, network: nn.Module) -> LatencyModel:
        path = self.run_dir.latency_model if self.run_dir is not None else None
        model = LatencyModel.load(path, self.requirements.latency) if path is not None else None
        if model is None:
            model = LatencyModel.build(network, self.input_shape, self.requirements.latency, self._log)
            if path is not None and self.collective.is_main:
                model.save(path)
        return model

    def start_phase(self) -> None:
        """A phase's first epoch begins: its clock starts and its divergence flag clears."""
        self._phase_started = time.monotonic()
        self._phase_metrics = []
        self.diverged = False

    def check_loss(self, loss: Tensor) -> None:
        """A non-finite training loss marks the phase as diverged (its candidate will be rejected)."""
        if not torch.isfinite(loss).all():
            self.diverged = True

    def probes(self, epoch: int, batch_idx: int) -> bool:
        """Whether this training batch is one the inquisitor probes: the first ``probe_batches`` of the last epoch
        of φ's phase or a cycle (a polished network is not probed: nothing is generated after it)."""
        phase = self.schedule.phase
        return phase is not None and phase.kind != POLISH and self.schedule.ends_phase(epoch) and batch_idx < self.probe_batches

    def attach_probe(self, network: nn.Module) -> Probe:
        arch = self.candidate_arch or self.graph.full_architecture()
        return self.inquisitor.attach(network, self.graph, arch)

    def observe(self, result: ProbeResult) -> None:
        """Keep a finished probe's result; it is folded into θ_I if its network is accepted."""
        self._probe_result = result

    def end_epoch(self, epoch: int, network: nn.Module, metrics: float | dict[str, float]) -> nn.Module | None:
        """After training epoch ``epoch`` (its validation gave ``metrics``: the primary gate's value, or every logged
        value by name): conclude the phase if it ended (or reject a cycle's candidate early) and return the network
        to train next (swap it in and rebuild the optimizers), or None to go on as is. When the schedule has no
        phase left the run is complete (``schedule.phase`` None)."""
        phase, self._epoch = self.schedule.phase, epoch
        metrics = dict(metrics) if isinstance(metrics, dict) else {self.gate.monitor: metrics}
        if self.diverged and phase.kind != PROTOTYPE:
            metrics = {name: math.nan for name in metrics}
        self._metrics, metric = metrics, metrics[self.gate.monitor]
        self._phase_metrics.append(metric)
        early = phase.kind == CYCLE and not self.schedule.ends_phase(epoch) and self._rejects_early(epoch, metric)
        if not (self.schedule.ends_phase(epoch) or early):
            return None
        self._stop_distilling()
        if phase.kind == PROTOTYPE:
            self.conclude_prototype(network, metrics)
        elif phase.kind == CYCLE:
            self.conclude_cycle(network, metrics, early_rejected=early)
        else:
            self.conclude_polish(network, metrics)
        following = self.schedule.advance(epoch, can_polish=self.leader is not None)
        self.start_phase()
        upcoming = None
        if following is not None:
            upcoming = self.propose(following.index) if following.kind == CYCLE else self._polish_network()
            self._start_distilling(upcoming)
        self.save_progress()
        return upcoming

    def epoch_progress(self, epoch: int, metric: float) -> str:
        """One line per epoch (phase, metric, elapsed, ETA) for logs without a live progress bar."""
        phase = self.schedule.phase.describe() if self.schedule.phase is not None else "done"
        return epoch_line(epoch + 1, self.schedule.total_epochs, phase, self.gate.monitor, metric, *self._times(epoch))

    def _times(self, epoch: int) -> tuple[float, float]:
        """Seconds since the run started, and an estimate of the seconds its remaining epochs take."""
        elapsed = time.monotonic() - self._run_started
        return elapsed, elapsed / (epoch + 1) * self.schedule.remaining_epochs(epoch)

    # --- what fine-tuning recovers ---------------------------------------------------------------
    def measured_recovery(self) -> float | None:
        """The median rise of a candidate's metric from its first epoch to its last in this run (None: unmeasured)."""
        gains = [entry.recovery for entry in self.record.cycles if entry.recovery is not None]
        return statistics.median(gains) if gains else None

    def allowance(self) -> float:
        """How far below the bound an intermediate candidate may be and still be accepted."""
        recovery = self.measured_recovery()
        return self.recovery_allowance * max(recovery, 0.0) if recovery is not None else 0.0

    def _rejects_early(self, epoch: int, metric: float) -> bool:
        """After a cycle's first epoch: reject when even the recovery this run measured leaves the candidate more
        than ``early_reject_margin`` below the allowed bound (or its training diverged)."""
        if self.early_reject_margin is None or self.schedule.epochs_into_phase(epoch) != 1:
            return False
        if not math.isfinite(metric):
            return True
        recovery = self.measured_recovery()
        if recovery is None:
            return False
        expected = self.gate.margin(metric) + max(recovery, 0.0) + self.allowance()
        return not self.collective.all_agree(expected + self.early_reject_margin >= 0)

    # --- decisions -------------------------------------------------------------------------------
    def conclude_prototype(self, network: nn.Module, metrics: dict[str, float]) -> NetworkReport:
        """φ is trained: resolve the gates from its scores, create G_0, record φ as the first best network."""
        metric = metrics[self.gate.monitor]
        if not math.isfinite(metric) or self.diverged:
            raise FloatingPointError(
                f"the prototype's training diverged ({self.gate.monitor}={metric}, non-finite loss); "
                "lower optimizer.lr or check the data for NaN/inf values"
            )
        self.requirements.resolve(metrics)
        self.record.gate = self.requirements.to_dict()
        self.generator = Generator(network, self.graph, self.min_channels, self.prototype_config, self.channel_multiple)
        report, verdicts = self._judge(network, metrics)
        self.record.prototype = report
        self._set_best(Choice(self.generator.parent_arch, self.generator.parent, report, 0))
        self._parent_values = {v.name: v.value for v in verdicts if v.budget}
        self._distiller = self._new_distiller()
        failing = [v.describe() for v in verdicts if not v.passed and not v.budget]
        if failing and self.collective.is_main:
            warnings.warn(
                f"the prototype itself fails the gate ({', '.join(failing)}): candidates are unlikely to pass. Lower "
                "gate.threshold, make it relative, or train the prototype longer (synthesis.prototype_epochs)."
            )
        self._fold_probe(self.generator.parent_arch)
        self._log(f"GenSynth: prototype {report.macs:,} MACs, {report.params:,} params; gate {self.requirements.describe()}")
        self._log(cycle_header())
        return report

    def conclude_cycle(self, network: nn.Module, metrics: dict[str, float], early_rejected: bool = False) -> CycleEntry:
        """The candidate of the current cycle is trained (or rejected after its first epoch): gate it, let θ_I
        learn, accept it (its metric gates met within the allowance) or roll back."""
        cycle, arch, metric = self.schedule.phase.index, self.candidate_arch, metrics[self.gate.monitor]
        allowance = self.allowance()
        within = all(v.passed for v in self.requirements.verdicts(metrics, None, allowance))
        accepted = not early_rejected and self.collective.all_agree(within)
        report, verdicts = self._judge(network, metrics)
        cost = self.inquisitor.costs.total(network, self.input_shape)
        cut = 1.0 - cost / self._parent_cost if self._parent_cost else 0.0
        margin = self.gate.margin(metric) + allowance if accepted else -1.0
        self.inquisitor.learn(CycleOutcome(passed=accepted, margin=margin, cut=cut), self.generator.parent_arch, arch)
        if accepted:
            self.generator.accept(arch, network)
            self._parent_values = {v.name: v.value for v in verdicts if v.budget}
            self._fold_probe(arch)
            if self.leader is None or _rank(report)[2:] > _rank(self.leader.report)[2:]:  # budgets met first, NetScore
                self.leader = Choice(arch, copy.deepcopy(network).cpu(), report, cycle)
            self._consider(Choice(arch, network, report, cycle))
            self._check_prototype_strength(metric)
        else:
            self.generator.rollback()
            self._probe_result = None
        entry = CycleEntry(
            cycle=cycle,
            seed=self.candidate_seed,
            report=report,
            accepted=accepted,
            step=self.inquisitor.step,
            seconds=round(time.monotonic() - self._phase_started, 2),
            widths=arch.widths(),
            removed_blocks=list(arch.removed_blocks),
            diverged=self.diverged,
            redraws=self.candidate_redraws,
            epochs=len(self._phase_metrics),
            first_metric=self._phase_metrics[0],
            early_rejected=early_rejected,
            allowance=allowance,
            cut=round(cut, 4),
        )
        self.record.cycles.append(entry)
        self._log(cycle_row(entry, self._epoch + 1, self.schedule.total_epochs, self._times(self._epoch)[1]))
        if self.diverged:
            self._log(f"cycle {cycle}: non-finite training loss; candidate rejected, generator rolled back")
        return entry

    def _judge(
        self, network: nn.Module, metrics: dict[str, float], costs: dict[str, float] | None = None
    ) -> tuple[NetworkReport, list[Verdict]]:
        """The network's report: size, cost, metric, and every condition's verdict (gate_passed: all of them, as
        every process agrees). ``costs``: the budgets' values when already known (the same architecture)."""
        report = self._measure(network, metrics[self.gate.monitor], False)
        if costs is None:
            costs = self.requirements.costs(network, self.input_shape, report.macs, report.params)
        verdicts = self.requirements.verdicts(metrics, costs)
        passed = self.collective.all_agree(all(v.passed for v in verdicts))
        conditions = {v.name: v.to_dict() for v in verdicts} if len(verdicts) > 1 else None
        return dataclasses.replace(report, gate_passed=passed, conditions=conditions), verdicts

    def _consider(self, choice: Choice) -> None:
        """The answer so far: every condition met first, then the metric gates, then the budgets' closeness,
        then NetScore."""
        if _rank(choice.report) > _rank(self.best.report):
            self._set_best(choice)

    def _check_prototype_strength(self, metric: float) -> None:
        """Accepted candidates that beat φ by more than the allowed drop mean φ was under-trained: a gate relative
        to its score is weak. Say so once."""
        gate = self.gate
        if not gate.relative or self.record.prototype_undertrained:
            return
        gain = metric - gate.prototype_metric if gate.higher_is_better else gate.prototype_metric - metric
        if gain > gate.threshold:
            self.record.prototype_undertrained = True
            message = (
                f"a candidate scores {metric:.4f}, beating the prototype's {gate.prototype_metric:.4f} by more than the "
                f"allowed drop {gate.threshold:g}: the prototype looks under-trained, so a gate relative to it is weak. "
                "Train it longer (synthesis.prototype_epochs) or set an absolute gate (gate.relative=false gate.threshold=...)"
            )
            self._log(f"warning: {message}")
            if self.collective.is_main:
                warnings.warn(message)

    def _polish_network(self) -> nn.Module:
        """The leader, to be fine-tuned for the rest of the budget."""
        self.candidate_arch = self.leader.arch
        return copy.deepcopy(self.leader.network)

    def conclude_polish(self, network: nn.Module, metrics: dict[str, float]) -> PolishEntry:
        """The polished leader is the answer when it ranks at least as high as the best network so far: it meets
        every condition, or none does and it is the closest; otherwise the run keeps that network, and says so.
        Its budgets are the leader's (the same architecture: a latency is not re-measured, so noise cannot rank
        the polished network below its own unpolished self)."""
        leader = self.leader
        budgets = {name: v["value"] for name, v in (leader.report.conditions or {}).items() if name in BUDGETS}
        after, _ = self._judge(network, metrics, budgets)
        accepted = _rank(after) >= _rank(self.best.report)
        entry = PolishEntry(leader.cycle, len(self._phase_metrics), leader.report, after, accepted,
                            round(time.monotonic() - self._phase_started, 2))
        self.record.polish = entry
        if accepted:
            self.generator.accept(leader.arch, network)  # the polished weights: what later networks inherit from
            self._set_best(Choice(leader.arch, network, after, leader.cycle))
        self._log(polish_line(entry, self.requirements.describe(), self.best.cycle, self.best.report))
        return entry

    def propose(self, cycle: int) -> nn.Module:
        """Δθ_G from the inquisitor, then the candidate of ``cycle`` sampled and built (inheriting weights).

        The inquisitor aims at an expected saving that counts each channel's cost linearly and ignores rounding,
        so a sample cuts more or less than the step; the loop measures what the candidate really cuts and, until
        it is within ``AIM_TOLERANCE`` of the step, corrects the aim and proposes again (at most ``AIMS`` times,
        keeping the attempt that came closest; the correction carries over to the next cycle)."""
        costs = self.inquisitor.costs
        with timed("propose"):
            macs = macs_per_module(self.generator.parent, self.input_shape)
            self._parent_cost = costs.total(self.generator.parent, self.input_shape)
        closest = None  # (distance from the step, logits, arch, seed, redraws, candidate)
        for attempt in range(AIMS):
            step = self._step()
            self.generator.update(self.inquisitor.propose(self.generator, macs, self._parent_cost, self.aim, step=step))
            own, seed, redraws = self._draw(cycle, macs)
            arch = self.collective.broadcast(own)
            if not self.collective.all_agree(arch == own):
                raise RuntimeError(f"cycle {cycle}: ranks generated different architectures from the same generator state")
            candidate = self.generator.build(arch)
            with timed("propose"):
                cut = 1.0 - costs.total(candidate, self.input_shape) / self._parent_cost
            step = self._step()
            distance = abs(cut - step)
            if closest is None or distance < closest[0]:
                logits = KeepLogits(dict(self.generator.channel_logits), dict(self.generator.block_logits))
                closest = (distance, logits, arch, seed, redraws, candidate)
            if distance <= AIM_TOLERANCE * step or cut <= 0:
                break
            self.aim = min(4.0, max(0.25, self.aim * step / cut))
        _, logits, arch, seed, redraws, candidate = closest  # the attempt that cut closest to the step
        self.generator.update(logits)
        self.candidate_arch, self.candidate_seed, self.candidate_redraws = arch, seed, redraws
        return candidate

    def _step(self) -> float:
        """The inquisitor's step, or more while a budget is unmet: what reaching it in the cycles left needs; but
        after a rejection the halved step stands (a forced cut as deep as the one that just failed fails too)."""
        step, schedule = self.inquisitor.step, self.schedule
        if self.record.cycles and not self.record.cycles[-1].accepted:
            return step
        left = max(1, (schedule.cycle_budget - schedule.cycle_epochs_used) // schedule.epochs_per_cycle)
        for name, bound in self.requirements.bounds.items():
            value = self._parent_values.get(name)
            if value and value > bound:
                step = max(step, min(self.inquisitor.max_step, 1 - (bound / value) ** (1 / left)))
        return step

    def _draw(self, cycle: int, macs: dict[str, int]) -> tuple[Architecture, int, int]:
        """Sample until the architecture differs from the parent's network; after ``DRAWS_PER_STEP`` draws that
        rebuild the parent the step grows and θ_G is proposed again (until the step is at its maximum)."""
        redraws = 0
        while True:
            for attempt in range(DRAWS_PER_STEP):
                seed = self.seed * 100_003 + cycle + attempt * 1_000_003
                arch = self.generator.sample(seed, self.temperature)
                if not self.graph.same_network(arch, self.generator.parent_arch):
                    return arch, seed, redraws
                redraws += 1
            if not self.inquisitor.grow_step():
                return arch, seed, redraws  # nothing left to cut at the largest step: the parent is trained again
            self.generator.update(self.inquisitor.propose(self.generator, macs, self._parent_cost, self.aim, step=self._step()))

    def _new_distiller(self) -> Distiller | None:
        """φ as the teacher of every candidate and the polish (None: distillation off, or the module opts out)."""
        if self.distill_weight == 0 or self.distillation_loss is None:
            return None
        return Distiller(self.generator.prototype, self.distillation_loss, self.distill_weight, self.distill_temperature,
                         self.distill_every)

    def _start_distilling(self, network: nn.Module) -> None:
        if self._distiller is not None:
            self._distilling = self._distiller.attach(network)

    def _stop_distilling(self) -> None:
        """Before a network is judged, copied or kept: its distillation hook goes."""
        if self._distilling is not None:
            self._distilling.remove()
            self._distilling = None

    def _fold_probe(self, arch: Architecture) -> None:
        """Fold the accepted network's probe into θ_I, averaged over processes so every one learns the same."""
        if self._probe_result is None:
            return
        measured = self.inquisitor.measure(self._probe_result)
        for values in measured.values():
            for name, value in values.items():
                values[name] = self.collective.mean(value)
        self.inquisitor.fold(measured, self.graph, arch)
        self._probe_result = None

    @timed("record")
    def _measure(self, network: nn.Module, metric: float, passed: bool) -> NetworkReport:
        return NetworkReport.measure(network, self.input_shape, metric, passed, self.netscore_units)

    def _set_best(self, choice: Choice) -> None:
        self.best = Choice(choice.arch, copy.deepcopy(choice.network).cpu(), choice.report, choice.cycle)
        self.record.best, self.record.best_cycle = choice.report, choice.cycle
        self._best_unsaved = True

    # --- output ----------------------------------------------------------------------------------
    def _log(self, text: str) -> None:
        if self.collective.is_main:
            self.log(text)

    def record_test(self, results: dict[str, dict[str, float]]) -> None:
        """Test-split metrics of the prototype and the answer (after the synthesis: they decide nothing)."""
        self.record.prototype = dataclasses.replace(self.record.prototype, test=results["prototype"])
        self.best.report = self.record.best = dataclasses.replace(self.record.best, test=results["best"])
        self._best_unsaved = True
        self.save_progress()
        for name, metrics in results.items():
            self._log(f"test split, {name}: " + ", ".join(f"{k} {v:.4f}" for k, v in sorted(metrics.items())))

    @timed("save")
    def save_progress(self) -> None:
        """Write everything decided so far, so an interrupted run loses nothing."""
        if self.run_dir is None or not self.collective.is_main:
            return
        self.record.write(self.run_dir.summary)
        extra = {"gate": self.requirements.to_dict(), "task": self.record.task, "inquisitor": self.inquisitor.state_dict(),
                 "prototype": self.record.prototype.to_dict(), "best": self.record.best.to_dict(),
                 "best_arch": self.best.arch.to_dict()}
        self.generator.save(self.run_dir.generator, extra=extra)
        if self._best_unsaved:
            best = self.best
            save_network(self.run_dir.best, best.network, best.arch, self.graph, self.prototype_config, best.report.to_dict())
            self._best_unsaved = False

    def finish(self) -> nn.Module | None:
        """After the last phase: the Pareto plot, the best network's ONNX export, the final summary; returns a
        copy of the best network (None when the prototype never finished training)."""
        self._stop_distilling()
        if self.best is None:
            return None
        if self.run_dir is not None and self.collective.is_main:
            pareto_plot(self.record, self.run_dir.pareto)
            if self.export_onnx:
                export_onnx(self.best.network, self.input_shape, self.run_dir.best / ONNX_FILE)
        self._log(final_summary(self.record))
        return copy.deepcopy(self.best.network)

    # --- checkpointing ---------------------------------------------------------------------------
    def state_dict(self) -> dict:
        if self.generator is None:
            return {}
        return {
            "input_shape": list(self.input_shape),
            "output_layers": self.graph.output_layers,
            "removable_blocks": self.graph.removable_blocks,
            "schedule": self.schedule.state_dict(),
            "generator": self.generator.state_dict(),
            "inquisitor": self.inquisitor.state_dict(),
            "requirements": self.requirements.state_dict(),
            "record": self.record.to_dict(),
            "candidate": None if self.candidate_arch is None else self.candidate_arch.to_dict(),
            "candidate_seed": self.candidate_seed,
            "candidate_redraws": self.candidate_redraws,
            "parent_cost": self._parent_cost,
            "parent_values": dict(self._parent_values),
            "aim": self.aim,
            "phase_metrics": list(self._phase_metrics),
            "best": self.best.state_dict(),
            "leader": None if self.leader is None else self.leader.state_dict(),
        }

    def load_state_dict(self, state: dict, prototype: nn.Module) -> nn.Module | None:
        """Restore from ``state_dict`` given a freshly built prototype; returns the network being trained when the
        state was saved (shaped, with the prototype's weights: load the checkpoint's next)."""
        self.trace(prototype, tuple(state["input_shape"]), state["output_layers"], state["removable_blocks"])
        self.schedule.load_state_dict(state["schedule"])
        self.generator = Generator(prototype, self.graph, self.min_channels, self.prototype_config, self.channel_multiple)
        self.generator.load_state_dict(state["generator"])
        self.inquisitor.load_state_dict(state["inquisitor"])
        self.requirements.load_state_dict(state["requirements"])
        self.record = SynthesisRecord.from_dict(state["record"])
        self.candidate_seed, self.candidate_redraws = state["candidate_seed"], state["candidate_redraws"]
        self._parent_cost, self._phase_metrics = state["parent_cost"], list(state["phase_metrics"])
        self._parent_values = dict(state["parent_values"])
        self.aim = state["aim"]
        self.best = self._choice(state["best"])
        self.leader = None if state["leader"] is None else self._choice(state["leader"])
        self._distiller = self._new_distiller()
        if not state["candidate"]:
            return None
        self.candidate_arch = Architecture.from_dict(state["candidate"])
        network = self.graph.rebuild(self.generator.prototype, self.candidate_arch)
        self._start_distilling(network)
        return network

    def _choice(self, state: dict) -> Choice:
        arch = Architecture.from_dict(state["arch"])
        network = self.graph.rebuild(self.generator.prototype, arch, state["weights"])
        return Choice(arch, network, NetworkReport(**state["report"]), state["cycle"])


def _rank(report: NetworkReport) -> tuple:
    """How good an answer a network is: every condition met, its metric gates met, how far its worst budget is
    exceeded (ratio to the bound; 1 when all are met), NetScore."""
    conditions = report.conditions or {}
    metrics_met = all(v["passed"] for name, v in conditions.items() if name not in BUDGETS) if conditions else report.gate_passed
    excess = max([v["value"] / v["bound"] for name, v in conditions.items() if name in BUDGETS] + [1.0])
    return report.gate_passed, metrics_met, -excess, report.netscore
