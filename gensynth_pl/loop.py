"""The synthesis loop, free of any Trainer: generator, inquisitor, gate, schedule, record and best network.

Whoever trains the networks (the Lightning callback, a test, a script) calls ``end_epoch`` after every
training epoch with the network and its validation metric; the loop decides (conclude the prototype,
conclude a cycle, propose the next candidate) and returns the network to train next when a phase starts
with a new one. Probing is attached and detached around the batches the schedule names. Work that must
agree across processes (gate decisions, probe insights, sampled architectures) goes through a
``Collective``; the default is a single process.
"""
from __future__ import annotations

import copy
import math
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from gensynth_pl.export import export_onnx, save_network
from gensynth_pl.gates import Gate
from gensynth_pl.generator import Generator
from gensynth_pl.graph import Architecture, NetworkGraph
from gensynth_pl.inquisitor import CycleOutcome, Inquisitor, Probe, ProbeResult
from gensynth_pl.metrics import NetScoreUnits, NetworkReport, macs_per_module
from gensynth_pl.record import CycleEntry, SynthesisRecord
from gensynth_pl.report import cycle_header, cycle_row, epoch_line, final_summary, pareto_plot
from gensynth_pl.rundir import ONNX_FILE, RunDirectory
from gensynth_pl.schedule import PROTOTYPE, Schedule
from gensynth_pl.timing import timed
from gensynth_pl.torch_utils import cpu_state_dict

DRAWS_PER_STEP = 8  # samples tried before the step grows, when each one builds the parent's network again


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


