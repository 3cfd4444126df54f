"""The files a synthesis run writes, named in one place, and atomic writes for all of them.

Every file is written to a temporary name beside its target, flushed to disk and moved over it with
``os.replace``, so a reader, or a kill or power loss in the middle of a write, sees the old file or the new one,
never half of one. A saved network's folder is replaced the same way as a whole (``atomic_directory``), so its
weights never sit beside another save's spec.
"""
from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

# a saved network's folder (``<run>/best``, a family member's folder); weights.pt: the torch pickle of older versions
SPEC_FILE, WEIGHTS_FILE, ONNX_FILE, LATENCY_FILE = "architecture.json", "weights.safetensors", "network.onnx", "latency.json"
LEGACY_WEIGHTS_FILE = "weights.pt"


class RunDirectory:
    """A run's output folder: summary.json, the generator, the best network, the Pareto plot, checkpoints."""

    SUMMARY, GENERATOR, BEST, PARETO, CHECKPOINTS = "summary.json", "generator.safetensors", "best", "pareto.png", "checkpoints"
    LEGACY_GENERATOR = "generator.pt"  # the torch pickle older versions wrote; still read (tensors and plain data only)
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
    def saved_generator(self) -> Path:
        """The generator file to read: ``generator.safetensors``, or the ``generator.pt`` of an older version's run."""
        legacy = self.root / self.LEGACY_GENERATOR
        return legacy if legacy.is_file() and not self.generator.exists() else self.generator

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


def _fsync(path: Path) -> None:
    """Flush a file to disk: a rename must never publish data that is still only in the page cache."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _fsync_directory(path: Path) -> None:
    """Flush a folder's entries (the renames in it); POSIX only: other systems cannot open a folder."""
    if os.name == "posix":
        _fsync(path)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yields a temporary path to write; on success it is flushed to disk and replaces ``path`` in one step."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield temporary
        _fsync(temporary)
        os.replace(temporary, path)
        _fsync_directory(path.parent)
    finally:
        temporary.unlink(missing_ok=True)


def write_atomic(path: str | Path, write: Callable[[Path], object]) -> Path:
    """``write(temporary_path)``, then move the result over ``path``."""
    with atomic_path(path) as temporary:
        write(temporary)
    return Path(path)


def write_text_atomic(path: str | Path, text: str) -> Path:
    return write_atomic(path, lambda temporary: temporary.write_text(text))


@contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Yields an empty sibling folder to fill; on success it replaces the folder ``path`` as a whole.

    Its files are flushed to disk first; then the old folder is renamed aside, the new one renamed into place and
    the old one deleted. A kill between the two renames leaves no ``path`` but both complete folders under their
    hidden names (``.<name>.<pid>.old``, ``.<name>.<pid>.tmp``), never one save's files beside another's; the next
    write of ``path`` clears them. One writer per folder.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for leftover in path.parent.glob(f".{path.name}.*.tmp"):
        shutil.rmtree(leftover)
    for leftover in path.parent.glob(f".{path.name}.*.old"):
        shutil.rmtree(leftover)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    retired = path.with_name(f".{path.name}.{os.getpid()}.old")
    temporary.mkdir()
    try:
        yield temporary
        for file in temporary.iterdir():
            _fsync(file)
        _fsync_directory(temporary)
        if path.exists():
            os.rename(path, retired)
        try:
            os.rename(temporary, path)
        except BaseException:
            if retired.exists():
                os.rename(retired, path)
            raise
        _fsync_directory(path.parent)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
        shutil.rmtree(retired, ignore_errors=True)
