"""The record of a synthesis run (the summary.json contract) and its console rendering."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

CYCLE_COLUMNS = ("cycle", "seed", "params", "macs", "metric", "netscore", "gate_passed", "accepted", "step", "seconds")
PROGRESS_COLUMN = "progress"


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
    return " | ".join(f"{c:>11}" for c in (*CYCLE_COLUMNS, PROGRESS_COLUMN))


def cycle_row(entry: dict, cycles: int, elapsed: float) -> str:
    """One table row, ending with progress across cycles and the time the remaining cycles should take."""
    done = entry["cycle"]
    eta = elapsed / max(done, 1) * (cycles - done)
    progress = f"{done}/{cycles} eta {int(eta) // 60}:{int(eta) % 60:02d}"
    return " | ".join([*(f"{_fmt(c, entry.get(c, '')):>11}" for c in CYCLE_COLUMNS), progress])


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


def pareto_plot(record: SynthesisRecord, path: str | Path) -> Path:
    """Metric vs MACs of the prototype and every candidate, with the gate and the passing frontier."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4.5))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    passed = [c for c in record.cycles if c["gate_passed"]]
    failed = [c for c in record.cycles if not c["gate_passed"]]
    axes.scatter([c["macs"] for c in passed], [c["metric"] for c in passed], c="tab:green", label="candidate, passed")
    axes.scatter([c["macs"] for c in failed], [c["metric"] for c in failed], c="tab:red", marker="x", label="candidate, failed")
    proto, best = record.prototype, record.best
    axes.scatter([proto["macs"]], [proto["metric"]], c="black", marker="*", s=180, label="prototype")
    if best is not None and record.best_cycle:
        axes.scatter([best["macs"]], [best["metric"]], facecolors="none", edgecolors="tab:blue", s=260, linewidths=2, label="best")
    frontier, top = [], float("-inf")
    for point in sorted([*passed, proto] if proto["gate_passed"] else passed, key=lambda c: c["macs"]):
        if point["metric"] > top:
            frontier.append(point)
            top = point["metric"]
    if len(frontier) > 1:
        axes.plot([p["macs"] for p in frontier], [p["metric"] for p in frontier], c="tab:green", alpha=0.5, label="passing frontier")
    if record.gate.get("threshold") is not None:
        axes.axhline(record.gate["threshold"], c="gray", ls="--", label=f"gate {record.gate['metric']}")
    axes.set_xscale("log")
    axes.set_xlabel("MACs (batch 1)")
    axes.set_ylabel(record.gate.get("metric", "metric"))
    axes.set_title(f"GenSynth {record.task}: metric vs cost")
    axes.legend(fontsize=8, loc="lower right")
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    return Path(path)
