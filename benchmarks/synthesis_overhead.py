"""Synthesis overhead: the share of each cycle's wall time spent probing and updating the generator.

Cycle k's wall time runs from the end of cycle k-1 to the end of cycle k: fine-tuning the candidate,
probing it (forward hooks and the gradient hooks they register), learning from its outcome (measure,
fold, learn) and generating the next candidate (propose with the parent's MAC profile, update, sample,
build). Bookkeeping (MACs for the record, writing summary/generator/best) is reported apart. The times come
from the labelled events the library emits (gensynth_pl.timing).

    python -m benchmarks.synthesis_overhead data.train_subset=2000 data.val_size=1000 synthesis.prototype_epochs=3
    python -m benchmarks.synthesis_overhead --from-json outputs/benchmarks/synthesis_quality.json
"""
from __future__ import annotations

import json
from pathlib import Path

from benchmarks.common import parser, run_synthesis, settings
from benchmarks.tables import Column, format_table, key, publish
from benchmarks.timing import machine
from gensynth_pl.timing import BOOKKEEPING, DISTILLATION, PROBE_AND_UPDATE

OUTPUT = Path("outputs/benchmarks/synthesis_overhead.json")
COLUMNS = ("phase", "wall_s", *PROBE_AND_UPDATE, "probe_and_update_s", "share", *DISTILLATION, "share_with_distillation",
           *BOOKKEEPING)
SHARES = ("share", "share_with_distillation")


def format_overhead(rows: list[dict]) -> str:
    """Per-phase seconds per component, the probe+update share and that share with distillation, with a total row
    over the cycles (the polish is listed but not in the total: it probes and generates nothing)."""
    cycles = [r for r in rows if r["phase"] != "polish"]
    total = {c: sum(r[c] for r in cycles) for c in COLUMNS[1:] if c not in SHARES}
    total.update(phase="cycles", share=total["probe_and_update_s"] / total["wall_s"],
                 share_with_distillation=(total["probe_and_update_s"] + total["distill"]) / total["wall_s"])
    columns = [key("phase")] + [Column(c, lambda r, c=c: 100 * r[c], "{:.2f}%") if c in SHARES else key(c, "{:.3f}")
                                for c in COLUMNS[1:]]
    return format_table([*rows, total], columns)


def main(argv: list[str] | None = None) -> dict:
    p = parser(__doc__.splitlines()[0], "benchmark_cifar10_cpu", OUTPUT)
    p.add_argument("--from-json", type=Path, help="report the overhead recorded by a synthesis_quality run instead")
    args = p.parse_args(argv)
    if args.from_json:
        source = json.loads(args.from_json.read_text())
        result = {"source": str(args.from_json), "machine": source["machine_start"], "overhead": source["overhead"]}
    else:
        cfg = settings(args.experiment, args.overrides, args.output.with_suffix("") / "gensynth_run")
        run = run_synthesis(cfg)
        result = {"overrides": args.overrides, "machine": machine(), "overhead": run.overhead,
                  "synthesis": run.synthesis.record.to_dict()}
    result["table"] = format_overhead(result["overhead"])
    return publish(args.output, result)


if __name__ == "__main__":
    main()
