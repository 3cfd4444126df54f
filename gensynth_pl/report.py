"""How a synthesis run reads to a person: the console table, the final summary, the Pareto plot."""
from __future__ import annotations

from pathlib import Path

from gensynth_pl.record import CycleEntry, SynthesisRecord
from gensynth_pl.rundir import write_atomic

CYCLE_COLUMNS = ("cycle", "seed", "params", "macs", "metric", "netscore", "gate_passed", "accepted", "step", "seconds")
PROGRESS_COLUMN = "progress"


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


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else f"{seconds // 60}:{seconds % 60:02d}"


def cycle_row(entry: CycleEntry, cycles: int, elapsed: float) -> str:
    """One table row, ending with progress across cycles and the time the remaining cycles should take."""
    done = entry.cycle
    eta = elapsed / max(done, 1) * (cycles - done)
    values = entry.to_dict()
    return " | ".join([*(f"{_fmt(c, values.get(c, '')):>11}" for c in CYCLE_COLUMNS), f"{done}/{cycles} eta {_clock(eta)}"])


def epoch_line(epoch: int, epochs: int, phase: str, monitor: str, metric: float, elapsed: float, eta: float) -> str:
    """A self-contained progress line for logs (files, SLURM, CI), where no live progress bar is seen."""
    return f"[gensynth] epoch {epoch}/{epochs} | {phase} | {monitor} {metric:.4f} | elapsed {_clock(elapsed)} | eta {_clock(eta)}"


def final_summary(record: SynthesisRecord) -> str:
    """A few lines a person can read at a glance."""
    proto, best = record.prototype, record.best
    bound = record.gate.get("threshold")
    op = ">=" if record.gate.get("higher_is_better", True) else "<="
    lines = [f"GenSynth {record.task}: gate {record.gate.get('metric')} {op} {'?' if bound is None else f'{bound:.4f}'}"]
    if proto:
        lines.append(
            f"  prototype: {_si(proto.macs)} MACs, {_si(proto.params)} params, metric {proto.metric:.4f}, "
            f"NetScore {proto.netscore:.2f}"
        )
    if best and not best.gate_passed:
        lines.append("  NO network passed the gate, not even the prototype: the prototype is kept as the answer (best/)")
    elif best and proto and record.best_cycle:
        lines.append(
            f"  best (cycle {record.best_cycle}): {_si(best.macs)} MACs ({proto.macs / best.macs:.2f}x fewer), "
            f"{_si(best.params)} params ({proto.params / best.params:.2f}x fewer), metric {best.metric:.4f}, "
            f"NetScore {best.netscore:.2f}"
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
    passed = [c.report for c in record.cycles if c.report.gate_passed]
    failed = [c.report for c in record.cycles if not c.report.gate_passed]
    axes.scatter([c.macs for c in passed], [c.metric for c in passed], c="tab:green", label="candidate, passed")
    axes.scatter([c.macs for c in failed], [c.metric for c in failed], c="tab:red", marker="x", label="candidate, failed")
    proto, best = record.prototype, record.best
    axes.scatter([proto.macs], [proto.metric], c="black", marker="*", s=180, label="prototype")
    if best is not None and record.best_cycle:
        axes.scatter([best.macs], [best.metric], facecolors="none", edgecolors="tab:blue", s=260, linewidths=2, label="best")
    frontier, top = [], float("-inf")
    for point in sorted([*passed, proto] if proto.gate_passed else passed, key=lambda c: c.macs):
        if point.metric > top:
            frontier.append(point)
            top = point.metric
    if len(frontier) > 1:
        axes.plot([p.macs for p in frontier], [p.metric for p in frontier], c="tab:green", alpha=0.5, label="passing frontier")
    if record.gate.get("threshold") is not None:
        axes.axhline(record.gate["threshold"], c="gray", ls="--", label=f"gate {record.gate['metric']}")
    axes.set_xscale("log")
    axes.set_xlabel("MACs (batch 1)")
    axes.set_ylabel(record.gate.get("metric", "metric"))
    axes.set_title(f"GenSynth {record.task}: metric vs cost")
    axes.legend(fontsize=8, loc="lower right")
    axes.grid(alpha=0.3)
    figure.tight_layout()
    return write_atomic(path, lambda temporary: figure.savefig(temporary, dpi=120, format="png"))
