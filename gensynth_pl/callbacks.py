"""Lightning callback that runs generative synthesis around any LightningModule.

Timeline (in training epochs): ``prototype_epochs`` train the prototype φ, then each of ``cycles``
cycles fine-tunes one generated candidate for ``epochs_per_cycle`` epochs. During the first
``probe_batches`` batches of a phase's last epoch the inquisitor probes the network; after that
epoch's validation the callback applies the gate, lets the inquisitor learn and emit Δθ_G, samples
the next architecture from the generator and swaps it into the module (structurally smaller,
weights inherited), re-creating the optimizers (and the DDP wrapper).
"""
from __future__ import annotations

import copy
import dataclasses
import math
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

from gensynth_pl.export import ONNX_FILE, export_onnx, save_network
from gensynth_pl.gates import Gate
from gensynth_pl.generator import Generator
from gensynth_pl.graph import Architecture, NetworkGraph
from gensynth_pl.inquisitor import CycleOutcome, Inquisitor, Probe, ProbeResult
from gensynth_pl.metrics import NetScoreUnits, NetworkReport, macs_per_module
from gensynth_pl.report import SynthesisRecord, cycle_header, cycle_row, final_summary, pareto_plot
from gensynth_pl.torch_utils import cpu_state_dict


PARETO_FILE = "pareto.png"


