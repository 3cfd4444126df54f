"""Segmentation (CamVid) and detection (Penn-Fudan) at CPU scale: the prototype against the best generated network.

Each run is exactly ``python train.py experiment=<experiment> data.root=<root>`` (composed in-process, so
the numbers are what a user of ``train.py`` gets), with its run directory under the output's folder.

    python -m benchmarks.task_runs                                   # both, data from ../shared/datasets
    python -m benchmarks.task_runs --tasks detection --pennfudan-root /data/pennfudan
    python -m benchmarks.task_runs --synthetic --override synthesis.cycles=2    # the tasks' generated data
"""
from __future__ import annotations

import argparse
from pathlib import Path

from hydra import compose, initialize_config_dir

from benchmarks.tables import format_table, key, publish, write_json
from benchmarks.timing import Stopwatch, machine
from gensynth_pl.cli import CONF_DIR
from gensynth_pl.pipeline import synthesize

EXPERIMENTS = {"segmentation": "camvid_cpu", "detection": "pennfudan_cpu"}
RUN_COLUMNS = [key("task"), key("network"), key("monitor", header="metric"), key("metric", "{:.4f}", "value"), key("params", "{:,}"),
               key("macs", "{:,}", "MACs"), key("mac_reduction", "{:.2f}", "MACs x"), key("netscore", "{:.2f}", "NetScore"),
               key("cycle"), key("wall_s", "{:.0f}", "wall s")]


def overrides(task: str, args: argparse.Namespace) -> list[str]:
    """The train.py command line of one task's run."""
    if args.synthetic:
        chosen = [f"task={task}"]
    else:
        chosen = [f"experiment={EXPERIMENTS[task]}", f"data.root={getattr(args, f'{task}_root')}"]
    return [*chosen, f"output_dir={args.output.with_suffix('') / task}", f"seed={args.seed}", "synthesis.family.targets=[]",
            *args.override]


def run_task(task: str, args: argparse.Namespace) -> dict:
    command = overrides(task, args)
    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=command)
    with Stopwatch() as watch:
        record, _ = synthesize(cfg)
    return {
        "task": task,
        "overrides": command,
        "monitor": cfg.gate.monitor,
        "gate": record.gate,
        "prototype": record.prototype.to_dict(),
        "best": record.best.to_dict(),
        "best_cycle": record.best_cycle,
        "cycles_accepted": sum(c.accepted for c in record.cycles),
        "cycles": len(record.cycles),
        "wall_s": round(watch.wall, 1),
        "run_dir": str(cfg.output_dir),
    }


def format_runs(runs: list[dict]) -> str:
    """φ and the best network of each task, one row each."""
    rows = [{**row, "task": run["task"], "network": name, "monitor": run["monitor"],
             "mac_reduction": run["prototype"]["macs"] / row["macs"], "cycle": run["best_cycle"] if name == "best" else 0,
             "wall_s": run["wall_s"] if name == "best" else None}
            for run in runs for name, row in (("prototype", run["prototype"]), ("best", run["best"]))]
    return format_table(rows, RUN_COLUMNS)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", nargs="+", choices=tuple(EXPERIMENTS), default=list(EXPERIMENTS))
    p.add_argument("--segmentation-root", default="../shared/datasets/camvid", help="CamVid in the SegNet layout")
    p.add_argument("--detection-root", default="../shared/datasets/pennfudan", help="Penn-Fudan in COCO format")
    p.add_argument("--synthetic", action="store_true", help="each task's generated data instead of its experiment")
    p.add_argument("--override", nargs="*", default=[], help="extra train.py overrides for every run")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", type=Path, default=Path("outputs/benchmarks/task_runs.json"))
    args = p.parse_args(argv)
    result = {"config": vars(args), "machine_start": machine(), "runs": []}
    for task in args.tasks:
        result["runs"].append(run_task(task, args))
        write_json(args.output, result)  # a finished task is kept if a later one fails
    result["machine_end"] = machine()
    result["table"] = format_runs(result["runs"])
    return publish(args.output, result)


if __name__ == "__main__":
    main()
