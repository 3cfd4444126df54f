"""The Lightning callback that runs generative synthesis around any LightningModule.

It adapts the Trainer-free ``SynthesisLoop`` (gensynth_pl/loop.py) to Lightning's hooks, in the style of
Lightning's own EarlyStopping: probing around the batches the loop names, the loop's decision after every
epoch, swapping the generated network into the module (re-creating the optimizers and the DDP wrapper),
agreement between DDP ranks, and resuming from a checkpoint.
"""
from __future__ import annotations

import copy
import sys
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.strategies import DDPStrategy
from torch import Tensor, nn

from gensynth_pl.data.common import has_test_split
from gensynth_pl.costs import CostFactory
from gensynth_pl.distillation import module_distillation_loss
from gensynth_pl.family import FamilySettings
from gensynth_pl.gates import Gate, Requirements
from gensynth_pl.inquisitor import Inquisitor, Probe
from gensynth_pl.loop import SynthesisLoop
from gensynth_pl.metrics import NetScoreUnits
from gensynth_pl.schedule import FINETUNE_LR_SCALE, Schedule
from gensynth_pl.settings import DEFAULTS, SynthesisSettings


class GenerativeSynthesis(Callback):
    """Generator-inquisitor synthesis of the network stored at ``pl_module.<network_attr>``, as a Lightning callback.

    Add it to your own ``Trainer`` with ``max_epochs=synthesis.total_epochs``. The callback trains the prototype φ,
    resolves the gate against φ's score, then swaps generated candidates into the module cycle after cycle
    (rebuilding the optimizers through ``configure_optimizers`` after every swap), polishes the best one, and at the
    end of ``fit`` leaves the answer, the best network that meets every condition, in the module. Every setting's
    default here is also the Hydra default of ``python train.py`` (``synthesis.*``).

    Args:
        gate: the operational requirement: a ``Gate`` (one metric) or ``Requirements`` (several metric gates, MAC,
            parameter and latency budgets). Its monitored metrics must be logged at the end of every validation
            epoch.
        cycles: synthesis cycles; they share ``cycles`` x ``epochs_per_cycle`` epochs.
        epochs_per_cycle: the most epochs one candidate is fine-tuned (a candidate rejected early frees the rest).
        prototype_epochs: epochs that train φ (0 with weights trained already: one epoch at rate 0 validates and
            probes it; its running statistics are restored before it is validated, so nothing of it changes).
        probe_batches: batches the inquisitor probes at the start of each phase's last epoch.
        seed: the sampling seed; each cycle's draw derives from it and the cycle number.
        temperature: sampling temperature of the keep-logits.
        min_channels: the fraction of each channel group every sample keeps.
        channel_multiple: sampled widths are rounded to multiples of this (at most a quarter of the group's
            width); 1 keeps exact widths.
        finetune_lr_scale: candidates (and the polish, unless ``polish_lr_scale`` is set) train at this fraction of
            φ's learning rate.
        polish_lr_scale: the polish's fraction of φ's learning rate; None: ``finetune_lr_scale``. At 1.0 the
            polish retrains the answer at φ's rate (learning-rate rewinding), moving it further from φ's weights.
        polish_epochs: epochs that fine-tune the best candidate after the cycles (plus the epochs they left).
        recovery_allowance: intermediate candidates are accepted within this fraction of the recovery measured in
            this run (first epoch to last) below the bound; 0 judges them at the real bound.
        early_reject_margin: a candidate whose first-epoch metric plus the measured recovery stays this far below its
            allowed bound is rejected at once; None never rejects early.
        distill_weight: weight of distillation from φ into every candidate and the polish (0: off).
        distill_temperature: distillation temperature.
        distill_every: distil on every k-th batch, at k times the weight.
        cost: what a channel costs in the inquisitor's ranking: ``"macs"``, ``"latency"`` (measured per layer) or a
            factory ``(prototype, CostContext) -> Costs`` (gensynth_pl.costs).
        network_attr: the module attribute that holds the network to synthesise.
        inquisitor: the inquisitor's settings and importance rule (default: ``Inquisitor()``).
        input_shape: one input's shape without the batch dimension (default: read from the first batch).
        output_layers: layers never pruned (default: what the prototype declares, or tracing finds).
        removable_blocks: residual blocks that may be removed whole (default: declared or traced).
        prototype_config: the prototype's Hydra recipe, saved so the generator and networks reload without it.
        output_dir: the run directory (summary.json, generator.safetensors, best/), rewritten after every phase; None:
            nothing is written.
        task_name: the task named in summary.json and the console.
        export_onnx: also export the answer to ``best/network.onnx``.
        netscore_units: the units and exponents of NetScore.
        progress_lines: print one line per epoch; None: only when stdout is not a terminal.
        family: the networks for other budgets ``train.py`` builds after the run (``build_family``).
        first_cycle_epochs: epochs of the first cycle (None: ``epochs_per_cycle``); with one-epoch cycles, 2
            measures what a further epoch recovers, which the recovery allowance needs.

    Raises:
        ValueError: a setting out of range (the message names it and the valid range), at construction; at
            ``fit``: ``trainer.max_epochs`` below ``total_epochs`` or ``check_val_every_n_epoch`` other than 1.
        AttributeError: at ``fit``, the module has no ``nn.Module`` attribute named ``network_attr``.
        KeyError: after the first validation epoch, a gate metric was not logged (the message lists those that were).

    Example:
        ```python
        synthesis = GenerativeSynthesis(Gate("val_acc", threshold=0.01), network_attr="backbone",
                                        cycles=4, prototype_epochs=3, output_dir="gensynth_run")
        trainer = L.Trainer(max_epochs=synthesis.total_epochs, callbacks=[synthesis])
        trainer.fit(MyModule(), datamodule=datamodule)
        synthesis.record.best   # the answer's params, MACs, metric, NetScore; the module now holds the answer
        ```
    """

    def __init__(
        self,
        gate: Gate | Requirements,
        cycles: int = 8,
        epochs_per_cycle: int = 2,
        prototype_epochs: int = 8,
        probe_batches: int = DEFAULTS.probe_batches,
        seed: int = DEFAULTS.seed,
        temperature: float = DEFAULTS.temperature,
        min_channels: float = DEFAULTS.min_channels,
        channel_multiple: int = DEFAULTS.channel_multiple,
        finetune_lr_scale: float = FINETUNE_LR_SCALE,
        polish_epochs: int = 4,
        recovery_allowance: float = DEFAULTS.recovery_allowance,
        early_reject_margin: float | None = DEFAULTS.early_reject_margin,
        distill_weight: float = DEFAULTS.distill_weight,
        distill_temperature: float = DEFAULTS.distill_temperature,
        distill_every: int = DEFAULTS.distill_every,
        cost: str | CostFactory = DEFAULTS.cost,
        network_attr: str = "net",
        inquisitor: Inquisitor | None = None,
        input_shape: tuple[int, ...] | None = None,
        output_layers: list[str] | None = None,
        removable_blocks: list[str] | None = None,
        prototype_config: dict | None = None,
        output_dir: str | None = None,
        task_name: str = "custom",
        export_onnx: bool = DEFAULTS.export_onnx,
        netscore_units: NetScoreUnits = DEFAULTS.netscore_units,
        progress_lines: bool | None = None,
        family: FamilySettings = FamilySettings(),
        first_cycle_epochs: int | None = None,
        polish_lr_scale: float | None = None,
    ) -> None:
        self.schedule = Schedule(prototype_epochs, cycles, epochs_per_cycle, finetune_lr_scale, polish_epochs,
                                 first_cycle_epochs, polish_lr_scale)
        settings = SynthesisSettings(
            seed=seed, temperature=temperature, min_channels=min_channels, channel_multiple=channel_multiple,
            probe_batches=probe_batches, recovery_allowance=recovery_allowance, early_reject_margin=early_reject_margin,
            distill_weight=distill_weight, distill_temperature=distill_temperature, distill_every=distill_every,
            cost=cost, export_onnx=export_onnx, netscore_units=netscore_units,
        )
        self.loop = SynthesisLoop(gate, self.schedule, settings, inquisitor=inquisitor, prototype_config=prototype_config,
                                  task_name=task_name, output_dir=output_dir)
        self.network_attr = network_attr
        self.input_shape = tuple(input_shape) if input_shape else None
        self.output_layers, self.removable_blocks = output_layers, removable_blocks
        self.progress_lines = progress_lines  # a line per epoch; None: only when stdout is not a terminal
        self.testing: str | None = None  # the network evaluate_test_split is testing ("prototype", "best")
        self.family = family  # the networks the run ends with (gensynth_pl.family.build_family, after fit)
        self._probe: Probe | None = None
        self._given_buffers: dict[str, Tensor] | None = None  # a trained φ's running statistics, during its epoch
        self._restored = False
        self._resume_hook = None

    # what users and the tools read
    @property
    def total_epochs(self) -> int:
        return self.schedule.total_epochs

    @property
    def record(self):
        return self.loop.record

    @property
    def output_dir(self) -> Path | None:
        return self.loop.run_dir.root if self.loop.run_dir else None

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
            s = self.schedule
            raise ValueError(
                f"trainer.max_epochs={trainer.max_epochs} is too small: {s.prototype_epochs} prototype epochs + "
                f"{s.cycles} cycles x {s.epochs_per_cycle} epochs + {s.polish_epochs} polish epochs need "
                f"max_epochs={self.total_epochs}"
            )
        if trainer.check_val_every_n_epoch != 1:
            raise ValueError("the gate is checked after every epoch: set trainer.check_val_every_n_epoch=1")
        self.loop.log = lambda text: _print(trainer, text)
        self.loop.collective = StrategyCollective(trainer)
        self.loop.distillation_loss = module_distillation_loss(pl_module)
        if self.loop.run_dir is not None and trainer.is_global_zero:
            self.loop.run_dir.check_writable()
        if self._resume_hook is None:
            self._resume_hook = pl_module.register_load_state_dict_pre_hook(self._make_resume_hook(trainer, pl_module))

    def _make_resume_hook(self, trainer: L.Trainer, pl_module: L.LightningModule):
        """On resume Lightning loads the module's weights before any callback state, so reshape the network
        to the checkpointed candidate just before its weights are copied in."""

        def hook(module, state_dict, prefix, *args) -> None:
            if self._restored or not trainer.ckpt_path:
                return
            checkpoint = torch.load(trainer.ckpt_path, map_location="cpu", weights_only=True)
            state = checkpoint.get("callbacks", {}).get(self.state_key)
            if state:
                candidate = self.loop.load_state_dict(state, self._network(pl_module))
                if candidate is not None:  # Lightning loads the candidate's weights right after this hook
                    setattr(pl_module, self.network_attr, candidate.to(pl_module.device))
                self._restored = True

        return hook

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        phase = self.schedule.phase
        if phase is not None and phase.lr_scale == 0:  # φ trained already: its batches may not move its statistics
            self._given_buffers = {name: b.clone() for name, b in self._network(pl_module).named_buffers()}

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore_given_buffers(pl_module)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        if self.loop.graph is None:
            self.input_shape = self.input_shape or _input_shape(batch)
            self.loop.trace(self._network(pl_module), self.input_shape, self.output_layers, self.removable_blocks)
        if self.loop.probes(trainer.current_epoch, batch_idx):
            if self._probe is None:
                self._probe = self.loop.attach_probe(self._network(pl_module))
            self._probe.record_targets(batch)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, Tensor):
            self.loop.check_loss(loss.detach())
        if self._probe is not None and batch_idx + 1 >= self.loop.settings.probe_batches:
            self._finish_probe()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore_given_buffers(pl_module)  # before φ is copied into the generator
        self._given_buffers = None
        if self._probe is not None:
            self._finish_probe()
        if self.schedule.phase is None:  # the run's phases are over (max_epochs allows more)
            return
        epoch, metrics = trainer.current_epoch, self._read_metrics(trainer)
        if self._prints_progress(trainer):
            print(self.loop.epoch_progress(epoch, metrics[self.loop.gate.monitor]), flush=True)
        upcoming = self.loop.end_epoch(epoch, self._network(pl_module), metrics)
        if upcoming is not None:
            self._swap_in(trainer, pl_module, upcoming)
        elif self.schedule.phase is None:
            trainer.should_stop = True  # complete before max_epochs: e.g. nothing passed, so nothing to polish

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        best = self.loop.finish()
        if best is not None:
            setattr(pl_module, self.network_attr, best.to(pl_module.device))

    def evaluate_test_split(
        self, trainer: L.Trainer, pl_module: L.LightningModule, datamodule: L.LightningDataModule
    ) -> dict[str, dict[str, float]] | None:
        """After ``fit``: the prototype and the run's answer on the data's test split, which never influenced a
        decision; the metrics the module logs in ``test_step`` go into summary.json, the console and the loggers.
        Returns ``{"prototype": {...}, "best": {...}}``, or None when the data has no test split."""
        if self.loop.best is None or not has_test_split(datamodule):
            return None
        results = {}
        for name, network in (("prototype", self.loop.generator.prototype), ("best", self.loop.best.network)):
            self.testing = name
            setattr(pl_module, self.network_attr, copy.deepcopy(network).to(pl_module.device))
            (metrics,) = trainer.test(pl_module, datamodule=datamodule, verbose=False)
            results[name] = {key.removeprefix("test/"): float(value) for key, value in metrics.items()}
        self.testing = None
        self.loop.record_test(results)
        return results

    # --- checkpointing -----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return self.loop.state_dict()

    def load_state_dict(self, state: dict) -> None:
        """Lightning calls this after loading the model's weights, too late to reshape the network: the
        resume hook has already restored this state from ``trainer.ckpt_path``."""
        if state and not self._restored:
            raise RuntimeError("GenerativeSynthesis resumes only through trainer.fit(..., ckpt_path=...)")

    # --- helpers -----------------------------------------------------------------------------------
    def _restore_given_buffers(self, pl_module: L.LightningModule) -> None:
        """A trained φ's epoch at rate 0 trains in train mode, as φ's own last epoch did (its probe sees batch
        statistics), but it is validated and kept with the running statistics it came with."""
        if self._given_buffers is not None:
            with torch.no_grad():
                for name, buffer in self._network(pl_module).named_buffers():
                    buffer.copy_(self._given_buffers[name])

    def _finish_probe(self) -> None:
        self.loop.observe(self._probe.detach())
        self._probe = None

    def _read_metrics(self, trainer: L.Trainer) -> dict[str, float]:
        """Every gate's monitored value (the primary one first)."""
        logged = trainer.callback_metrics
        for gate in self.loop.requirements.gates:
            if gate.monitor not in logged:
                raise KeyError(
                    f"gate metric '{gate.monitor}' was not logged; logged metrics: {sorted(logged)}. "
                    "Log it at the end of each validation epoch or set gate.monitor to one of these"
                )
        return {gate.monitor: float(logged[gate.monitor]) for gate in self.loop.requirements.gates}

    def _prints_progress(self, trainer: L.Trainer) -> bool:
        wanted = self.progress_lines if self.progress_lines is not None else not sys.stdout.isatty()
        return wanted and trainer.is_global_zero

    def _swap_in(self, trainer: L.Trainer, pl_module: L.LightningModule, network: nn.Module) -> None:
        """Train ``network`` from the next epoch on: new parameters need new optimizers (and a new DDP wrapper)."""
        setattr(pl_module, self.network_attr, network.to(pl_module.device))
        strategy = trainer.strategy
        if isinstance(strategy, DDPStrategy):  # the old DDP wrapper still holds the parent's parameters
            strategy.model = pl_module
            strategy.configure_ddp()
        strategy.setup_optimizers(trainer)


class StrategyCollective:
    """The loop's agreement between processes, through the Trainer's strategy (DDP ranks; one process: no-ops)."""

    def __init__(self, trainer: L.Trainer) -> None:
        self.trainer = trainer

    @property
    def is_main(self) -> bool:
        return self.trainer.is_global_zero

    def all_agree(self, decision: bool) -> bool:
        return self.trainer.strategy.reduce_boolean_decision(decision, all=True)

    def mean(self, value: Tensor) -> Tensor:
        strategy = self.trainer.strategy
        return strategy.reduce(value.to(strategy.root_device), reduce_op="mean").cpu()

    def broadcast(self, obj):
        return self.trainer.strategy.broadcast(obj, src=0)


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