class SynthesisLoop:
    """Generative synthesis of one prototype: see the module docstring for how it is driven."""

    def __init__(
        self,
        gate: Gate,
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
        self.gate, self.schedule = gate, schedule
        self.inquisitor = inquisitor or Inquisitor()
        self.seed, self.temperature, self.min_channels = seed, temperature, min_channels
        self.channel_multiple, self.probe_batches, self.netscore_units = channel_multiple, probe_batches, netscore_units
        self.prototype_config = prototype_config
        self.run_dir = RunDirectory(output_dir) if output_dir is not None else None
        self.export_onnx, self.log = export_onnx, log
        self.collective = collective or SingleProcess()
        self.record = SynthesisRecord(task=task_name, gate=gate.to_dict())
        self.graph: NetworkGraph | None = None
        self.generator: Generator | None = None
        self.candidate_arch: Architecture | None = None
        self.candidate_seed: int | None = None
        self.candidate_redraws = 0
        self.best_network: nn.Module | None = None
        self.best_arch: Architecture | None = None
        self.diverged = False
        self._probe_result: ProbeResult | None = None
        self._phase_started = self._run_started = time.monotonic()
        self._best_unsaved = False

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.graph.input_shape

    # --- driving ---------------------------------------------------------------------------------
    def trace(
        self,
        network: nn.Module,
        input_shape: tuple[int, ...],
        output_layers: list[str] | None = None,
        removable_blocks: list[str] | None = None,
    ) -> NetworkGraph:
        """Trace the prototype's channel groups (once, before its first training batch)."""
        self.graph = NetworkGraph.trace(network, input_shape, output_layers, removable_blocks)
        return self.graph

    def start_phase(self) -> None:
        """A phase's first epoch begins: its clock starts and its divergence flag clears."""
        self._phase_started = time.monotonic()
        self.diverged = False

    def check_loss(self, loss: Tensor) -> None:
        """A non-finite training loss marks the phase as diverged (its candidate will be rejected)."""
        if not torch.isfinite(loss).all():
            self.diverged = True

    def probes(self, epoch: int, batch_idx: int) -> bool:
        """Whether this training batch is one the inquisitor probes: the first ``probe_batches`` of a phase's
        last epoch."""
        return self.schedule.ends_phase(epoch) and batch_idx < self.probe_batches

    def attach_probe(self, network: nn.Module) -> Probe:
        arch = self.candidate_arch or self.graph.full_architecture()
        return self.inquisitor.attach(network, self.graph, arch)

    def observe(self, result: ProbeResult) -> None:
        """Keep a finished probe's result; it is folded into θ_I if its network is accepted."""
        self._probe_result = result

    def end_epoch(self, epoch: int, network: nn.Module, metric: float) -> nn.Module | None:
        """After training epoch ``epoch`` (its validation gave ``metric``): conclude the phase if it ended and
        return the next candidate to train (swap it in and rebuild the optimizers), or None to go on as is."""
        if not self.schedule.ends_phase(epoch):
            return None
        if self.schedule.phase.kind == PROTOTYPE:
            self.conclude_prototype(network, metric)
        else:
            self.conclude_cycle(network, metric)
        following = self.schedule.advance()
        candidate = self.propose(following.index) if following is not None else None
        self.save_progress()
        return candidate

    def epoch_progress(self, epoch: int, metric: float) -> str:
        """One line per epoch (phase, metric, elapsed, ETA) for logs without a live progress bar."""
        elapsed = time.monotonic() - self._run_started
        eta = elapsed / (epoch + 1) * self.schedule.remaining_epochs(epoch)
        phase = self.schedule.phase.describe() if self.schedule.phase is not None else "done"
        return epoch_line(epoch + 1, self.schedule.total_epochs, phase, self.gate.monitor, metric, elapsed, eta)

    # --- decisions -------------------------------------------------------------------------------
    def conclude_prototype(self, network: nn.Module, metric: float) -> NetworkReport:
        """φ is trained: resolve the gate from its score, create G_0, record φ as the first best network."""
        if not math.isfinite(metric) or self.diverged:
            raise FloatingPointError(
                f"the prototype's training diverged ({self.gate.monitor}={metric}, non-finite loss); "
                "lower optimizer.lr or check the data for NaN/inf values"
            )
        self.gate.resolve(metric)
        self.record.gate = self.gate.to_dict()
        self.generator = Generator(network, self.graph, self.min_channels, self.prototype_config, self.channel_multiple)
        passed = self.gate.passes(metric)
        report = self._measure(network, metric, passed)
        self.record.prototype = report
        self._set_best(self.generator.parent, self.generator.parent_arch, report, cycle=0)
        if not passed and self.collective.is_main:
            warnings.warn(
                f"the prototype itself fails the gate ({self.gate.describe()}, got {metric:.4f}): candidates are unlikely "
                "to pass. Lower gate.threshold, make it relative, or train the prototype longer (synthesis.prototype_epochs)."
            )
        self._fold_probe(self.generator.parent_arch)
        self._log(f"GenSynth: prototype {report.macs:,} MACs, {report.params:,} params; gate {self.gate.describe()}")
        self._log(cycle_header())
        return report

    def conclude_cycle(self, network: nn.Module, metric: float) -> CycleEntry:
        """The candidate of the current cycle is trained: gate it, let θ_I learn, accept it or roll back."""
        cycle, arch = self.schedule.phase.index, self.candidate_arch
        metric = math.nan if self.diverged else metric
        passed = self.collective.all_agree(self.gate.passes(metric))
        report = self._measure(network, metric, passed)
        outcome = CycleOutcome(passed=passed, margin=self.gate.margin(metric) if passed else -1.0)
        self.inquisitor.learn(outcome, self.generator.parent_arch, arch)
        if passed:
            self.generator.accept(arch, network)
            self._fold_probe(arch)
            if not self.record.best.gate_passed or report.netscore > self.record.best.netscore:
                self._set_best(network, arch, report, cycle)
        else:
            self.generator.rollback()
            self._probe_result = None
        entry = CycleEntry(
            cycle=cycle,
            seed=self.candidate_seed,
            report=report,
            accepted=passed,
            step=self.inquisitor.step,
            seconds=round(time.monotonic() - self._phase_started, 2),
            widths=arch.widths(),
            removed_blocks=list(arch.removed_blocks),
            diverged=self.diverged,
            redraws=self.candidate_redraws,
        )
        self.record.cycles.append(entry)
        self._log(cycle_row(entry, self.schedule.cycles, sum(c.seconds for c in self.record.cycles)))
        if self.diverged:
            self._log(f"cycle {cycle}: non-finite training loss; candidate rejected, generator rolled back")
        return entry

    def propose(self, cycle: int) -> nn.Module:
        """Δθ_G from the inquisitor, then the candidate of ``cycle`` sampled and built (inheriting weights)."""
        with timed("propose"):
            macs = macs_per_module(self.generator.parent, self.input_shape)
        self.generator.update(self.inquisitor.propose(self.generator, macs, macs[""]))
        own, seed, redraws = self._draw(cycle, macs)
        arch = self.collective.broadcast(own)
        if not self.collective.all_agree(arch == own):
            raise RuntimeError(f"cycle {cycle}: ranks generated different architectures from the same generator state")
        self.candidate_arch, self.candidate_seed, self.candidate_redraws = arch, seed, redraws
        return self.generator.build(arch)

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
            self.generator.update(self.inquisitor.propose(self.generator, macs, macs[""]))

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

    def _set_best(self, network: nn.Module, arch: Architecture, report: NetworkReport, cycle: int) -> None:
        self.best_network = copy.deepcopy(network).cpu()
        self.best_arch = arch
        self.record.best, self.record.best_cycle = report, cycle
        self._best_unsaved = True

    # --- output ----------------------------------------------------------------------------------
    def _log(self, text: str) -> None:
        if self.collective.is_main:
            self.log(text)

    @timed("save")
    def save_progress(self) -> None:
        """Write everything decided so far, so an interrupted run loses nothing."""
        if self.run_dir is None or not self.collective.is_main:
            return
        self.record.write(self.run_dir.summary)
        self.generator.save(self.run_dir.generator, extra={"gate": self.gate.to_dict(), "task": self.record.task})
        if self._best_unsaved:
            best = self.record.best.to_dict()
            save_network(self.run_dir.best, self.best_network, self.best_arch, self.graph, self.prototype_config, best)
            self._best_unsaved = False

    def finish(self) -> nn.Module | None:
        """After the last phase: the Pareto plot, the best network's ONNX export, the final summary; returns a
        copy of the best network (None when the prototype never finished training)."""
        if self.best_network is None:
            return None
        if self.run_dir is not None and self.collective.is_main:
            pareto_plot(self.record, self.run_dir.pareto)
            if self.export_onnx:
                export_onnx(self.best_network, self.input_shape, self.run_dir.best / ONNX_FILE)
        self._log(final_summary(self.record))
        return copy.deepcopy(self.best_network)

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
            "gate": self.gate.state_dict(),
            "record": self.record.to_dict(),
            "candidate": None if self.candidate_arch is None else self.candidate_arch.to_dict(),
            "candidate_seed": self.candidate_seed,
            "candidate_redraws": self.candidate_redraws,
            "best_arch": self.best_arch.to_dict(),
            "best_weights": cpu_state_dict(self.best_network),
        }

    def load_state_dict(self, state: dict, prototype: nn.Module) -> nn.Module | None:
        """Restore from ``state_dict`` given a freshly built prototype; returns the candidate network being
        trained when the state was saved (shaped, with the prototype's weights: load the checkpoint's next)."""
        self.trace(prototype, tuple(state["input_shape"]), state["output_layers"], state["removable_blocks"])
        self.schedule.load_state_dict(state["schedule"])
        self.generator = Generator(prototype, self.graph, self.min_channels, self.prototype_config, self.channel_multiple)
        self.generator.load_state_dict(state["generator"])
        self.inquisitor.load_state_dict(state["inquisitor"])
        self.gate.load_state_dict(state["gate"])
        self.record = SynthesisRecord.from_dict(state["record"])
        self.candidate_seed, self.candidate_redraws = state["candidate_seed"], state["candidate_redraws"]
        self.best_arch = Architecture.from_dict(state["best_arch"])
        self.best_network = self.graph.rebuild(self.generator.prototype, self.best_arch, state["best_weights"])
        if not state["candidate"]:
            return None
        self.candidate_arch = Architecture.from_dict(state["candidate"])
        return self.graph.rebuild(self.generator.prototype, self.candidate_arch)
