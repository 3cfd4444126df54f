"""Small module helpers shared by the engine."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import Tensor, nn


@contextmanager
def evaluating(module: nn.Module) -> Iterator[nn.Module]:
    """Eval mode for one trace or measurement (batch-1 BatchNorm needs it), then each submodule's own mode back
    (a network may keep some layers in eval mode while it trains, e.g. frozen normalization)."""
    modes = [(submodule, submodule.training) for submodule in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for submodule, training in modes:
            submodule.training = training


def output_tensors(outputs) -> list[Tensor]:
    """A model's output (a tensor, or dicts, lists and tuples of them, nested) as a flat list of tensors, in the
    order ONNX export lists them."""
    if isinstance(outputs, Tensor):
        return [outputs]
    if isinstance(outputs, dict):
        outputs = list(outputs.values())
    return [t for item in outputs for t in output_tensors(item)] if isinstance(outputs, (list, tuple)) else []


def cpu_state_dict(module: nn.Module) -> dict[str, Tensor]:
    """A detached CPU copy of a module's state, safe to keep or save while the module trains on."""
    return {key: value.detach().cpu().clone() for key, value in module.state_dict().items()}


def brief(error: BaseException, lines: int = 3) -> str:
    """``Type: message`` cut to its first ``lines`` lines (load_state_dict lists every mismatched tensor)."""
    text = str(error).strip().splitlines() or [""]
    more = f" ... ({len(text) - lines} more lines)" if len(text) > lines else ""
    return f"{type(error).__name__}: " + " ".join(line.strip() for line in text[:lines]) + more