class GenerativeSynthesis(Callback):
    """Generator-inquisitor synthesis of the network stored at ``pl_module.<network_attr>``.

    The monitored gate metric must be logged at the end of every validation epoch (check_val_every_n_epoch=1).
    With ``output_dir`` the run directory (summary.json, generator.pt, best/) is rewritten after every cycle.
    """

    def __init__(
        self,
        gate: Gate,
        cycles: int = 6,
        epochs_per_cycle: int = 1,
        prototype_epochs: int = 2,
        probe_batches: int = 16,
        seed: int = 0,
        temperature: float = 1.0,
        min_channels: float = 0.1,
        channel_multiple: int = 1,
        finetune_lr_scale: float = 0.2,
        network_attr: str = "net",
        inquisitor: Inquisitor | None = None,
        input_shape: tuple[int, ...] | None = None,
        output_layers: list[str] | None = None,
        removable_blocks: list[str] | None = None,
        prototype_config: dict | None = None,
        output_dir: str | Path | None = None,
        task_name: str = "custom",
        export_onnx: bool = True,
        netscore_units: NetScoreUnits = NetScoreUnits(),
    ) -> None:
        for name, value, low in (
            ("cycles", cycles, 1),
            ("epochs_per_cycle", epochs_per_cycle, 1),
            ("prototype_epochs", prototype_epochs, 1),
            ("probe_batches", probe_batches, 1),
            ("channel_multiple", channel_multiple, 1),
        ):
            if not isinstance(value, int) or value < low:
                raise ValueError(f"synthesis.{name}={value!r} is invalid: it must be an integer >= {low}")
        if temperature <= 0:
            raise ValueError(f"synthesis.temperature={temperature} must be > 0")
        if not 0 < finetune_lr_scale <= 1:
            raise ValueError(f"synthesis.finetune_lr_scale={finetune_lr_scale} must be in (0, 1]")
        if not 0 < min_channels <= 1:
            raise ValueError(f"synthesis.min_channels={min_channels} must be a fraction in (0, 1]")
        self.gate, self.cycles, self.epochs_per_cycle = gate, cycles, epochs_per_cycle
        self.prototype_epochs, self.probe_batches, self.seed = prototype_epochs, probe_batches, seed
        self.temperature, self.min_channels, self.network_attr = temperature, min_channels, network_attr
        self.channel_multiple, self.finetune_lr_scale = channel_multiple, finetune_lr_scale
        self.inquisitor = inquisitor or Inquisitor()
        self.input_shape = tuple(input_shape) if input_shape else None
        self.output_layers, self.removable_blocks = output_layers, removable_blocks
        self.prototype_config = prototype_config
        self.output_dir = Path(output_dir) if output_dir else None
        self.export_onnx, self.netscore_units = export_onnx, netscore_units
        self.record = SynthesisRecord(task=task_name, gate=gate.to_dict())
        self.graph: NetworkGraph | None = None
        self.generator: Generator | None = None
        self.candidate_arch: Architecture | None = None
        self.candidate_seed: int | None = None
        self.best_network: nn.Module | None = None
        self.best_arch: Architecture | None = None
        self._probe: Probe | None = None
        self._probe_result: ProbeResult | None = None
        self._diverged = False
        self._phase_started = 0.0
        self._best_unsaved = False
        self._restored = False
        self._resume_hook = None

    @property
    def total_epochs(self) -> int:
        return self.prototype_epochs + self.cycles * self.epochs_per_cycle

    # --- schedule ----------------------------------------------------------------------------------
    def _phase(self, epoch: int) -> int:
        """0 while training the prototype, k during cycle k."""
        if epoch < self.prototype_epochs:
            return 0
        return 1 + (epoch - self.prototype_epochs) // self.epochs_per_cycle

    def _ends_phase(self, epoch: int) -> bool:
        return self._phase(epoch + 1) != self._phase(epoch)

    def _network(self, pl_module: L.LightningModule) -> nn.Module:
        return getattr(pl_module, self.network_attr)

    # --- Lightning hooks ---------------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if not isinstance(getattr(pl_module, self.network_attr, None), nn.Module):
            raise AttributeError(
                f"{type(pl_module).__name__} has no nn.Module attribute '{self.network_attr}': expose the network "
                "to synthesise as an attribute and pass its name as network_attr"
            )
        if trainer.max_epochs is None or trainer.max_epochs < self.total_epochs:
            raise ValueError(
                f"trainer.max_epochs={trainer.max_epochs} is too small: {self.prototype_epochs} prototype epochs + "
                f"{self.cycles} cycles x {self.epochs_per_cycle} epochs need max_epochs={self.total_epochs}"
            )
        if trainer.check_val_every_n_epoch != 1:
            raise ValueError("the gate is checked after every epoch: set trainer.check_val_every_n_epoch=1")
        if self.output_dir is not None and trainer.is_global_zero:
            _check_writable(self.output_dir)
        if self._resume_hook is None:
            self._resume_hook = pl_module.register_load_state_dict_pre_hook(self._make_resume_hook(trainer, pl_module))

    def _make_resume_hook(self, trainer: L.Trainer, pl_module: L.LightningModule):
        """On resume Lightning loads the module's weights before any callback state, so reshape the network
        to the checkpointed candidate just before its weights are copied in."""

        def hook(module, state_dict, prefix, *args) -> None:
            if self._restored or not trainer.ckpt_path:
                return
            checkpoint = torch.load(trainer.ckpt_path, map_location="cpu", weights_only=False)
            state = checkpoint.get("callbacks", {}).get(self.state_key)
            if state:
                self._restore(state, pl_module)

        return hook

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch
        if epoch == 0 or self._ends_phase(epoch - 1) or not self._phase_started:
            self._phase_started = time.monotonic()
            self._diverged = False

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        if self.graph is None:
            network = self._network(pl_module)
            self.input_shape = self.input_shape or _input_shape(batch)
            self.graph = NetworkGraph.trace(network, self.input_shape, self.output_layers, self.removable_blocks)
        if self._ends_phase(trainer.current_epoch) and batch_idx < self.probe_batches:
            if self._probe is None:
                arch = self.candidate_arch or self.graph.full_architecture()
                self._probe = self.inquisitor.attach(self._network(pl_module), self.graph, arch)
            self._probe.record_targets(batch)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor) and not torch.isfinite(loss).all():
            self._diverged = True
        if self._probe is not None and batch_idx + 1 >= self.probe_batches:
            self._finish_probe()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._probe is not None:
            self._finish_probe()
        epoch = trainer.current_epoch
        if not self._ends_phase(epoch) or self._phase(epoch) > self.cycles:
            return
        metric = self._read_metric(trainer)
        if self._phase(epoch) == 0:
            self._conclude_prototype(trainer, pl_module, metric)
        else:
            self._conclude_cycle(trainer, pl_module, metric, self._phase(epoch))
        if self._phase(epoch) < self.cycles:
            self._generate_next(trainer, pl_module, self._phase(epoch) + 1)
        self._save_progress(trainer)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.best_network is None:
            return
        setattr(pl_module, self.network_attr, copy.deepcopy(self.best_network).to(pl_module.device))
        if trainer.is_global_zero:
            if self.output_dir is not None:
                pareto_plot(self.record, self.output_dir / PARETO_FILE)
                if self.export_onnx:
                    export_onnx(self.best_network, self.input_shape, self.output_dir / "best" / ONNX_FILE)
            _print(trainer, final_summary(self.record))

    # --- checkpointing -----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        if self.generator is None:
            return {}
        return {
            "input_shape": list(self.input_shape),
            "output_layers": self.graph.output_layers,
            "removable_blocks": self.graph.removable_blocks,
            "generator": self.generator.state_dict(),
            "inquisitor": self.inquisitor.state_dict(),
            "gate": self.gate.state_dict(),
            "record": dataclasses.asdict(self.record),
            "candidate": None if self.candidate_arch is None else self.candidate_arch.to_dict(),
            "candidate_seed": self.candidate_seed,
            "best_arch": self.best_arch.to_dict(),
            "best_weights": cpu_state_dict(self.best_network),
        }

    def load_state_dict(self, state: dict) -> None:
        """Lightning calls this after loading the model's weights, too late to reshape the network: the
        resume hook has already restored this state from ``trainer.ckpt_path`` (see ``_restore``)."""
        if state and not self._restored:
            raise RuntimeError("GenerativeSynthesis resumes only through trainer.fit(..., ckpt_path=...)")

    def _restore(self, state: dict, pl_module: L.LightningModule) -> None:
        """Rebuild generator, inquisitor, gate and history, and shape the module's network as checkpointed."""
        prototype = self._network(pl_module)  # freshly constructed: the prototype's architecture
        self.input_shape = tuple(state["input_shape"])
        self.graph = NetworkGraph.trace(prototype, self.input_shape, state["output_layers"], state["removable_blocks"])
        self.generator = Generator(prototype, self.graph, self.min_channels, self.prototype_config, self.channel_multiple)
        self.generator.load_state_dict(state["generator"])
        self.inquisitor.load_state_dict(state["inquisitor"])
        self.gate.load_state_dict(state["gate"])
        self.record = SynthesisRecord(**state["record"])
        self.candidate_seed = state["candidate_seed"]
        self.best_arch = Architecture.from_dict(state["best_arch"])
        self.best_network = self.graph.rebuild(self.generator.prototype, self.best_arch, state["best_weights"])
        if state["candidate"]:  # Lightning loads the candidate's weights right after setup
            self.candidate_arch = Architecture.from_dict(state["candidate"])
            candidate = self.graph.rebuild(self.generator.prototype, self.candidate_arch)
            setattr(pl_module, self.network_attr, candidate.to(pl_module.device))
        self._restored = True

    # --- synthesis steps ---------------------------------------------------------------------------
    def _finish_probe(self) -> None:
        self._probe_result = self._probe.detach()
        self._probe = None

    def _read_metric(self, trainer: L.Trainer) -> float:
        if self.gate.monitor not in trainer.callback_metrics:
            raise KeyError(
                f"gate metric '{self.gate.monitor}' was not logged; logged metrics: {sorted(trainer.callback_metrics)}. "
                "Log it at the end of each validation epoch or set gate.monitor to one of these"
            )
        metric = float(trainer.callback_metrics[self.gate.monitor])
        return math.nan if self._diverged else metric

    def _measure(self, network: nn.Module, metric: float, passed: bool) -> NetworkReport:
        return NetworkReport.measure(network, self.input_shape, metric, passed, self.netscore_units)

    def _conclude_prototype(self, trainer: L.Trainer, pl_module: L.LightningModule, metric: float) -> None:
        network = self._network(pl_module)
        if not math.isfinite(metric):
            raise FloatingPointError(
                f"the prototype's training diverged ({self.gate.monitor}={metric}, non-finite loss); "
                "lower optimizer.lr or check the data for NaN/inf values"
            )
        self.gate.resolve(metric)
        self.record.gate = self.gate.to_dict()
        self.generator = Generator(network, self.graph, self.min_channels, self.prototype_config, self.channel_multiple)
        passed = self.gate.passes(metric)
        report = self._measure(network, metric, passed)
        self.record.prototype = report.to_dict()
        self._set_best(self.generator.parent, self.generator.parent_arch, report, cycle=0)
        if not passed:
            rank_zero_warn(
                f"the prototype itself fails the gate ({self.gate.describe()}, got {metric:.4f}): candidates are unlikely "
                "to pass. Lower gate.threshold, make it relative, or train the prototype longer (synthesis.prototype_epochs)."
            )
        self._observe(trainer, self.generator.parent_arch)
        _print(trainer, f"GenSynth: prototype {report.macs:,} MACs, {report.params:,} params; gate {self.gate.describe()}")
        _print(trainer, cycle_header())

    def _conclude_cycle(self, trainer: L.Trainer, pl_module: L.LightningModule, metric: float, cycle: int) -> None:
        network, arch = self._network(pl_module), self.candidate_arch
        passed = trainer.strategy.reduce_boolean_decision(self.gate.passes(metric), all=True)
        report = self._measure(network, metric, passed)
        outcome = CycleOutcome(passed=passed, margin=self.gate.margin(metric) if passed else -1.0)
        self.inquisitor.learn(outcome, self.generator.parent_arch, arch)
        if passed:
            self.generator.accept(arch, network)
            self._observe(trainer, arch)
            if not self.record.best["gate_passed"] or report.netscore > self.record.best["netscore"]:
                self._set_best(network, arch, report, cycle)
        else:
            self.generator.rollback()
            self._probe_result = None
        entry = {
            "cycle": cycle,
            "seed": self.candidate_seed,
            **report.to_dict(),
            "accepted": passed,
            "diverged": self._diverged,
            "step": self.inquisitor.step,
            "seconds": round(time.monotonic() - self._phase_started, 2),
            "widths": arch.widths(),
            "removed_blocks": list(arch.removed_blocks),
        }
        self.record.cycles.append(entry)
        _print(trainer, cycle_row(entry, self.cycles, sum(c["seconds"] for c in self.record.cycles)))
        if self._diverged:
            _print(trainer, f"cycle {cycle}: non-finite training loss; candidate rejected, generator rolled back")

    def _observe(self, trainer: L.Trainer, arch: Architecture) -> None:
        """Fold the accepted network's probe into θ_I, averaged over ranks so every rank learns the same."""
        if self._probe_result is None:
            return
        measured = self.inquisitor.measure(self._probe_result)
        for values in measured.values():
            for name, value in values.items():
                values[name] = trainer.strategy.reduce(value.to(trainer.strategy.root_device), reduce_op="mean").cpu()
        self.inquisitor.fold(measured, self.graph, arch)
        self._probe_result = None

    def _generate_next(self, trainer: L.Trainer, pl_module: L.LightningModule, cycle: int) -> None:
        macs = macs_per_module(self.generator.parent, self.input_shape)
        self.generator.update(self.inquisitor.propose(self.generator, macs, macs[""]))
        seed = self.seed * 100_003 + cycle
        own = self.generator.sample(seed, self.temperature)
        arch = trainer.strategy.broadcast(own, src=0)
        if not trainer.strategy.reduce_boolean_decision(arch == own, all=True):
            raise RuntimeError(f"cycle {cycle}: ranks generated different architectures from the same generator state")
        child = self.generator.build(arch).to(pl_module.device)
        self.candidate_arch, self.candidate_seed = arch, seed
        setattr(pl_module, self.network_attr, child)
        strategy = trainer.strategy
        if isinstance(strategy, DDPStrategy):  # the old DDP wrapper still holds the parent's parameters
            strategy.model = pl_module
            strategy.configure_ddp()
        strategy.setup_optimizers(trainer)

    def _set_best(self, network: nn.Module, arch: Architecture, report: NetworkReport, cycle: int) -> None:
        self.best_network = copy.deepcopy(network).cpu()
        self.best_arch = arch
        self.record.best, self.record.best_cycle = report.to_dict(), cycle
        self._best_unsaved = True

    def _save_progress(self, trainer: L.Trainer) -> None:
        """Write everything learned so far, so an interrupted run loses nothing already decided."""
        if self.output_dir is None or not trainer.is_global_zero:
            return
        self.record.write(self.output_dir / "summary.json")
        self.generator.save(self.output_dir / "generator.pt", extra={"gate": self.gate.to_dict(), "task": self.record.task})
        if self._best_unsaved:
            save_network(self.output_dir / "best", self.best_network, self.best_arch, self.graph, self.prototype_config, self.record.best)
            self._best_unsaved = False


