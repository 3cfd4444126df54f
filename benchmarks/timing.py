"""Wall and CPU time, the machine a number was measured on, and the synthesis's overhead per cycle.

The overhead comes from the labelled events the library emits (``gensynth_pl.timing``): probing (forward
hooks and the gradient hooks they register), measure, fold, learn, propose (with the parent's MAC profile),
update, sample, build, and bookkeeping (record MACs, writing files).
"""
from __future__ import annotations

import os
import platform
import resource
import time

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from gensynth_pl.schedule import find_schedule
from gensynth_pl.timing import BOOKKEEPING, DISTILLATION, PROBE_AND_UPDATE


class Stopwatch:
    """Wall time and CPU time (this process and its reaped data-loader workers) of a block."""

    def __enter__(self) -> "Stopwatch":
        self._wall, self._cpu = time.perf_counter(), _cpu_seconds()
        return self

    def __exit__(self, *exc) -> None:
        self.wall = time.perf_counter() - self._wall
        self.cpu = _cpu_seconds() - self._cpu


def _cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def machine() -> dict:
    """What the numbers were measured on, including how busy the machine was (load average)."""
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "torch": torch.__version__,
    }


class EpochPrinter(Callback):
    """A line per epoch for a benchmark's own trainings (baselines, a shared φ), which have no progress bar."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.started = 0.0

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.started = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(("val/", "train/"))}
        shown = ", ".join(f"{k} {v:.4f}" for k, v in sorted(metrics.items()) if k != "val/loss")
        elapsed = time.perf_counter() - self.started
        print(f"[benchmark] {self.label} epoch {trainer.current_epoch + 1}/{trainer.max_epochs}: {shown} ({elapsed:.0f} s)",
              flush=True)


class OverheadTimer(Callback):
    """Collects the library's timing events and the end of every phase (after the synthesis callback's work:
    add it after GenerativeSynthesis), and attributes the events to the phases after φ's."""

    def __init__(self) -> None:
        self.events: list[tuple[str, float, float]] = []  # (label, finished at, seconds)
        self.started = 0.0
        self.boundaries: list[float] = []  # the end of the prototype phase, then of every later phase
        self.phases: list = []  # the phase that ended at each boundary
        self._phase = None

    def __call__(self, label: str, finished: float, seconds: float) -> None:
        self.events.append((label, finished, seconds))

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.started = time.perf_counter()
        self._phase = find_schedule(trainer).phase

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        phase = find_schedule(trainer).phase
        if phase != self._phase:
            self.boundaries.append(time.perf_counter())
            self.phases.append(self._phase)
            self._phase = phase

    def per_phase(self) -> list[dict]:
        """Seconds per label for each phase after φ's (the cycles, then the polish); a phase spans the time from
        the end of the one before to its own end: its training, probing and learning, and the generation of the
        next candidate. ``share``: probing and updating, ``share_with_distillation``: plus distillation."""
        rows = []
        for phase, start, end in zip(self.phases[1:], self.boundaries, self.boundaries[1:]):
            row = {"phase": phase.describe(), "cycle": phase.index, "wall_s": end - start}
            for label in (*PROBE_AND_UPDATE, *DISTILLATION, *BOOKKEEPING):
                row[label] = sum(s for c, t, s in self.events if c == label and start < t <= end)
            row["probe_and_update_s"] = sum(row[c] for c in PROBE_AND_UPDATE)
            row["share"] = row["probe_and_update_s"] / row["wall_s"]
            row["share_with_distillation"] = (row["probe_and_update_s"] + row["distill"]) / row["wall_s"]
            rows.append(row)
        return rows
