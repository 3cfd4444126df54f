"""Synthesis quality at GPU scale: full CIFAR-10 training set, ResNet-56 prototype, and a CIFAR-adapted
MobileNetV2 at matched MACs as the hand-designed baseline, next to the CPU-scale comparison's methods.

    python -m benchmarks.gpu_scale                  # experiment=benchmark_cifar10_gpu, on a GPU
    python -m benchmarks.gpu_scale --tiny           # a small end-to-end run on generated data, on the CPU
"""
from __future__ import annotations

from pathlib import Path

import torch
from hydra.utils import instantiate
from torch import nn
from torchvision.models import mobilenet_v2

from benchmarks.baselines import Contender, width_scaled
from benchmarks.common import compare, comparison_parser, settings

OUTPUT = Path("outputs/benchmarks/gpu_scale.json")
# MobileNetV2's stages for 32x32 inputs: stem and first downsampling stage at stride 1 (8x overall, not 32x)
CIFAR_SETTING = [[1, 16, 1, 1], [6, 24, 2, 1], [6, 32, 3, 2], [6, 64, 4, 2], [6, 96, 3, 1], [6, 160, 3, 2], [6, 320, 1, 1]]
TINY = ["data.train_size=64", "data.val_size=64", "data.image_size=16", "data.batch_size=32", "data.noise=0.5",
        "model.depth=8", "model.width=16", "synthesis.prototype_epochs=1", "synthesis.cycles=2", "synthesis.epochs_per_cycle=1",
        "synthesis.probe_batches=3", "synthesis.inquisitor.step=0.4", "gate.threshold=1.0", "synthesis.channel_multiple=1"]


def cifar_mobilenet_v2(width_mult: float, num_classes: int = 10) -> nn.Module:
    """torchvision's MobileNetV2 with a stride-1 stem for 32x32 images; channels rounded to 1, not 8, so the
    width multiplier can match a MAC budget closely."""
    network = mobilenet_v2(num_classes=num_classes, width_mult=width_mult, inverted_residual_setting=CIFAR_SETTING,
                           round_nearest=1)
    network.features[0][0].stride = (1, 1)
    return network


def mobilenet_contender(num_classes: int, seed: int) -> Contender:
    def build(width_mult: float) -> nn.Module:
        torch.manual_seed(seed)
        return cifar_mobilenet_v2(width_mult, num_classes)

    return Contender("mobilenet_v2", build, 0.05, 2.0)


def main(argv: list[str] | None = None) -> dict:
    p = comparison_parser(__doc__.splitlines()[0], "benchmark_cifar10_gpu", OUTPUT)
    p.add_argument("--tiny", action="store_true", help="generated data, ResNet-8, one-epoch phases, CPU (checks the pipeline)")
    args = p.parse_args(argv)
    experiment, overrides = (None, [*TINY, *args.overrides]) if args.tiny else (args.experiment, args.overrides)
    cfg = settings(experiment, overrides, args.output.with_suffix("") / "gensynth_run")
    contenders = [
        width_scaled("width_scaled", lambda widths: instantiate(cfg.model, stage_widths=list(widths)), cfg.model.width, cfg.seed),
        mobilenet_contender(cfg.data.num_classes, cfg.seed),
    ]
    return compare(cfg, args.output, contenders, args.latency_repeats, resume=args.resume, methods=args.methods)


if __name__ == "__main__":
    main()