def _check_writable(directory: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / ".gensynth-write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as error:
        raise PermissionError(
            f"output directory '{directory}' is not writable ({error}); choose another output_dir / hydra.run.dir"
        ) from error


def _input_shape(batch) -> tuple[int, ...]:
    if isinstance(batch, torch.Tensor):
        return tuple(batch.shape[1:])
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
        return tuple(batch[0].shape[1:])
    if isinstance(batch, dict):
        for value in batch.values():
            if isinstance(value, torch.Tensor):
                return tuple(value.shape[1:])
    raise ValueError("cannot infer the network's input shape from the batch; pass input_shape to GenerativeSynthesis")


def _print(trainer: L.Trainer, text: str) -> None:
    if not trainer.is_global_zero:
        return
    bar = trainer.progress_bar_callback
    (bar.print if bar is not None and hasattr(bar, "print") else print)(text)


@dataclasses.dataclass(frozen=True)
class TrainingPhase:
    """What ``configure_optimizers`` needs to know about the phase about to be trained."""

    steps: int  # optimizer steps in the phase: size a schedule that restarts with every generated network
    lr_scale: float  # multiply the optimizer's learning rates by this (fine-tuning a candidate vs training φ)


def training_phase(trainer: L.Trainer) -> TrainingPhase:
    """The phase about to be trained (the prototype's or a cycle's); the whole fit when no synthesis callback runs.
    Call it from ``configure_optimizers``: the callback rebuilds the optimizers for every generated network."""
    total = trainer.estimated_stepping_batches  # also loads the training dataloader when called first
    synthesis = next((c for c in trainer.callbacks if isinstance(c, GenerativeSynthesis)), None)
    if synthesis is None:
        if not math.isfinite(total):
            raise ValueError("the learning-rate schedule needs a finite run: set trainer.max_epochs or max_steps")
        return TrainingPhase(int(total), 1.0)
    if not math.isfinite(trainer.num_training_batches):
        raise ValueError(
            "the per-phase learning-rate schedule needs the number of training batches per epoch: use a sized "
            "training dataloader (or set scheduler=null)"
        )
    per_epoch = math.ceil(trainer.num_training_batches / trainer.accumulate_grad_batches)
    if synthesis.candidate_arch is None:
        return TrainingPhase(per_epoch * synthesis.prototype_epochs, 1.0)
    return TrainingPhase(per_epoch * synthesis.epochs_per_cycle, synthesis.finetune_lr_scale)
