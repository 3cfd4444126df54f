"""The files a synthesis run writes, named in one place, and atomic writes for all of them.

Every file is written to a temporary name beside its target and moved over it with ``os.replace``, so a
reader, or a kill in the middle of a write, sees the old file or the new one, never half of one.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

# a saved network's folder (``<run>/best``, a sampled network's folder)
SPEC_FILE, WEIGHTS_FILE, ONNX_FILE, LATENCY_FILE = "architecture.json", "weights.pt", "network.onnx", "latency.json"


class RunDirectory:
    """A run's output folder: summary.json, the generator, the best network, the Pareto plot, checkpoints."""

    SUMMARY, GENERATOR, BEST, PARETO, CHECKPOINTS = "summary.json", "generator.pt", "best", "pareto.png", "checkpoints"
    FAMILY = "family"

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    @property
    def summary(self) -> Path:
        return self.root / self.SUMMARY

    @property
    def generator(self) -> Path:
        return self.root / self.GENERATOR

    @property
    def best(self) -> Path:
        return self.root / self.BEST

    @property
    def pareto(self) -> Path:
        return self.root / self.PARETO

    @property
    def latency_model(self) -> Path:
        return self.root / "latency_model.json"

    @property
    def mac_map(self) -> Path:
        return self.root / "mac_map.json"

    @property
    def family(self) -> Path:
        return self.root / self.FAMILY

    @property
    def last_checkpoint(self) -> Path:
        return self.root / self.CHECKPOINTS / "last.ckpt"

    def check_writable(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / ".gensynth-write-test"
            probe.write_text("ok")
            probe.unlink()
        except OSError as error:
            raise PermissionError(
                f"output directory '{self.root}' is not writable ({error}); choose another output_dir / hydra.run.dir"
            ) from error


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yields a temporary path to write; on success it replaces ``path`` in one step."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_atomic(path: str | Path, write: Callable[[Path], object]) -> Path:
    """``write(temporary_path)``, then move the result over ``path``."""
    with atomic_path(path) as temporary:
        write(temporary)
    return Path(path)


def write_text_atomic(path: str | Path, text: str) -> Path:
    return write_atomic(path, lambda temporary: temporary.write_text(text))
