"""A family from one learned generator against uniform L1 pruning at each member's MACs.

Reads a finished synthesis run of a benchmark's settings (by default the one ``synthesis_quality`` wrote),
builds one network per budget (fractions of φ's MACs), fine-tunes each until it meets every condition (at
most ``--finetune-epochs``) and the L1-pruned φ it is compared with for the epochs the member took (both learning
from φ), and reports MACs, budget deviation, val and
test accuracy, gate verdicts, the family's diversity and its wall time against the synthesis run's.

    python -m benchmarks.family                              # the quality benchmark's run, budgets 1/2 1/3 1/4 1/6
    python -m benchmarks.family --run-dir <run> --targets 0.5 0.25 --finetune-epochs 4
"""
from __future__ import annotations

from pathlib import Path

from hydra.utils import instantiate

from benchmarks.baselines import CHANNEL_PRUNING, channel_pruner, match_macs
from benchmarks.common import parser, settings, train
from benchmarks.tables import Column, format_table, key, publish, write_json
from benchmarks.timing import Stopwatch, machine
from gensynth_pl.family import FamilySettings, build_family
from gensynth_pl.members import format_family
from gensynth_pl.generator import Generator
from gensynth_pl.pipeline import recipe
from gensynth_pl.record import SynthesisRecord
from gensynth_pl.rundir import RunDirectory

OUTPUT = Path("outputs/benchmarks/family.json")
RUN_DIR = Path("outputs/benchmarks/synthesis_quality/gensynth_run")


COMPARISON_COLUMNS = [
    key("name", header="member"), key("target", "{:,}", "target MACs"), key("macs", "{:,}", "MACs"),
    Column("dev.", lambda r: 100 * (r["macs"] / r["target"] - 1), "{:+.1f}%"), key("metric", "{:.4f}", "val acc"),
    key("test_metric", "{:.4f}", "test acc"), Column("gate", lambda r: "yes" if r["gate_passed"] else "no"),
    key("l1_macs", "{:,}", "L1+KD MACs"), key("l1_val", "{:.4f}", "L1 val"), key("l1_test", "{:.4f}", "L1 test"),
]


def main(argv: list[str] | None = None) -> dict:
    p = parser(__doc__.splitlines()[0], "benchmark_cifar10_cpu", OUTPUT)
    p.add_argument("--run-dir", type=Path, default=RUN_DIR, help="a finished synthesis run of these settings")
    p.add_argument("--targets", type=float, nargs="+", default=[1 / 2, 1 / 3, 1 / 4, 1 / 6])
    p.add_argument("--finetune-epochs", type=int, default=FamilySettings().finetune_epochs)
    args = p.parse_args(argv)
    cfg = settings(args.experiment, args.overrides, args.run_dir)
    files = RunDirectory(args.run_dir)
    record = SynthesisRecord.load(files.summary)
    family_settings = FamilySettings(tuple(args.targets), "macs", args.finetune_epochs)
    with Stopwatch() as watch:
        family = build_family(files.generator, instantiate(cfg.data), instantiate(cfg.task), family_settings, recipe(cfg),
                              output_dir=args.output.with_suffix("") / "family")
    print(format_family(family))
    synthesis_seconds = sum(c.seconds for c in record.cycles) + (record.polish.seconds if record.polish else 0)
    result = {"run_dir": str(args.run_dir), "config": {"targets": args.targets, "finetune_epochs": args.finetune_epochs},
              "machine": machine(), "family_wall_s": round(watch.wall, 1), "synthesis_wall_s": round(synthesis_seconds, 1),
              "diversity": family["diversity"], "rows": []}
    generator, _ = Generator.load(files.generator)
    prototype, input_shape = generator.prototype, generator.input_shape
    for member in family["rows"]:
        prune = channel_pruner(prototype, input_shape, CHANNEL_PRUNING["l1_pruning"], cfg.seed)
        network, _, macs = match_macs(prune, input_shape, member["macs"], 0.0, 0.95, increasing=False)
        epochs = max(1, member["epochs"])  # the epochs the member took (the answer itself took none: L1 gets one)
        trained = train(network, cfg, epochs, fine_tuning=True, teacher=prototype, label=f"l1_kd {member['name']}")
        result["rows"].append({**member, "l1_macs": macs, "l1_val": trained.val, "l1_test": trained.test})
        write_json(args.output, result)
    result["table"] = format_table(result["rows"], COMPARISON_COLUMNS) + (
        f"\nfamily of {len(result['rows'])}: {result['family_wall_s']:.0f} s; the synthesis after φ: "
        f"{result['synthesis_wall_s']:.0f} s; diversity {result['diversity']:.3f}")
    return publish(args.output, result)


if __name__ == "__main__":
    main()
