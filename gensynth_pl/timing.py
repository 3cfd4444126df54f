"""Labelled timing of the synthesis's own work (probing, learning, generating, bookkeeping).

Every labelled block is a ``torch.profiler.record_function`` range named ``gensynth.<label>``, so it shows
up in any PyTorch profiler trace, and, while a listener is registered (``listening``), an event
``(label, finished_at, seconds)``: how the benchmarks measure the synthesis's overhead without patching.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

Listener = Callable[[str, float, float], None]  # (label, perf_counter at the end, seconds)

# the labels the library emits, by what they are for
PROBE_AND_UPDATE = ("probe", "measure", "fold", "learn", "propose", "update", "sample", "build")
DISTILLATION = ("distill",)  # the teacher's forward pass and the distillation gradient
BOOKKEEPING = ("record", "save")

_listeners: list[Listener] = []


@contextmanager
def timed(label: str) -> Iterator[None]:
    with torch.profiler.record_function(f"gensynth.{label}"):
        if not _listeners:
            yield
            return
        start = time.perf_counter()
        try:
            yield
        finally:
            emit(label, time.perf_counter() - start)


def emit(label: str, seconds: float) -> None:
    """Report ``seconds`` of work under ``label`` (for work timed piecewise, e.g. in gradient hooks)."""
    now = time.perf_counter()
    for listener in list(_listeners):
        listener(label, now, seconds)


def is_listened() -> bool:
    return bool(_listeners)


@contextmanager
def listening(listener: Listener) -> Iterator[Listener]:
    _listeners.append(listener)
    try:
        yield listener
    finally:
        _listeners.remove(listener)
