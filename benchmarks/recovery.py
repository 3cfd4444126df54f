"""Which estimate of recovery predicts what a candidate reaches, when cycles are one epoch long.

The referee accepts a candidate that comes within ``recovery_allowance`` times the expected recovery of its bound,
and rejects one early when even that recovery leaves it short. With two or more epochs per cycle the recovery is
measured on every candidate (its metric after its last epoch minus after its first); with one epoch per cycle
nothing is measured and the allowance stays 0. This script replays finished runs whose cycles trained at least two
epochs and scores each estimate that one-epoch cycles could use, on every candidate after the first (each estimate
sees only what was known when that candidate was judged):

- ``none``: no recovery (one-epoch cycles without ``first_cycle_epochs``).
- ``first_cycle``: the first candidate's rise per epoch (``synthesis.first_cycle_epochs=2`` measures it).
- ``first_cycle_by_drop``: the first candidate's rise as a share of its first-epoch drop below its parent, applied
  to each candidate's own drop (a model of recovery against the cut).
- ``prototype_curve``: φ's own rise over its last epoch (when the run trained φ and logged it).
- ``running_median``: the median rise per epoch of the earlier candidates (what the referee does with 2+ epochs).

    python -m benchmarks.recovery outputs/2026-12-04/07-10-00 /tmp/runs/camvid_ablation/epc2
"""
from __future__ import annotations

import argparse
import csv
import json
import statistics
from pathlib import Path

from benchmarks.tables import format_table, key, publish
from gensynth_pl.referee import median_recovery

OUTPUT = Path("outputs/benchmarks/recovery.json")
ESTIMATES = ("none", "first_cycle", "first_cycle_by_drop", "prototype_curve", "running_median")


def candidates(summary: dict) -> list[dict]:
    """Each trained candidate with 2+ epochs: its first-epoch and final metric, and its parent's metric, signed so
    that higher is better (a loss-like metric is negated)."""
    sign = 1 if summary["gate"]["higher_is_better"] else -1
    parent, rows = sign * summary["prototype"]["metric"], []
    for cycle in summary["cycles"]:
        if cycle["epochs"] >= 2 and cycle["first_metric"] is not None and cycle["reason"] != "diverged":
            rows.append({"cycle": cycle["cycle"], "first": sign * cycle["first_metric"], "final": sign * cycle["metric"],
                         "epochs": cycle["epochs"], "parent": parent, "cut": cycle["cut"]})
        if cycle["accepted"]:
            parent = sign * cycle["metric"]
    return rows


def prototype_rise(run_dir: Path, summary: dict, monitor: str) -> float | None:
    """φ's validation metric rise over its last epoch, from the run's CSV log (None when φ was not trained here)."""
    logs = sorted(run_dir.glob("csv/version_*/metrics.csv"))
    if not logs:
        return None
    with logs[-1].open() as f:
        values = [float(row[monitor]) for row in csv.DictReader(f) if row.get(monitor)]
    after_prototype = sum(c["epochs"] for c in summary["cycles"]) + ((summary.get("polish") or {}).get("epochs") or 0)
    prototype = values[:len(values) - after_prototype]
    sign = 1 if summary["gate"]["higher_is_better"] else -1
    return sign * (prototype[-1] - prototype[-2]) if len(prototype) >= 2 else None


def estimates(rows: list[dict], phi_rise: float | None) -> list[dict]:
    """For each candidate after the first, each estimate's predicted rise (None: not available)."""
    recoveries = [[r["final"] - r["first"], r["epochs"] - 1] for r in rows]  # as the referee records them
    first = rows[0]
    first_drop = first["parent"] - first["first"]
    scored = []
    for index, row in enumerate(rows[1:], start=1):
        span = row["epochs"] - 1
        first_cycle = median_recovery(recoveries[:1], span)
        drop = max(row["parent"] - row["first"], 0.0)
        predicted = {
            "none": 0.0,
            "first_cycle": first_cycle,
            "first_cycle_by_drop": first_cycle * drop / first_drop if first_drop > 1e-3 else first_cycle,
            "prototype_curve": None if phi_rise is None else phi_rise * span,
            "running_median": median_recovery(recoveries[:index], span),  # the referee's rule
        }
        scored.append({**row, "rise": row["final"] - row["first"], "predicted": predicted})
    return scored


def score(run_dirs: list[Path], allowance: float) -> dict:
    """Mean absolute error of each estimate's rise, and how often ``first + allowance x estimate >= bound`` agrees
    with ``final >= bound`` (the referee's accept decision with that estimate, against the one it made)."""
    per_estimate = {name: {"errors": [], "agree": 0, "n": 0} for name in ESTIMATES}
    runs = []
    for run_dir in run_dirs:
        summary = json.loads((run_dir / "summary.json").read_text())
        gate = summary["gate"]
        bound = gate["bound"] if gate["higher_is_better"] else -gate["bound"]
        rows = candidates(summary)
        if len(rows) < 2:
            raise SystemExit(f"{run_dir}: fewer than two candidates trained 2+ epochs; nothing to score")
        scored = estimates(rows, prototype_rise(run_dir, summary, gate["metric"]))
        runs.append({"run_dir": str(run_dir), "bound": bound, "candidates": scored})
        for row in scored:
            actual = row["final"] >= bound
            for name, rise in row["predicted"].items():
                if rise is None:
                    continue
                stats = per_estimate[name]
                stats["errors"].append(abs(rise - row["rise"]))
                stats["agree"] += (row["first"] + allowance * max(rise, 0.0) >= bound) == actual
                stats["n"] += 1
    table_rows = [{"estimate": name, "candidates": s["n"], "mae": statistics.fmean(s["errors"]) if s["errors"] else None,
                   "agreement": s["agree"] / s["n"] if s["n"] else None} for name, s in per_estimate.items()]
    return {"allowance": allowance, "runs": runs, "rows": table_rows,
            "table": format_table(table_rows, [key("estimate"), key("candidates"), key("mae", "{:.4f}", "MAE of rise"),
                                               key("agreement", "{:.2f}", "accept agrees")])}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dirs", nargs="+", type=Path, help="finished runs whose cycles trained 2+ epochs")
    p.add_argument("--allowance", type=float, default=0.75, help="synthesis.recovery_allowance the decisions use")
    p.add_argument("--output", type=Path, default=OUTPUT)
    args = p.parse_args(argv)
    return publish(args.output, score(args.run_dirs, args.allowance))


if __name__ == "__main__":
    main()
