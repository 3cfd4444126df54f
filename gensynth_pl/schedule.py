"""The run's epoch budget and its phases: the prototype φ's training, then one phase per synthesis cycle.

The schedule is the one place that knows which phase an epoch belongs to, how long a phase lasts and at
which learning-rate scale it trains. The synthesis loop moves it on; ``training_phase`` reads it from any
callback that exposes it, so a module sizes its learning-rate schedule without knowing the callback.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import lightning as L

PROTOTYPE, CYCLE = "prototype", "cycle"


@dataclass(frozen=True)
class Phase:
    """A stretch of training with one network: φ's training (``index`` 0) or cycle ``index``'s candidate."""

    kind: str
    index: int
    epochs: int  # planned length
    lr_scale: float  # multiplies the optimizer's learning rates (fine-tuning a candidate vs training φ)
    start: int  # the run's epoch this phase starts at

    @property
    def last_epoch(self) -> int:
        return self.start + self.epochs - 1

    def describe(self) -> str:
        return "prototype" if self.kind == PROTOTYPE else f"cycle {self.index}"


class Schedule:
    """Phases in order: φ for ``prototype_epochs``, then ``cycles`` cycles of ``epochs_per_cycle`` epochs, each
    fine-tuning its candidate at ``finetune_lr_scale`` of φ's learning rate."""

    def __init__(self, prototype_epochs: int, cycles: int, epochs_per_cycle: int, finetune_lr_scale: float) -> None:
        for name, value in (("prototype_epochs", prototype_epochs), ("cycles", cycles), ("epochs_per_cycle", epochs_per_cycle)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"synthesis.{name}={value!r} is invalid: it must be an integer >= 1")
        if not 0 < finetune_lr_scale <= 1:
            raise ValueError(f"synthesis.finetune_lr_scale={finetune_lr_scale} must be in (0, 1]")
        self.prototype_epochs, self.cycles, self.epochs_per_cycle = prototype_epochs, cycles, epochs_per_cycle
        self.finetune_lr_scale = finetune_lr_scale
        self.phase: Phase | None = Phase(PROTOTYPE, 0, prototype_epochs, 1.0, start=0)

    @property
    def total_epochs(self) -> int:
        """The run's whole budget: what ``trainer.max_epochs`` must allow."""
        return self.prototype_epochs + self.cycles * self.epochs_per_cycle

    def ends_phase(self, epoch: int) -> bool:
        return self.phase is not None and epoch >= self.phase.last_epoch

    def advance(self) -> Phase | None:
        """Move on from the current phase (it ended); returns the next one, or None when the run is complete."""
        current = self.phase
        index = current.index + 1
        start = current.last_epoch + 1
        self.phase = Phase(CYCLE, index, self.epochs_per_cycle, self.finetune_lr_scale, start) if index <= self.cycles else None
        return self.phase

    def remaining_epochs(self, epoch: int) -> int:
        """Epochs of the budget left after ``epoch``."""
        return max(0, self.total_epochs - epoch - 1)

    def state_dict(self) -> dict:
        return {"phase": None if self.phase is None else asdict(self.phase)}

    def load_state_dict(self, state: dict) -> None:
        self.phase = None if state["phase"] is None else Phase(**state["phase"])


@dataclass(frozen=True)
class TrainingPhase:
    """What ``configure_optimizers`` needs to know about the phase about to be trained."""

    steps: int  # optimizer steps in the phase: size a schedule that restarts with every generated network
    lr_scale: float  # multiply the optimizer's learning rates by this (fine-tuning a candidate vs training φ)


def find_schedule(trainer: L.Trainer) -> Schedule | None:
    """The schedule of a synthesis callback in ``trainer`` (any callback with a ``schedule`` attribute)."""
    return next((c.schedule for c in trainer.callbacks if isinstance(getattr(c, "schedule", None), Schedule)), None)


def training_phase(trainer: L.Trainer) -> TrainingPhase:
    """The phase about to be trained (the prototype's or a cycle's); the whole fit when no synthesis runs.
    Call it from ``configure_optimizers``: the synthesis rebuilds the optimizers for every generated network."""
    total = trainer.estimated_stepping_batches  # also loads the training dataloader when called first
    schedule = find_schedule(trainer)
    if schedule is None or schedule.phase is None:
        if not math.isfinite(total):
            raise ValueError("the learning-rate schedule needs a finite run: set trainer.max_epochs or max_steps")
        return TrainingPhase(int(total), 1.0)
    if not math.isfinite(trainer.num_training_batches):
        raise ValueError(
            "the per-phase learning-rate schedule needs the number of training batches per epoch: use a sized "
            "training dataloader (or set scheduler=null)"
        )
    per_epoch = math.ceil(trainer.num_training_batches / trainer.accumulate_grad_batches)
    return TrainingPhase(per_epoch * schedule.phase.epochs, schedule.phase.lr_scale)
