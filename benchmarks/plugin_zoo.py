"""Generative synthesis as a plug-in: torchvision models in a user's own LightningModule, on CIFAR-10.

The user's module knows nothing of gensynth-pl: it holds its network in ``self.model``, trains it with
cross-entropy (SGD with Nesterov momentum) and logs ``val_acc``. The ``GenerativeSynthesis`` callback is added to the user's own Trainer: the
prototype trains for ``--prototype-epochs``, then ``--cycles`` candidates of ``--epochs-per-cycle`` epochs, then the
polish, gated at most ``--max-drop`` below the prototype's validation accuracy. Each model is torchvision's own
constructor with 10 classes, run on the 32x32 images as they are. The best network is reloaded from its
``best/`` folder (with the prototype passed in: a user's module has no Hydra recipe) and timed against the
prototype under ONNX Runtime (batch 1, one thread).

    python -m benchmarks.plugin_zoo --root ../shared/datasets/cifar10     # about 15 minutes on 2 idle CPU cores
"""
from __future__ import annotations

import argparse
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from benchmarks.model_zoo import ort_latency
from benchmarks.tables import Column, format_table, key, publish, write_json
from benchmarks.timing import Stopwatch, machine
from gensynth_pl import GenerativeSynthesis, Gate, export_onnx, load_network
from gensynth_pl.data import ImageFolderDataModule
from gensynth_pl.latency import verify_onnx
from gensynth_pl.rundir import ONNX_FILE, RunDirectory

OUTPUT = Path("outputs/benchmarks/plugin_zoo.json")
INPUT_SHAPE = (3, 32, 32)


def _torchvision(arch: str):
    def build() -> nn.Module:
        """torchvision's constructor as a user calls it for CIFAR-10: 10 classes, no pretrained weights."""
        return torchvision.models.get_model(arch, weights=None, num_classes=10)

    return build


MODELS = {arch: _torchvision(arch) for arch in ("mobilenet_v2", "efficientnet_b0")}


class UserClassifier(L.LightningModule):
    """A user's own classifier module: nothing in it refers to gensynth-pl."""

    def __init__(self, model: nn.Module, lr: float) -> None:
        super().__init__()
        self.model, self.lr = model, lr
        self.accuracy = MulticlassAccuracy(10, average="micro")

    def training_step(self, batch, batch_idx):
        images, labels = batch
        loss = F.cross_entropy(self.model(images), labels)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        images, labels = batch
        self.accuracy(self.model(images), labels)
        self.log("val_acc", self.accuracy)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9, nesterov=True, weight_decay=5e-4)


def run_model(name: str, args: argparse.Namespace, run_dir: Path) -> dict:
    """Train φ and synthesise through the plug-in callback; reload, export and time the best network."""
    L.seed_everything(args.seed, workers=True, verbose=False)
    data = ImageFolderDataModule(str(args.root), val_size=args.val_size, train_subset=args.train_subset,
                                 batch_size=args.batch_size, num_workers=1, in_memory=True, seed=args.seed)
    module = UserClassifier(MODELS[name](), args.lr)
    callback = GenerativeSynthesis(
        Gate("val_acc", args.max_drop, relative=True), cycles=args.cycles, epochs_per_cycle=args.epochs_per_cycle,
        prototype_epochs=args.prototype_epochs, polish_epochs=args.polish_epochs, network_attr="model",
        input_shape=INPUT_SHAPE, output_dir=str(run_dir), progress_lines=True,
    )
    trainer = L.Trainer(max_epochs=callback.total_epochs, callbacks=[callback], accelerator="cpu", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0)
    with Stopwatch() as watch:
        trainer.fit(module, datamodule=data)
    record = callback.record
    best, prototype = module.model.cpu().eval(), callback.loop.generator.prototype.cpu().eval()
    files = RunDirectory(run_dir)
    torch.manual_seed(args.seed + 1)
    reloaded = load_network(files.best, prototype=MODELS[name]())  # other random weights: only the shape matters
    x = torch.randn(4, *INPUT_SHAPE)
    with torch.no_grad():
        reload_identical = torch.equal(reloaded(x), best(x))
    onnx = {"prototype": export_onnx(prototype, INPUT_SHAPE, run_dir / "prototype.onnx"), "best": files.best / ONNX_FILE}
    onnx_difference = verify_onnx(best, onnx["best"], INPUT_SHAPE)
    latency = ort_latency({"prototype": prototype, "best": best}, onnx, INPUT_SHAPE, args.latency_repeats, args.latency_rounds)
    return {
        "model": name, "wall_s": round(watch.wall, 1), "record": record.to_dict(),
        "prototype_acc": record.prototype.metric, "best_acc": record.best.metric, "gate_bound": record.gate["threshold"],
        "gate_passed": record.best.gate_passed, "prototype_macs": record.prototype.macs, "best_macs": record.best.macs,
        "prototype_params": record.prototype.params, "best_params": record.best.params,
        "mac_reduction": record.prototype.macs / record.best.macs, "accepted": sum(c.accepted for c in record.cycles),
        "cycles": len(record.cycles), "reload_identical": reload_identical, "onnx_max_difference": onnx_difference,
        "ort_ms": latency, "speedup": latency["prototype"] / latency["best"],
    }


PLUGIN_COLUMNS = [
    key("model"), key("prototype_acc", "{:.4f}", "φ val acc"), key("best_acc", "{:.4f}", "best val acc"),
    key("gate_bound", "{:.4f}", "gate >="), Column("gate", lambda r: "pass" if r["gate_passed"] else "fail"),
    key("prototype_macs", "{:,}", "φ MACs"), key("best_macs", "{:,}", "best MACs"), key("mac_reduction", "{:.2f}x", "MAC red."),
    key("prototype_params", "{:,}", "φ params"), key("best_params", "{:,}", "best params"),
    Column("accepted", lambda r: f"{r['accepted']}/{r['cycles']}"), Column("reload", lambda r: "identical" if r["reload_identical"] else "DIFFERS"),
    Column("ORT φ ms", lambda r: r["ort_ms"]["prototype"], "{:.2f}"), Column("ORT best ms", lambda r: r["ort_ms"]["best"], "{:.2f}"),
    key("speedup", "{:.2f}x", "ORT speed-up"), key("wall_s", "{:.0f}", "wall s"),
]


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", type=Path, default=Path("../shared/datasets/cifar10"), help="CIFAR-10 as an ImageFolder")
    p.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    p.add_argument("--train-subset", type=int, default=5000)
    p.add_argument("--val-size", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--prototype-epochs", type=int, default=10)
    p.add_argument("--cycles", type=int, default=3)
    p.add_argument("--epochs-per-cycle", type=int, default=2)
    p.add_argument("--polish-epochs", type=int, default=2)
    p.add_argument("--max-drop", type=float, default=0.02, help="the gate: val_acc at most this much below φ's")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--latency-repeats", type=int, default=20)
    p.add_argument("--latency-rounds", type=int, default=3)
    p.add_argument("--output", type=Path, default=OUTPUT)
    args = p.parse_args(argv)
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "output"}
    result = {"machine": machine(), "settings": settings, "rows": []}
    for name in args.models:  # each run's folder (summary.json, generator.pt, best/) beside the JSON
        result["rows"].append(run_model(name, args, args.output.with_suffix("") / name))
        write_json(args.output, result)
    result["machine_end"] = machine()
    result["table"] = format_table(result["rows"], PLUGIN_COLUMNS)
    return publish(args.output, result)


if __name__ == "__main__":
    main()
