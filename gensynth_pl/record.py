"""The record of a synthesis run: typed cycle entries and network reports, and the summary.json contract.

Everything that reads a run (the console report, the W&B tracker, the CLIs, the benchmarks) reads these
types; ``to_dict``/``from_dict`` are the only places that know the JSON layout.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from gensynth_pl.metrics import NetworkReport
from gensynth_pl.rundir import write_text_atomic

_REPORT_KEYS = tuple(f.name for f in fields(NetworkReport))


@dataclass
class CycleEntry:
    """One synthesis cycle: the candidate drawn from ``seed``, how it measured, and what was decided."""

    cycle: int
    seed: int
    report: NetworkReport
    accepted: bool
    step: float  # the inquisitor's step after this cycle's outcome (what the next candidate is drawn with)
    seconds: float
    widths: dict[str, int]
    removed_blocks: list[str]
    diverged: bool = False
    redraws: int = 0  # samples redrawn because they built the parent's network again

    def to_dict(self) -> dict:
        entry = asdict(self)
        del entry["report"]
        return {"cycle": self.cycle, "seed": self.seed, **self.report.to_dict(), **entry}

    @classmethod
    def from_dict(cls, data: dict) -> "CycleEntry":
        report = NetworkReport(**{k: data[k] for k in _REPORT_KEYS})
        own = {f.name for f in fields(cls)} - {"report"}
        return cls(report=report, **{k: v for k, v in data.items() if k in own})


@dataclass
class SynthesisRecord:
    task: str
    gate: dict
    prototype: NetworkReport | None = None
    best: NetworkReport | None = None
    best_cycle: int | None = None
    cycles: list[CycleEntry] = field(default_factory=list)

    @property
    def any_candidate_passed(self) -> bool:
        return any(c.report.gate_passed for c in self.cycles)

    def to_dict(self) -> dict:
        return {
            "task": self.task,
            "gate": self.gate,
            "prototype": None if self.prototype is None else self.prototype.to_dict(),
            "best": None if self.best is None else self.best.to_dict(),
            "best_cycle": self.best_cycle,
            "any_candidate_passed": self.any_candidate_passed,
            "cycles": [c.to_dict() for c in self.cycles],
        }

    @classmethod
    def from_dict(cls, data: dict) -> "SynthesisRecord":
        def report(value: dict | None) -> NetworkReport | None:
            return None if value is None else NetworkReport(**{k: value[k] for k in _REPORT_KEYS})

        return cls(
            task=data["task"],
            gate=data["gate"],
            prototype=report(data["prototype"]),
            best=report(data["best"]),
            best_cycle=data["best_cycle"],
            cycles=[CycleEntry.from_dict(c) for c in data["cycles"]],
        )

    def write(self, path: str | Path) -> None:
        """Atomically: a reader (or a kill) never sees half a file."""
        write_text_atomic(path, json.dumps(self.to_dict(), indent=2))

    @classmethod
    def load(cls, path: str | Path) -> "SynthesisRecord":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist: point to the summary.json of a synthesis run")
        return cls.from_dict(json.loads(path.read_text()))
