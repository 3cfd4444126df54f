"""Synthesis overhead: the share of each cycle's wall time spent probing and updating the generator.

Cycle k's wall time runs from the end of cycle k-1 to the end of cycle k: fine-tuning the candidate,
probing it (forward hooks and the gradient hooks they register), learning from its outcome (measure,
fold, learn) and generating the next candidate (propose with the parent's MAC profile, update, sample,
build). Bookkeeping (MACs for the record, writing summary/generator/best) is reported apart.

    python -m benchmarks.synthesis_overhead --train-subset 2000 --val-size 1000 --prototype-epochs 3 --cycles 3
    python -m benchmarks.synthesis_overhead --from-json outputs/benchmarks/synthesis_quality.json
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from benchmarks.common import SynthesisTimer, machine, publish, run_synthesis
from benchmarks.synthesis_quality import datamodule, parser, schedule
from gensynth_pl.models import cifar_resnet
from gensynth_pl.tasks import ClassificationTask

COLUMNS = ("cycle", "wall_s", *SynthesisTimer.PROBE_AND_UPDATE, "probe_and_update_s", "share", *SynthesisTimer.BOOKKEEPING)


def format_overhead(rows: list[dict]) -> str:
    """Per-cycle seconds per component and the probe+update share, with a total row."""
    total = {c: sum(r[c] for r in rows) for c in COLUMNS[1:] if c != "share"}
    total.update(cycle="all", share=total["probe_and_update_s"] / total["wall_s"])
    lines = [" | ".join(f"{c:>10}" for c in COLUMNS)]
    for row in [*rows, total]:
        cells = [f"{row['cycle']:>10}"]
        cells += [f"{100 * row[c]:>9.2f}%" if c == "share" else f"{row[c]:>10.3f}" for c in COLUMNS[1:]]
        lines.append(" | ".join(cells))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = parser({"output": Path("outputs/benchmarks/synthesis_overhead.json")})
    p.add_argument("--from-json", type=Path, help="report the overhead recorded by a synthesis_quality run instead")
    args = p.parse_args(argv)
    if args.from_json:
        source = json.loads(args.from_json.read_text())
        result = {"source": str(args.from_json), "machine": source["machine_start"], "overhead": source["overhead"]}
    else:
        torch.manual_seed(args.seed)
        prototype = cifar_resnet(args.depth, 10, args.width)
        input_shape = (3, args.image_size, args.image_size)
        run = run_synthesis(prototype, datamodule(args), ClassificationTask(10), schedule(args), input_shape,
                            args.output.with_suffix("") / "gensynth_run")
        result = {"config": vars(args), "machine": machine(), "overhead": run.overhead,
                  "synthesis": run.synthesis.record.to_dict()}
    result["table"] = format_overhead(result["overhead"])
    return publish(args.output, result)


if __name__ == "__main__":
    main()
