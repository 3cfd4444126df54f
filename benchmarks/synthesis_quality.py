"""Synthesis quality at CPU scale: our best generated network against pruning and width scaling at matched MACs.

CIFAR-10 JPEGs (a fixed training subset and a validation carve-out), a ResNet-20 prototype trained for a
fixed budget, then, at the MACs of the best generated network (relative gate: at most 1 point below φ) and
the same fine-tuning epochs: uniform L1 channel pruning, random channel pruning, a width-scaled ResNet-20
trained from scratch, and Lightning's unstructured ModelPruning at the same parameter count.

    python -m benchmarks.synthesis_quality                  # the full default: 54 min on 2 idle CPU cores
    python -m benchmarks.synthesis_quality --train-subset 2000 --val-size 1000 --prototype-epochs 5 --cycles 3
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn

from benchmarks.common import Contender, Schedule, compare
from gensynth_pl.data import ImageFolderDataModule, SyntheticDataModule
from gensynth_pl.models import cifar_resnet
from gensynth_pl.tasks import ClassificationTask


def parser(defaults: dict | None = None) -> argparse.ArgumentParser:
    """The options every comparison shares; ``defaults`` sets a benchmark's own sizes."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", default="../shared/datasets/cifar10", help="ImageFolder tree (root/train/<class>/*.jpg)")
    p.add_argument("--synthetic", action="store_true", help="generated data instead of --data-root (smoke runs)")
    p.add_argument("--train-subset", type=int, default=10_000, help="training images (0: all that remain after validation)")
    p.add_argument("--val-size", type=int, default=5_000, help="validation images carved out of the training set")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--num-workers", type=int, default=2)
    p.add_argument("--depth", type=int, default=20, help="prototype ResNet depth (6n+2)")
    p.add_argument("--width", type=int, default=16, help="prototype ResNet first-stage width")
    p.add_argument("--prototype-epochs", type=int, default=30)
    p.add_argument("--cycles", type=int, default=5)
    p.add_argument("--epochs-per-cycle", type=int, default=2)
    p.add_argument("--probe-batches", type=int, default=16)
    p.add_argument("--step", type=float, default=0.3, help="the inquisitor's first compression step")
    p.add_argument("--channel-multiple", type=int, default=8, help="round generated widths to multiples of this (1: exact)")
    p.add_argument("--finetune-lr-scale", type=float, default=0.2,
                   help="learning rate of fine-tuning (our cycles and the pruned baselines) relative to φ's")
    p.add_argument("--gate-drop", type=float, default=0.01, help="allowed accuracy drop below the prototype")
    p.add_argument("--latency-repeats", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    p.add_argument("--output", type=Path, default=Path("outputs/benchmarks/synthesis_quality.json"))
    p.set_defaults(**(defaults or {}))
    return p


def datamodule(args: argparse.Namespace) -> ImageFolderDataModule | SyntheticDataModule:
    if args.synthetic:
        return SyntheticDataModule(
            num_classes=10, image_size=args.image_size, train_size=args.train_subset, val_size=args.val_size,
            noise=0.5, seed=args.seed, batch_size=args.batch_size,
        )
    return ImageFolderDataModule(
        args.data_root, val_size=args.val_size, train_subset=args.train_subset or None, image_size=args.image_size,
        seed=args.seed, batch_size=args.batch_size, num_workers=args.num_workers,
    )


def schedule(args: argparse.Namespace) -> Schedule:
    return Schedule(
        prototype_epochs=args.prototype_epochs, cycles=args.cycles, epochs_per_cycle=args.epochs_per_cycle,
        probe_batches=args.probe_batches, gate_drop=args.gate_drop, step=args.step,
        channel_multiple=args.channel_multiple, finetune_lr_scale=args.finetune_lr_scale, seed=args.seed,
        accelerator=args.device, latency_repeats=args.latency_repeats,
    )


def width_scaled_resnet(depth: int, width: int, num_classes: int, seed: int) -> Contender:
    """ResNet-``depth`` with every stage's width multiplied by the knob, freshly initialised."""

    def build(multiplier: float) -> nn.Module:
        torch.manual_seed(seed)
        stages = tuple(max(1, round(multiplier * width * k)) for k in (1, 2, 4))
        return cifar_resnet(depth, num_classes, width, stage_widths=stages)

    return Contender("width_scaled", build, 0.05, 1.0)


def main(argv: list[str] | None = None, defaults: dict | None = None) -> dict:
    args = parser(defaults).parse_args(argv)
    data = datamodule(args)
    input_shape = (3, args.image_size, args.image_size)
    torch.manual_seed(args.seed)
    prototype = cifar_resnet(args.depth, 10, args.width)
    recipe = {"_target_": "gensynth_pl.models.cifar_resnet", "depth": args.depth, "width": args.width, "num_classes": 10}
    result = compare(
        prototype, data, ClassificationTask(10), schedule(args), input_shape, args.output,
        from_scratch=[width_scaled_resnet(args.depth, args.width, 10, args.seed)],
        prototype_config=recipe, config=vars(args),
    )
    return result


if __name__ == "__main__":
    main()
