"""The record of a synthesis run (the summary.json contract) and its console rendering."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

CYCLE_COLUMNS = ("cycle", "seed", "params", "macs", "metric", "netscore", "gate_passed", "accepted", "step", "seconds")


@dataclass
class SynthesisRecord:
    task: str
    gate: dict
    prototype: dict | None = None
    best: dict | None = None
    best_cycle: int | None = None
    cycles: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "task": self.task,
            "gate": self.gate,
            "prototype": self.prototype,
            "best": self.best,
            "best_cycle": self.best_cycle,
            "any_candidate_passed": any(c["gate_passed"] for c in self.cycles),
            "cycles": self.cycles,
        }

    def write(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2))


def _fmt(key: str, value) -> str:
    if key in ("params", "macs"):
        return _si(value)
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4f}" if key in ("metric", "step") else f"{value:.2f}"
    return str(value)


def _si(value: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.2f}{unit}"
    return str(value)


def cycle_header() -> str:
    return " | ".join(f"{c:>11}" for c in CYCLE_COLUMNS)


def cycle_row(entry: dict) -> str:
    return " | ".join(f"{_fmt(c, entry.get(c, '')):>11}" for c in CYCLE_COLUMNS)


def final_summary(record: SynthesisRecord) -> str:
    """A few lines a person can read at a glance."""
    proto, best = record.prototype, record.best
    bound = record.gate.get("threshold")
    op = ">=" if record.gate.get("higher_is_better", True) else "<="
    lines = [f"GenSynth {record.task}: gate {record.gate.get('metric')} {op} {'?' if bound is None else f'{bound:.4f}'}"]
    if proto:
        lines.append(
            f"  prototype: {_si(proto['macs'])} MACs, {_si(proto['params'])} params, metric {proto['metric']:.4f}, "
            f"NetScore {proto['netscore']:.2f}"
        )
    if best and not best["gate_passed"]:
        lines.append("  NO network passed the gate, not even the prototype: the prototype is kept as the answer (best/)")
    elif best and proto and record.best_cycle:
        lines.append(
            f"  best (cycle {record.best_cycle}): {_si(best['macs'])} MACs ({proto['macs'] / best['macs']:.2f}x fewer), "
            f"{_si(best['params'])} params ({proto['params'] / best['params']:.2f}x fewer), metric {best['metric']:.4f}, "
            f"NetScore {best['netscore']:.2f}"
        )
    elif proto:
        lines.append("  no generated candidate passed the gate: the prototype is kept as the answer (best/)")
    return "\n".join(lines)
