"""How a synthesis run reads to a person: the console table, the final summary, the Pareto plot."""
from __future__ import annotations

from pathlib import Path

from gensynth_pl.metrics import NetworkReport
from gensynth_pl.record import CycleEntry, PolishEntry, SynthesisRecord
from gensynth_pl.rundir import write_atomic

CYCLE_COLUMNS = ("cycle", "seed", "params", "macs", "metric", "netscore", "gate_passed", "reason", "step", "seconds")
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


def cycle_row(entry: CycleEntry, epoch: int, epochs: int, eta: float) -> str:
    """One table row, ending with the run's progress in epochs and the time its remaining epochs should take."""
    values = entry.to_dict()
    row = " | ".join([*(f"{_fmt(c, values.get(c, '')):>11}" for c in CYCLE_COLUMNS), f"{epoch}/{epochs} eta {_clock(eta)}"])
    unmet = [verdict.name for verdict in entry.report.unmet()]
    return row + (f" | unmet: {', '.join(unmet)}" if unmet else "")


def polish_line(entry: PolishEntry, gate: str, best_cycle: int, best: NetworkReport) -> str:
    """What the polish did and which network the run answers with."""
    line = (f"polish: cycle {entry.cycle}'s network ({_si(entry.after.macs)} MACs) fine-tuned {entry.epochs} more epochs: "
            f"{entry.before.metric:.4f} -> {entry.after.metric:.4f}, gate {gate} ")
    if entry.accepted:
        return line + ("passed: the run's answer" if entry.after.gate_passed else "FAILED, but no network meets every "
                       "condition and this one comes closest: kept as the answer")
    verdict = "passed" if entry.after.gate_passed else "FAILED"
    return line + f"{verdict}; the answer stays cycle {best_cycle}'s network ({_si(best.macs)} MACs, {best.metric:.4f})"


def epoch_line(epoch: int, epochs: int, phase: str, monitor: str, metric: float, elapsed: float, eta: float) -> str:
    """A self-contained progress line for logs (files, SLURM, CI), where no live progress bar is seen."""
    return f"[gensynth] epoch {epoch}/{epochs} | {phase} | {monitor} {metric:.4f} | elapsed {_clock(elapsed)} | eta {_clock(eta)}"


def final_summary(record: SynthesisRecord) -> str:
    """A few lines a person can read at a glance."""
    proto, best = record.prototype, record.best
    bound = record.gate.get("bound")
    op = ">=" if record.gate.get("higher_is_better", True) else "<="
    lines = [f"GenSynth {record.task}: gate {record.gate.get('metric')} {op} {'?' if bound is None else f'{bound:.4f}'}"]
    if proto:
        lines.append(
            f"  prototype: {_si(proto.macs)} MACs, {_si(proto.params)} params, metric {proto.metric:.4f}, "
            f"NetScore {proto.netscore:.2f}"
        )
    if best and not best.gate_passed and best.conditions:
        unmet = [f"{v.name} {v.value:.4g} (bound {v.bound:.4g})" for v in best.unmet()]
        lines.append(
            f"  NO network meets every condition; the closest (cycle {record.best_cycle}: {_si(best.macs)} MACs, metric "
            f"{best.metric:.4f}) is kept as the answer (best/); unmet: {', '.join(unmet)}"
        )
    elif best and not best.gate_passed:
        lines.append("  NO network passed the gate, not even the prototype: the prototype is kept as the answer (best/)")
    elif best and proto and record.best_cycle:
        polish = record.polish
        polished = f", polished {polish.epochs} epochs" if polish is not None and polish.accepted else ""
        lines.append(
            f"  best (cycle {record.best_cycle}{polished}): {_si(best.macs)} MACs ({proto.macs / best.macs:.2f}x fewer), "
            f"{_si(best.params)} params ({proto.params / best.params:.2f}x fewer), metric {best.metric:.4f}, "
            f"NetScore {best.netscore:.2f}"
        )
    elif proto:
        lines.append("  no generated candidate passed the gate: the prototype is kept as the answer (best/)")
    if record.polish is not None and not record.polish.accepted:
        lines.append(
            f"  the polished network of cycle {record.polish.cycle} ({_si(record.polish.after.macs)} MACs) reached "
            f"{record.polish.after.metric:.4f} and was not taken: the answer is the best network that passed the gate"
        )
    for name, report in (("prototype", proto), ("best", best)):
        if report is not None and report.test:
            lines.append(f"  test split, {name}: " + ", ".join(f"{k} {v:.4f}" for k, v in sorted(report.test.items())))
    if record.prototype_undertrained:
        lines.append("  warning: candidates beat the prototype by more than the allowed drop: it looks under-trained")
    if record.noisy_metric:
        lines.append("  warning: fine-tuning improved no candidate's metric: the gate judged epoch-to-epoch noise; "
                     "a larger validation split would make it measure the networks")
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
    if record.gate.get("bound") is not None:
        axes.axhline(record.gate["bound"], c="gray", ls="--", label=f"gate {record.gate['metric']}")
    axes.set_xscale("log")
    axes.set_xlabel("MACs (batch 1)")
    axes.set_ylabel(record.gate.get("metric", "metric"))
    axes.set_title(f"GenSynth {record.task}: metric vs cost")
    axes.legend(fontsize=8, loc="lower right")
    axes.grid(alpha=0.3)
    figure.tight_layout()
    return write_atomic(path, lambda temporary: figure.savefig(temporary, dpi=120, format="png"))


def family_plot(result: dict, path: str | Path) -> Path:
    """Metric against MACs of a family's members (passing or not), the prototype, and the gate."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4.5))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    rows = sorted(result["rows"], key=lambda r: r["macs"])
    for passed, style in ((True, dict(c="tab:green", label="member, passes")), (False, dict(c="tab:red", marker="x", label="member, fails"))):
        chosen = [r for r in rows if r["gate_passed"] == passed]
        axes.scatter([r["macs"] for r in chosen], [r["metric"] for r in chosen], **style)
    for row in rows:
        axes.annotate(row["name"], (row["macs"], row["metric"]), fontsize=7, xytext=(4, 4), textcoords="offset points")
    if result.get("prototype"):
        axes.scatter([result["prototype"]["macs"]], [result["prototype"]["metric"]], c="black", marker="*", s=180, label="prototype")
    if result["gate"].get("bound") is not None:
        axes.axhline(result["gate"]["bound"], c="gray", ls="--", label=f"gate {result['gate']['metric']}")
    axes.set_xscale("log")
    axes.set_xlabel("MACs (batch 1)")
    axes.set_ylabel(result["gate"].get("metric", "metric"))
    axes.set_title(f"Family from one generator (diversity {result['diversity']:.3f})")
    axes.legend(fontsize=8, loc="lower right")
    axes.grid(alpha=0.3)
    figure.tight_layout()
    return write_atomic(path, lambda temporary: figure.savefig(temporary, dpi=120, format="png"))
