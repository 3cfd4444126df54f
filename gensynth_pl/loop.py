"""The synthesis loop, free of any Trainer: the phase state machine of one run.

Whoever trains the networks (the Lightning callback, a test, a script) calls ``end_epoch`` after every training
epoch with the network and its validation metrics; when a phase ends (or the referee rejects a candidate after its
first epoch) the loop asks the referee (gensynth_pl/referee.py) for a decision, applies it in one place (the
inquisitor learns, the proposer accepts or rolls back), appends it to the record, asks the proposer
(gensynth_pl/proposer.py) for the next candidate, and saves. Probing is attached and detached around the batches
the schedule names; distillation from φ is attached to every network the loop hands out. Work that must agree
across processes goes through a ``Collective``; the default is a single process.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from gensynth_pl.collective import Collective, SingleProcess
from gensynth_pl.costs import CostContext
from gensynth_pl.distillation import DistillationLoss, Teaching, soft_target_loss
from gensynth_pl.gates import Gate, Requirements
from gensynth_pl.generator import Generator
from gensynth_pl.graph import Architecture, NetworkGraph
from gensynth_pl.inquisitor import CycleOutcome, Inquisitor, Probe, ProbeResult
from gensynth_pl.metrics import count_macs, count_params
from gensynth_pl.proposer import Proposal, Proposer
from gensynth_pl.record import CycleEntry, PolishEntry, SynthesisRecord
from gensynth_pl.referee import Choice, Decision, Referee
from gensynth_pl.macmap import format_mac_map, mac_map
from gensynth_pl.outputs import finish_run, save_run
from gensynth_pl.report import cycle_header, cycle_row, epoch_line, final_summary, polish_line
from gensynth_pl.rundir import RunDirectory
from gensynth_pl.schedule import CYCLE, POLISH, PROTOTYPE, Phase, Schedule
from gensynth_pl.settings import DEFAULTS, SynthesisSettings


class SynthesisLoop:
    """Generative synthesis of one prototype: see the module docstring for how it is driven.

    ``gate``: a ``Gate`` or ``Requirements`` (metric gates and budgets); ``settings``: a ``SynthesisSettings``, or
    its fields as keywords (``channel_multiple=1``). Collaborators: the ``inquisitor`` (θ_I), the recipe the
    prototype is rebuilt from (``prototype_config``), the run directory (``output_dir``), ``log`` and ``collective``.
    """

    def __init__(self, gate: Gate | Requirements, schedule: Schedule, settings: SynthesisSettings = DEFAULTS, *,
                 inquisitor: Inquisitor | None = None, prototype_config: dict | None = None, task_name: str = "custom",
                 output_dir: str | Path | None = None, log: Callable[[str], None] = print,
                 collective: Collective | None = None, **overrides) -> None:
        self.settings = dataclasses.replace(settings, **overrides)
        requirements = Requirements.of(gate)
        self.schedule, self.inquisitor = schedule, inquisitor or Inquisitor()
        s = self.settings
        self.referee = Referee(requirements, s.recovery_allowance, s.early_reject_margin, s.netscore_units)
        self.proposer = Proposer(s, self.inquisitor, requirements, schedule, SingleProcess())
        self.collective = collective or SingleProcess()
        self.prototype_config, self.log = prototype_config, log
        self.run_dir = RunDirectory(output_dir) if output_dir is not None else None
        self.distillation_loss: DistillationLoss | None = soft_target_loss  # None: the trained module opts out
        self.record = SynthesisRecord(task=task_name, gate=requirements.to_dict())
        self.graph: NetworkGraph | None = None
        self.proposal: Proposal | None = None  # the current cycle's candidate
        self.training_arch: Architecture | None = None  # the network being trained (None: the prototype)
        self.diverged = False
        self._epoch_metrics: list[float] = []  # the primary metric after each epoch of the current phase
        self._probe_result: ProbeResult | None = None
        self.teaching = Teaching()  # φ distilling into the network in training (from φ's conclusion on)
        self._epoch = 0
        self._phase_started = self._run_started = time.monotonic()
        self._saved_best: Choice | None = None

    @property
    def collective(self) -> Collective:
        return self._collective

    @collective.setter
    def collective(self, collective: Collective) -> None:
        self._collective = self.referee.collective = self.proposer.collective = collective

    @property
    def requirements(self) -> Requirements:
        return self.referee.requirements

    @property
    def gate(self) -> Gate:
        return self.referee.gate

    @property
    def generator(self) -> Generator | None:
        return self.proposer.generator

    @property
    def best(self) -> Choice | None:
        return self.referee.best

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.graph.input_shape

    # --- driving ---------------------------------------------------------------------------------
    def trace(self, network: nn.Module, input_shape: tuple[int, ...], output_layers: list[str] | None = None,
              removable_blocks: list[str] | None = None) -> NetworkGraph:
        """Trace the prototype's channel groups (once, before its first training batch); resolve and check the
        budgets against the prototype; decide what a channel costs (a latency model is measured or read back)."""
        self.graph = NetworkGraph.trace(network, input_shape, output_layers, removable_blocks)
        self.requirements.resolve_budgets(count_macs(network, input_shape), count_params(network))
        if self.requirements.bounds:
            smallest = self.proposer.smallest(self.graph, network)
            self.referee.check_reachable(smallest, input_shape, self.settings.min_channels)
        cache = self.run_dir.latency_model if self.run_dir is not None else None
        context = CostContext(input_shape, self.requirements.latency, cache, self.collective.is_main, self._log)
        self.proposer.price(network, context)
        return self.graph

    def start_phase(self) -> None:
        """A phase's first epoch begins: its clock starts and its divergence flag clears."""
        self._phase_started = time.monotonic()
        self._epoch_metrics = []
        self.diverged = False

    def check_loss(self, loss: Tensor) -> None:
        """A non-finite training loss marks the phase as diverged (its candidate will be rejected)."""
        if not torch.isfinite(loss).all():
            self.diverged = True

    def probes(self, epoch: int, batch_idx: int) -> bool:
        """Whether this training batch is one the inquisitor probes: the first ``probe_batches`` of the last epoch
        of φ's phase or a cycle (a polished network is not probed: nothing is generated after it)."""
        phase = self.schedule.phase
        return (phase is not None and phase.kind != POLISH and self.schedule.ends_phase(epoch)
                and batch_idx < self.settings.probe_batches)

    def attach_probe(self, network: nn.Module) -> Probe:
        return self.inquisitor.attach(network, self.graph, self.training_arch or self.graph.full_architecture())

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
        self._epoch_metrics.append(metrics[self.gate.monitor])
        early = (phase.kind == CYCLE and not self.schedule.ends_phase(epoch)
                 and self.referee.rejects_early(self.schedule.epochs_into_phase(epoch), self._epoch_metrics[-1]))
        if not (self.schedule.ends_phase(epoch) or early):
            return None
        self.teaching.stop()
        if phase.kind == PROTOTYPE:
            self._conclude_prototype(network, metrics)
        elif phase.kind == CYCLE:
            self._conclude_cycle(network, metrics, early)
        else:
            self._conclude_polish(network, metrics)
        self.record.best, self.record.best_cycle = self.best.report, self.best.cycle
        following = self.schedule.advance(epoch, can_polish=self.referee.leader is not None)
        self.start_phase()
        upcoming = None if following is None else self._next_network(following)
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

    # --- conclusions: ask the referee, apply, record -------------------------------------------------
    def _conclude_prototype(self, network: nn.Module, metrics: dict[str, float]) -> None:
        """φ is trained: the referee resolves the gates from its scores; G_0 is created; φ is the first answer."""
        report = self.referee.judge_prototype(network, self.graph.full_architecture(), self.input_shape, metrics,
                                              self.diverged)
        self.record.gate, self.record.prototype = self.requirements.to_dict(), report
        self.proposer.start(network, self.graph, self.prototype_config, report.budgets)
        self.teaching = self._teaching()
        self._fold_probe(self.generator.parent_arch)
        self._log(f"GenSynth: prototype {report.macs:,} MACs, {report.params:,} params; gate {self.requirements.describe()}")
        self._log(cycle_header())

    def _conclude_cycle(self, network: nn.Module, metrics: dict[str, float], early: bool) -> None:
        """The cycle's candidate is trained (or rejected after its first epoch): judge it and apply the decision."""
        proposal, cycle = self.proposal, self.schedule.phase.index
        decision = self.referee.judge_candidate(network, proposal.arch, cycle, self.input_shape, metrics,
                                                self._epoch_metrics, early, self.diverged)
        self._apply(decision, proposal, network)
        entry = CycleEntry(
            cycle=cycle, seed=proposal.seed, report=decision.report, reason=decision.reason, step=self.inquisitor.step,
            seconds=round(time.monotonic() - self._phase_started, 2), widths=proposal.arch.widths(),
            removed_blocks=list(proposal.arch.removed_blocks), redraws=proposal.redraws, epochs=len(self._epoch_metrics),
            first_metric=self._epoch_metrics[0], allowance=decision.allowance, cut=round(proposal.cut, 4),
        )
        self.record.cycles.append(entry)
        self._log(cycle_row(entry, self._epoch + 1, self.schedule.total_epochs, self._times(self._epoch)[1]))
        self.record.prototype_undertrained, self.record.noisy_metric = self.referee.warned_undertrained, self.referee.warned_noisy
        for warning in decision.warnings:
            self._log(f"warning: {warning}")
        if self.diverged:
            self._log(f"cycle {cycle}: non-finite training loss; candidate rejected, generator rolled back")

    def _apply(self, decision: Decision, proposal: Proposal, network: nn.Module) -> None:
        """The one place a candidate's decision changes the run: θ_I learns from it; an accepted candidate becomes
        the parent and its probe is folded into θ_I; a rejected one rolls θ_G back."""
        outcome = CycleOutcome(passed=decision.accepted, margin=decision.margin, cut=proposal.cut)
        self.inquisitor.learn(outcome, self.generator.parent_arch, proposal.arch)
        if not decision.accepted:
            self.proposer.reject()
            self._probe_result = None
            return
        self.proposer.accept(proposal.arch, network, decision.report.budgets)
        self._fold_probe(proposal.arch)

    def _conclude_polish(self, network: nn.Module, metrics: dict[str, float]) -> None:
        """The polished leader is judged as the answer; when taken, later networks inherit its weights."""
        leader = self.referee.leader
        decision = self.referee.judge_polish(network, self.input_shape, metrics)
        entry = PolishEntry(leader.cycle, len(self._epoch_metrics), leader.report, decision.report, decision.reason,
                            round(time.monotonic() - self._phase_started, 2))
        self.record.polish = entry
        if decision.accepted:
            self.proposer.accept(leader.arch, network, decision.report.budgets)
        self._log(polish_line(entry, self.requirements.describe(), self.best.cycle, self.best.report))

    def _next_network(self, phase: Phase) -> nn.Module:
        """The next cycle's candidate from the proposer, or the leader to polish; distilled from φ."""
        if phase.kind == CYCLE:
            self.proposal = self.proposer.propose(phase.index)
            self.training_arch, network = self.proposal.arch, self.proposal.network
        else:
            self.training_arch, network = self.referee.leader.arch, copy.deepcopy(self.referee.leader.network)
        self.teaching.start(network)
        return network

    def _teaching(self) -> Teaching:
        """φ as the teacher of every candidate and the polish."""
        s = self.settings
        return Teaching.by(self.generator.prototype, self.distillation_loss, s.distill_weight, s.distill_temperature,
                           s.distill_every)

    def _fold_probe(self, arch: Architecture) -> None:
        """Fold the accepted network's probe into θ_I, averaged over processes."""
        if self._probe_result is not None:
            self.inquisitor.fold_probe(self._probe_result, self.graph, arch, self.collective.mean)
            self._probe_result = None

    # --- output ----------------------------------------------------------------------------------
    def _log(self, text: str) -> None:
        if self.collective.is_main:
            self.log(text)

    def record_test(self, results: dict[str, dict[str, float]]) -> None:
        """Test-split metrics of the prototype and the answer (after the synthesis: they decide nothing)."""
        self.record.prototype = dataclasses.replace(self.record.prototype, test=results["prototype"])
        self.best.report = self.record.best = dataclasses.replace(self.record.best, test=results["best"])
        self._saved_best = None
        self.save_progress()
        for name, metrics in results.items():
            self._log(f"test split, {name}: " + ", ".join(f"{k} {v:.4f}" for k, v in sorted(metrics.items())))

    def save_progress(self) -> None:
        """Write everything decided so far, so an interrupted run loses nothing."""
        if self.run_dir is not None and self.collective.is_main:
            save_run(self.run_dir, self.record, self.generator, self.inquisitor, self.referee,
                     best_changed=self._saved_best is not self.best)
            self._saved_best = self.best

    def finish(self) -> nn.Module | None:
        """After the last phase: the Pareto plot, the best network's ONNX export, the final summary; returns a
        copy of the best network (None when the prototype never finished training)."""
        self.teaching.stop()
        if self.best is None:
            return None
        rows = mac_map(self.graph, self.generator.prototype, self.best.network, self.best.arch, self.settings.min_channels)
        if self.run_dir is not None and self.collective.is_main:
            finish_run(self.run_dir, self.record, self.best, self.input_shape, self.settings.export_onnx, rows)
        self._log(final_summary(self.record) + "\n" + format_mac_map(rows))
        return copy.deepcopy(self.best.network)

    # --- checkpointing: the union of the collaborators' states ------------------------------------
    def state_dict(self) -> dict:
        if self.generator is None:
            return {}
        proposal = self.proposal
        return {
            "graph": {"input_shape": list(self.input_shape), "output_layers": self.graph.output_layers,
                      "removable_blocks": self.graph.removable_blocks},
            "schedule": self.schedule.state_dict(),
            "proposer": self.proposer.state_dict(),
            "inquisitor": self.inquisitor.state_dict(),
            "referee": self.referee.state_dict(),
            "record": self.record.to_dict(),
            "phase": {
                "training_arch": None if self.training_arch is None else self.training_arch.to_dict(),
                "proposal": None if proposal is None else proposal.state_dict(),
                "epoch_metrics": list(self._epoch_metrics),
            },
        }

    def load_state_dict(self, state: dict, prototype: nn.Module) -> nn.Module | None:
        """Restore from ``state_dict`` given a freshly built prototype; returns the network being trained when the
        state was saved (shaped, with the prototype's weights: load the checkpoint's next)."""
        graph = state["graph"]
        self.trace(prototype, tuple(graph["input_shape"]), graph["output_layers"], graph["removable_blocks"])
        self.schedule.load_state_dict(state["schedule"])
        self.proposer.load_state_dict(state["proposer"], prototype, self.graph, self.prototype_config)
        self.inquisitor.load_state_dict(state["inquisitor"])
        self.referee.load_state_dict(state["referee"], lambda arch, weights: self.graph.rebuild(prototype, arch, weights))
        self.record = SynthesisRecord.from_dict(state["record"])
        self._saved_best = self.best
        phase = state["phase"]
        self._epoch_metrics = list(phase["epoch_metrics"])
        self.teaching = self._teaching()
        if phase["training_arch"] is None:
            return None
        self.training_arch = Architecture.from_dict(phase["training_arch"])
        network = self.graph.rebuild(self.generator.prototype, self.training_arch)
        if phase["proposal"] is not None:
            self.proposal = Proposal.restore(phase["proposal"], network)
        self.teaching.start(network)
        return network
