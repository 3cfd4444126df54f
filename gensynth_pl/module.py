"""The LightningModule that wraps a generated network; the synthesis callback swaps ``net`` each cycle."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import lightning as L
import torch
from torch import Tensor, nn
from torchmetrics import MetricCollection

from gensynth_pl.distillation import Distiller, soft_target_loss
from gensynth_pl.schedule import FINETUNE_LR_SCALE, training_phase
from gensynth_pl.settings import DEFAULTS

SchedulerFactory = Callable[[torch.optim.Optimizer, int], torch.optim.lr_scheduler.LRScheduler]


class Task(Protocol):
    """What a task plugs into the module: its loss and its torchmetrics (the gate reads one of them)."""

    name: str

    def loss(self, outputs: Any, targets: Any) -> Tensor: ...

    def metrics(self) -> MetricCollection:
        """Validation metrics, logged as ``val/<name>``."""

    def metric_inputs(self, outputs: Any, targets: Any) -> tuple:
        """The arguments of ``metrics().update`` (e.g. decoded boxes for detection)."""


def sgd(params, lr: float = 0.05) -> torch.optim.Optimizer:
    """The default optimizer, the same as ``conf/train.yaml``'s."""
    return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=5e-4, nesterov=True)


def scale_learning_rate(optimizer: torch.optim.Optimizer, factor: float) -> torch.optim.Optimizer:
    """Multiply every group's rate; call before building a scheduler, which records the rates it starts from."""
    for group in optimizer.param_groups:
        group["lr"] *= factor
    return optimizer


def cosine_per_phase(optimizer: torch.optim.Optimizer, steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    """Cosine decay to zero over one phase: every generated network gets a full fine-tuning schedule of its own
    instead of inheriting the tail of a run-long one."""
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, steps))


@dataclass(frozen=True)
class Recipe:
    """How a network is trained after φ: the run's optimizer and per-phase scheduler at its fine-tuning rate,
    learning from φ as the run's candidates did. The family and the benchmarks train with it."""

    optimizer: Callable[..., torch.optim.Optimizer] | None = None
    scheduler: SchedulerFactory | None = None
    finetune_lr_scale: float = FINETUNE_LR_SCALE
    distill_weight: float = DEFAULTS.distill_weight
    distill_temperature: float = DEFAULTS.distill_temperature
    distill_every: int = DEFAULTS.distill_every

    def module(self, network: nn.Module, task: Task, fine_tuning: bool = True) -> "SynthesisModule":
        """``network`` wrapped for training: at the fine-tuning rate, or at φ's rate (``fine_tuning`` False)."""
        optimizer, scale = self.optimizer or sgd, self.finetune_lr_scale if fine_tuning else 1.0
        return SynthesisModule(network, task, lambda params: scale_learning_rate(optimizer(params), scale), self.scheduler)

    @contextmanager
    def distilling(self, teacher: nn.Module | None, module: "SynthesisModule") -> Iterator[None]:
        """Within the block, ``module``'s network learns from ``teacher`` too (not when None or the weight is 0)."""
        if teacher is None or self.distill_weight == 0:
            yield
            return
        distiller = Distiller(teacher, module.distillation_loss, self.distill_weight, self.distill_temperature,
                              self.distill_every)
        handle = distiller.attach(module.net)
        try:
            yield
        finally:
            handle.remove()


class SynthesisModule(L.LightningModule):
    """The optimizer and ``scheduler(optimizer, steps)`` are rebuilt for every phase (the prototype's, then each
    cycle's) from :func:`training_phase`: the learning rates scaled for fine-tuning a candidate, the scheduler
    sized to the phase's optimizer steps and stepped after every one; ``scheduler=None`` keeps the rate constant."""

    def __init__(
        self,
        net: nn.Module,
        task: Task,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: SchedulerFactory | None = None,
    ) -> None:
        super().__init__()
        self.net, self.task = net, task
        self.optimizer_factory = optimizer or sgd
        self.scheduler_factory = scheduler
        self.val_metrics = task.metrics().clone(prefix="val/")
        self.test_metrics = task.metrics().clone(prefix="test/")

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def distillation_loss(self, student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
        """How a candidate learns from φ's outputs (gensynth_pl.distillation): the task's rule, or soft targets."""
        rule = getattr(self.task, "distillation_loss", None)
        return (rule or soft_target_loss)(student, teacher, temperature)

    def training_step(self, batch, batch_idx: int) -> Tensor:
        inputs, targets = batch
        loss = self.task.loss(self.net(inputs), targets)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(inputs))
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch, "val", self.val_metrics)

    def test_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch, "test", self.test_metrics)

    def on_validation_epoch_end(self) -> None:
        self._log_metrics(self.val_metrics)

    def on_test_epoch_end(self) -> None:
        self._log_metrics(self.test_metrics)

    def _evaluate(self, batch, split: str, metrics: MetricCollection) -> None:
        inputs, targets = batch
        outputs = self.net(inputs)
        self.log(f"{split}/loss", self.task.loss(outputs, targets), batch_size=len(inputs))
        metrics.update(*self.task.metric_inputs(outputs, targets))

    def _log_metrics(self, metrics: MetricCollection) -> None:
        # Log floating-point scalars only: some metrics also return per-class tensors and integer bookkeeping
        # (MeanAveragePrecision's ``map_per_class``, ``classes``), which Lightning cannot log.
        values = metrics.compute()
        self.log_dict({k: v for k, v in values.items() if v.numel() == 1 and v.is_floating_point()}, prog_bar=True)
        metrics.reset()

    def configure_optimizers(self):
        phase = training_phase(self.trainer)
        optimizer = scale_learning_rate(self.optimizer_factory(self.net.parameters()), phase.lr_scale)
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer, phase.steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
