"""Knowledge distillation from the prototype φ into the networks a synthesis fine-tunes, for any LightningModule.

A forward hook on the network runs the teacher (a frozen copy of the trained φ, in eval mode) on the same
input and attaches the distillation loss's gradient to the network's output: the module's own loss is
untouched (its value, what it logs), and backpropagation adds ``weight · ∇KD``, exactly as if the module had
added ``weight · KD`` to its loss. One backward pass, so DDP and gradient accumulation work as usual.

Which loss: a module's ``distillation_loss(student, teacher, temperature)`` if it defines one (our
``SynthesisModule`` asks its task: logits for classification, per-pixel logits for segmentation, the
coverage and box maps for detection), else the soft-target loss on dim 1. A module that sets
``distillation_loss = None`` opts out.
"""
from __future__ import annotations

import copy
import itertools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from gensynth_pl.timing import timed

DistillationLoss = Callable[[Tensor, Tensor, float], Tensor]


def soft_target_loss(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    """Hinton et al. (2015): T² · KL(softmax(teacher / T) ‖ softmax(student / T)) over dim 1, averaged over every
    other position (images; pixels too for dense outputs)."""
    log_student = F.log_softmax(student / temperature, dim=1)
    log_teacher = F.log_softmax(teacher / temperature, dim=1)
    kl = (log_teacher.exp() * (log_teacher - log_student)).sum(1)
    return kl.mean() * temperature**2


class _AddDistillationGradient(torch.autograd.Function):
    """Identity in the forward pass; the backward pass adds the gradient of ``loss(output, teacher)``."""

    @staticmethod
    def forward(ctx, output: Tensor, teacher: Tensor, loss: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
        ctx.save_for_backward(output, teacher)
        ctx.loss = loss
        return output.view_as(output)

    @staticmethod
    def backward(ctx, grad: Tensor):
        output, teacher = ctx.saved_tensors
        with timed("distill"), torch.enable_grad():
            student = output.detach().requires_grad_(True)
            (extra,) = torch.autograd.grad(ctx.loss(student, teacher), student)
        return grad + extra, None, None


def check_distillation_settings(weight: float, temperature: float, every: int) -> None:
    """The one check of the distillation settings: the synthesis runs it before φ trains, a Distiller when built."""
    if weight < 0 or temperature <= 0:
        raise ValueError(f"synthesis.distill_weight={weight} must be >= 0 (0: off) and distill_temperature={temperature} > 0")
    if not isinstance(every, int) or isinstance(every, bool) or every < 1:
        raise ValueError(f"synthesis.distill_every={every!r} is invalid: it must be an integer >= 1 (1: every batch)")


class Distiller:
    """The teacher and the loss; ``attach`` distils into one network until the returned handle is removed."""

    def __init__(self, teacher: nn.Module, loss: DistillationLoss, weight: float = 1.0, temperature: float = 4.0,
                 every: int = 1) -> None:
        check_distillation_settings(weight, temperature, every)
        self.teacher = copy.deepcopy(teacher).eval().requires_grad_(False)
        self.loss, self.weight, self.temperature, self.every = loss, weight, temperature, every

    def _weighted_loss(self, student: Tensor, teacher: Tensor) -> Tensor:
        """Weighted ``every`` times on the batches it runs on: on average the distillation weighs ``weight``."""
        return self.weight * self.every * self.loss(student, teacher, self.temperature)

    def attach(self, network: nn.Module) -> RemovableHandle:
        """The teacher runs on every ``every``-th training batch (counted from the attachment), the only ones distilled."""
        batches = itertools.count()

        def hook(module: nn.Module, inputs: tuple, output) -> Tensor | None:
            if not (module.training and torch.is_grad_enabled() and isinstance(output, Tensor) and output.requires_grad):
                return None
            if next(batches) % self.every:
                return None
            with timed("distill"), torch.no_grad():
                target = self.teacher.to(output.device)(*inputs)
            return _AddDistillationGradient.apply(output, target, self._weighted_loss)

        return network.register_forward_hook(hook)


class Teaching:
    """φ teaching one network at a time: ``start`` attaches the distiller to a network, ``stop`` removes it (before
    the network is judged, copied or kept). Without a distiller (distillation off) both do nothing."""

    def __init__(self, distiller: Distiller | None = None) -> None:
        self.distiller = distiller
        self._handle: RemovableHandle | None = None

    @classmethod
    def by(cls, teacher: nn.Module, loss: DistillationLoss | None, weight: float, temperature: float,
           every: int) -> "Teaching":
        """``teacher`` teaching with ``loss`` (None: the trained module opts out) at ``weight`` (0: off)."""
        return cls(Distiller(teacher, loss, weight, temperature, every) if weight and loss is not None else None)

    def start(self, network: nn.Module) -> None:
        if self.distiller is not None:
            self._handle = self.distiller.attach(network)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None


def module_distillation_loss(module: nn.Module) -> DistillationLoss | None:
    """The loss a module distils with: its own ``distillation_loss``, None if it opts out, else the soft-target loss."""
    if not hasattr(module, "distillation_loss"):
        return soft_target_loss
    return module.distillation_loss
