"""Synthesis quality at CPU scale: our best generated network against pruning and width scaling at matched MACs.

The settings are ``experiment=benchmark_cifar10_cpu`` (CIFAR-10 JPEGs, a 10,000-image training subset and a
5,000-image validation carve-out, ResNet-20 trained 30 epochs, gate at most 1 point below φ) plus any
train.py overrides. At the MACs of the best generated network and with the same fine-tuning epochs:
uniform L1 channel pruning, random channel pruning, a width-scaled ResNet trained from scratch, our answer's own
architecture trained from scratch, and Lightning's unstructured ModelPruning at the same parameter count.

    python -m benchmarks.synthesis_quality                                  # the full benchmark: about an hour
    python -m benchmarks.synthesis_quality data.train_subset=5000 synthesis.prototype_epochs=10 synthesis.cycles=3
    python -m benchmarks.synthesis_quality --prototype-weights outputs/benchmarks/synthesis_quality/prototype.pt
    python -m benchmarks.synthesis_quality --seeds 3                        # three φs: mean and spread of each method

The second form starts from a φ an earlier run with the same settings saved (its training is not repeated; the
from-scratch networks still get its ``synthesis.prototype_epochs``).
"""
from __future__ import annotations

from pathlib import Path

from hydra.utils import instantiate

from benchmarks.baselines import width_scaled
from benchmarks.common import across_seeds, compare, comparison_parser, settings

OUTPUT = Path("outputs/benchmarks/synthesis_quality.json")


def main(argv: list[str] | None = None) -> dict:
    p = comparison_parser(__doc__.splitlines()[0], "benchmark_cifar10_cpu", OUTPUT)
    p.add_argument("--prototype-weights", type=Path, help="φ trained with these settings by an earlier run (skips its training)")
    args = p.parse_args(argv)
    if args.prototype_weights is not None and args.seeds > 1:
        raise ValueError("--prototype-weights is one φ: it cannot be combined with --seeds (each seed trains its own φ)")

    def measure(seed_overrides: list[str], output: Path) -> dict:
        run_dir = output.with_suffix("") / "gensynth_run"
        overrides = [*args.overrides, *seed_overrides]
        cfg = settings(args.experiment, overrides, run_dir)
        prototype_epochs = cfg.synthesis.prototype_epochs
        if args.prototype_weights is not None:
            reuse = [f"prototype_weights={args.prototype_weights.resolve()}", "synthesis.prototype_epochs=0"]
            cfg = settings(args.experiment, [*overrides, *reuse], run_dir)
        contender = width_scaled("width_scaled", lambda widths: instantiate(cfg.model, stage_widths=list(widths)),
                                 cfg.model.width, cfg.seed)
        return compare(cfg, output, [contender], args.latency_repeats, prototype_epochs, args.resume, args.methods)

    return across_seeds(args.output, args.seeds, measure)


if __name__ == "__main__":
    main()
