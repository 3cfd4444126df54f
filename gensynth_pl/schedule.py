"""The run's epoch budget and its phases: the prototype φ's training, the synthesis cycles, the polish.

The schedule is the one place that knows which phase an epoch belongs to, how long a phase lasts and at
which learning-rate scale it trains. The synthesis loop moves it on (and may end a cycle early); the
epochs a cycle did not use go to later cycles or to the polish, so the run's epochs are a budget, not a
grid. ``training_phase`` reads the schedule from any callback that exposes it, so a module sizes its
learning-rate schedule without knowing the callback.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from enum import Enum

import lightning as L


# the fraction of φ's learning rate candidates and the polish fine-tune at, unless set (the synthesis's and the
# Recipe's default): at 0.2 a two-epoch cycle recovered too little (docs/results/cifar10.md#the-fine-tuning-rate)
FINETUNE_LR_SCALE = 0.5


class PhaseKind(str, Enum):
    PROTOTYPE = "prototype"
    CYCLE = "cycle"
    POLISH = "polish"


PROTOTYPE, CYCLE, POLISH = PhaseKind


@dataclass(frozen=True)
class Phase:
    """A stretch of training with one network: φ's training, cycle ``index``'s candidate, or the polish of the
    best candidate."""

    kind: PhaseKind
    index: int
    epochs: int  # planned length
    lr_scale: float  # multiplies the optimizer's learning rates (fine-tuning a candidate vs training φ)
    start: int  # the run's epoch this phase starts at

    @property
    def last_epoch(self) -> int:
        return self.start + self.epochs - 1

    def describe(self) -> str:
        return f"cycle {self.index}" if self.kind == CYCLE else self.kind.value


class Schedule:
    """φ trains for ``prototype_epochs``; the cycles share a budget of ``cycles`` x ``epochs_per_cycle`` epochs,
    each cycle fine-tuning its candidate for up to ``epochs_per_cycle`` epochs at ``finetune_lr_scale`` of φ's
    learning rate; the polish fine-tunes the best candidate for ``polish_epochs`` plus whatever the cycles left.
    ``prototype_epochs=0``: φ is trained already; its phase is one epoch at learning rate 0 (the callback restores
    its running statistics after the batches), which validates and probes it without changing it.
    ``first_cycle_epochs`` (None: ``epochs_per_cycle``) lets the first cycle train longer: with one-epoch cycles
    nothing else measures what a further epoch recovers, so the referee's allowance would stay 0 (the epochs come
    out of the cycles' budget). ``polish_lr_scale`` (None: ``finetune_lr_scale``) is the polish's own rate: it
    trains one network long enough to move further from φ's weights than a candidate should."""

    def __init__(
        self, prototype_epochs: int, cycles: int, epochs_per_cycle: int, finetune_lr_scale: float, polish_epochs: int = 0,
        first_cycle_epochs: int | None = None, polish_lr_scale: float | None = None,
    ) -> None:
        for name, value, low in (("prototype_epochs", prototype_epochs, 0), ("cycles", cycles, 1),
                                 ("epochs_per_cycle", epochs_per_cycle, 1), ("polish_epochs", polish_epochs, 0)):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"synthesis.{name}={value!r} is invalid: it must be an integer >= {low}")
        polish_rate = finetune_lr_scale if polish_lr_scale is None else polish_lr_scale
        for name, value in (("finetune_lr_scale", finetune_lr_scale), ("polish_lr_scale", polish_rate)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
                raise ValueError(f"synthesis.{name}={value!r} must be a number in (0, 1]")
        if first_cycle_epochs is not None and not (isinstance(first_cycle_epochs, int) and first_cycle_epochs >= 1):
            raise ValueError(f"synthesis.first_cycle_epochs={first_cycle_epochs!r} must be an integer >= 1 (null: "
                             "epochs_per_cycle)")
        self.first_cycle_epochs = first_cycle_epochs or epochs_per_cycle
        self.prototype_epochs, self.cycles, self.epochs_per_cycle = prototype_epochs, cycles, epochs_per_cycle
        self.finetune_lr_scale, self.polish_epochs = finetune_lr_scale, polish_epochs
        self.polish_lr_scale = polish_rate
        trained = prototype_epochs == 0
        self.phase: Phase | None = Phase(PROTOTYPE, 0, self.prototype_phase_epochs, 0.0 if trained else 1.0, start=0)
        self.cycle_epochs_used = 0

    @property
    def prototype_phase_epochs(self) -> int:
        return max(1, self.prototype_epochs)

    @property
    def total_epochs(self) -> int:
        """The run's whole budget: what ``trainer.max_epochs`` must allow."""
        return self.prototype_phase_epochs + self.cycle_budget + self.polish_epochs

    @property
    def cycle_budget(self) -> int:
        return self.cycles * self.epochs_per_cycle

    @property
    def epochs_after_prototype(self) -> int:
        """What the run trains after φ: the epochs a fair comparison gives every fine-tuning method."""
        return self.cycle_budget + self.polish_epochs

    def ends_phase(self, epoch: int) -> bool:
        """Whether ``epoch`` is the current phase's planned last epoch."""
        return self.phase is not None and epoch >= self.phase.last_epoch

    def epochs_into_phase(self, epoch: int) -> int:
        """How many epochs of the current phase have been trained once ``epoch`` ends."""
        return epoch - self.phase.start + 1

    def advance(self, epoch: int, can_polish: bool = True) -> Phase | None:
        """End the current phase after ``epoch`` (its planned end, or earlier) and return the next phase: another
        cycle while the cycles' budget holds one, then the polish with the epochs the cycles left (when there is
        one, ``polish_epochs`` > 0, and ``can_polish``: a candidate to polish), or None when the run is complete."""
        current, start = self.phase, epoch + 1
        if current.kind == CYCLE:
            self.cycle_epochs_used += self.epochs_into_phase(epoch)
        self.phase = None
        if current.kind in (PROTOTYPE, CYCLE):
            left = self.cycle_budget - self.cycle_epochs_used
            epochs = self.first_cycle_epochs if current.kind == PROTOTYPE else self.epochs_per_cycle
            if left >= epochs:
                self.phase = Phase(CYCLE, current.index + 1, epochs, self.finetune_lr_scale, start)
            elif can_polish and self.polish_epochs > 0:
                self.phase = Phase(POLISH, current.index + 1, self.polish_epochs + left, self.polish_lr_scale, start)
        return self.phase

    def remaining_epochs(self, epoch: int) -> int:
        """Epochs of the budget left after ``epoch``."""
        return max(0, self.total_epochs - epoch - 1)

    def state_dict(self) -> dict:
        """Plain data only (a checkpoint is read with weights_only): the phase kind as its name."""
        phase = None if self.phase is None else {**asdict(self.phase), "kind": self.phase.kind.value}
        return {"phase": phase, "cycle_epochs_used": self.cycle_epochs_used}

    def load_state_dict(self, state: dict) -> None:
        self.phase = None if state["phase"] is None else Phase(**{**state["phase"], "kind": PhaseKind(state["phase"]["kind"])})
        self.cycle_epochs_used = state["cycle_epochs_used"]


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
