"""The record of a synthesis run: typed cycle entries and network reports, and the summary.json contract.

Everything that reads a run (the console report, the W&B tracker, the CLIs, the benchmarks) reads these
types; ``to_dict``/``from_dict`` are the only places that know the JSON layout.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from gensynth_pl.metrics import NetworkReport
from gensynth_pl.referee import Reason
from gensynth_pl.rundir import write_text_atomic

def _report(data: dict | None) -> NetworkReport | None:
    return None if data is None else NetworkReport.from_dict(data)


@dataclass
class CycleEntry:
    """One synthesis cycle: the candidate drawn from ``seed``, how it measured, and what the referee decided."""

    cycle: int
    seed: int
    report: NetworkReport
    reason: Reason
    step: float  # the inquisitor's step after this cycle's outcome (what the next candidate is drawn with)
    seconds: float
    widths: dict[str, int]
    removed_blocks: list[str]
    redraws: int = 0  # samples redrawn because they built the parent's network again
    epochs: int = 0  # epochs the candidate was trained
    first_metric: float | None = None  # the metric after its first epoch
    allowance: float = 0.0  # how far below the bound it could be and still be accepted (expected recovery)
    cut: float = 0.0  # the fraction of the parent's cost it removed

    @property
    def accepted(self) -> bool:
        return self.reason.accepted

    @property
    def diverged(self) -> bool:
        return self.reason is Reason.DIVERGED

    @property
    def early_rejected(self) -> bool:
        return self.reason is Reason.REJECTED_EARLY

    def to_dict(self) -> dict:
        entry = asdict(self)
        del entry["report"]
        report = {k: v for k, v in self.report.to_dict().items() if k != "test"}
        return {"cycle": self.cycle, "seed": self.seed, **report, **entry, "reason": self.reason.value,
                "accepted": self.accepted}

    @classmethod
    def from_dict(cls, data: dict) -> "CycleEntry":
        own = {f.name for f in fields(cls)} - {"report", "reason"}
        return cls(report=_report(data), reason=Reason(data["reason"]), **{k: v for k, v in data.items() if k in own})


@dataclass
class PolishEntry:
    """The final polish: the leader (of ``cycle``) fine-tuned ``epochs`` more, then judged as the answer."""

    cycle: int
    epochs: int
    before: NetworkReport
    after: NetworkReport
    reason: Reason  # passed or closest: the run's answer; rolled back: the answer stays the earlier network
    seconds: float

    @property
    def accepted(self) -> bool:
        return self.reason.accepted

    def to_dict(self) -> dict:
        return {**asdict(self), "before": self.before.to_dict(), "after": self.after.to_dict(), "reason": self.reason.value,
                "accepted": self.accepted}

    @classmethod
    def from_dict(cls, data: dict) -> "PolishEntry":
        own = {f.name for f in fields(cls)}
        return cls(**{**{k: v for k, v in data.items() if k in own}, "before": _report(data["before"]),
                      "after": _report(data["after"]), "reason": Reason(data["reason"])})


@dataclass
class SynthesisRecord:
    task: str
    gate: dict
    prototype: NetworkReport | None = None
    best: NetworkReport | None = None
    best_cycle: int | None = None
    cycles: list[CycleEntry] = field(default_factory=list)
    polish: PolishEntry | None = None
    prototype_undertrained: bool = False  # accepted candidates beat φ by more than the allowed drop
    noisy_metric: bool = False  # fine-tuning improved no candidate's metric: the gate judged noise

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
            "polish": None if self.polish is None else self.polish.to_dict(),
            "prototype_undertrained": self.prototype_undertrained,
            "noisy_metric": self.noisy_metric,
        }

    @classmethod
    def from_dict(cls, data: dict) -> "SynthesisRecord":
        return cls(
            task=data["task"],
            gate=data["gate"],
            prototype=_report(data["prototype"]),
            best=_report(data["best"]),
            best_cycle=data["best_cycle"],
            cycles=[CycleEntry.from_dict(c) for c in data["cycles"]],
            polish=None if data.get("polish") is None else PolishEntry.from_dict(data["polish"]),
            prototype_undertrained=data.get("prototype_undertrained", False),
            noisy_metric=data.get("noisy_metric", False),
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
