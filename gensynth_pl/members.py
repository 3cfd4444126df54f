"""Finishing one family member: fine-tuned with distillation from φ until it meets every condition of the run (or
an epoch limit, or early rejection as in the cycles), judged by the run's referee, tested, timed and saved; and the
family's table, files and the gathering of members built by separate jobs (``gensynth-generate -m``).
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import lightning as L
from torch import nn

from gensynth_pl.console import QuietTrainer
from gensynth_pl.data.common import has_test_split
from gensynth_pl.export import export_onnx, read_spec, save_network
from gensynth_pl.generator import Generator
from gensynth_pl.graph import Architecture
from gensynth_pl.latency import measure_latency
from gensynth_pl.metrics import count_macs, count_params
from gensynth_pl.module import Recipe
from gensynth_pl.referee import Referee
from gensynth_pl.report import family_plot
from gensynth_pl.rundir import ONNX_FILE, write_text_atomic

FAMILY_COLUMNS = ("name", "target", "reached", "macs", "params", "metric", "test_metric", "netscore", "gate_passed",
                  "epochs", "stop", "latency_ms")
# why a member's fine-tuning stopped
PASSED, BUDGET_MISSED, REJECTED_EARLY, EPOCH_LIMIT, THE_ANSWER = (
    "passed", "budget missed", "rejected early", "epoch limit", "the answer")


class MemberJudge(L.Callback):
    """Judges a member after every epoch with the run's referee and stops its fine-tuning as soon as its metric gates
    are met (its budgets are fixed by its architecture: ``budgets``, measured once), or after its first epoch when
    even the recovery the run measured per epoch, over the epochs it has left, leaves it short."""

    def __init__(self, referee: Referee, budgets: dict[str, float]) -> None:
        self.referee, self.budgets = referee, budgets
        self.metrics: dict[str, float] | None = None
        self.epochs, self.stop = 0, EPOCH_LIMIT

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        logged = trainer.callback_metrics
        self.metrics = {gate.monitor: float(logged[gate.monitor]) for gate in self.referee.requirements.gates}
        self.epochs = trainer.current_epoch + 1
        if all(v.passed for v in self.referee.requirements.verdicts(self.metrics, None)):
            bounds = self.referee.requirements.bounds
            self.stop = PASSED if all(self.budgets[name] <= bound for name, bound in bounds.items()) else BUDGET_MISSED
        elif self.referee.rejects_early(self.epochs, self.metrics[self.referee.gate.monitor], trainer.max_epochs - 1):
            self.stop = REJECTED_EARLY
        else:
            return
        trainer.should_stop = True


def finish_member(name: str, network: nn.Module, arch: Architecture, generator: Generator, referee: Referee,
                  max_epochs: int, datamodule: L.LightningDataModule, task, recipe: Recipe,
                  output_dir: str | Path | None, trainer_kwargs: dict | None = None, answer: bool = False) -> dict:
    """Fine-tune ``network`` (learning from φ) until it meets every condition, for at most ``max_epochs`` (0, or the
    run's ``answer``: kept as the run left it), judge, test, time and save it; returns its table row."""
    shape = generator.input_shape
    budgets = referee.requirements.costs(network, shape, count_macs(network, shape), count_params(network))
    epochs = 0 if answer else max_epochs
    print(f"[family] {name}: {count_macs(network, shape):,} MACs, fine-tuning until it meets every condition "
          f"(at most {epochs} epochs)", flush=True)
    judge = MemberJudge(referee, budgets)
    module = recipe.module(network, task)
    defaults = dict(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                    enable_model_summary=False, num_sanity_val_steps=0)
    trainer = QuietTrainer(max_epochs=epochs, callbacks=[judge], **{**defaults, **(trainer_kwargs or {})})
    if epochs > 0:
        with recipe.distilling(generator.prototype, module):
            trainer.fit(module, datamodule=datamodule)
    metrics = judge.metrics
    if metrics is None:  # not trained: validated as it is
        logged = trainer.validate(module, datamodule=datamodule, verbose=False)[0]
        metrics = {gate.monitor: float(logged[gate.monitor]) for gate in referee.requirements.gates}
    test = None
    if has_test_split(datamodule):
        test = {k.removeprefix("test/"): float(v) for k, v in trainer.test(module, datamodule=datamodule, verbose=False)[0].items()}
    network = module.net.cpu().eval()
    report = dataclasses.replace(referee.report(network, shape, metrics, budgets), test=test)
    stop = THE_ANSWER if answer else (judge.stop if epochs > 0 else EPOCH_LIMIT)
    row = {"name": name, "epochs": judge.epochs, "stop": stop, **report.to_dict(),
           "unmet": [v.name for v in report.unmet()] or ([] if report.gate_passed else [referee.gate.monitor]),
           "test_metric": (test or {}).get(referee.gate.monitor.split("/", 1)[-1]),
           "widths": arch.widths(), "removed_blocks": arch.removed_blocks}
    if output_dir is not None:
        folder = save_network(Path(output_dir) / name, network, arch, generator.graph, generator.prototype_config,
                              report.to_dict())
        onnx = export_onnx(network, shape, folder / ONNX_FILE)
        (timing,) = measure_latency(network, onnx, shape, (1,), repeats=20, runtimes=("onnxruntime",))
        row["latency_ms"] = timing["median_ms"]
    verdict = "meets every condition" if report.gate_passed else f"fails: misses {', '.join(row['unmet'])}"
    print(f"[family] {name}: {report.macs:,} MACs, {referee.gate.monitor} {report.metric:.4f} after {judge.epochs} "
          f"epochs ({stop}; {verdict})", flush=True)
    return row


def write_family(directory: Path, result: dict) -> None:
    """family.json (everything), family.csv (the table) and family.png (metric against MACs)."""
    write_text_atomic(directory / "family.json", json.dumps(result, indent=2))
    lines = [",".join(FAMILY_COLUMNS)] + [",".join(str(row.get(c, "")) for c in FAMILY_COLUMNS) for row in result["rows"]]
    write_text_atomic(directory / "family.csv", "\n".join(lines) + "\n")
    family_plot(result, directory / "family.png")


def format_family(result: dict) -> str:
    """The family as a console table, with how many members meet every condition, replacements, shortfalls and
    the diversity figure."""
    lines = [" | ".join(f"{c:>12}" for c in FAMILY_COLUMNS)]
    for row in result["rows"]:
        cells = []
        for column in FAMILY_COLUMNS:
            value = row.get(column)
            cells.append(f"{value:>12.4f}" if isinstance(value, float) else f"{value!s:>12}")
        lines.append(" | ".join(cells))
        if row.get("replaces"):
            old = row["replaces"]
            lines.append(f"  {row['name']} replaces a smaller network ({old['macs']:,} MACs, metric {old['metric']:.4f}, "
                         f"{old['stop']}) that could not pass")
    passed = sum(row["gate_passed"] for row in result["rows"])
    lines.append(f"{passed}/{len(result['rows'])} members meet every condition; diversity (mean share of channels two "
                 f"members do not have in common) {result['diversity']:.3f}")
    if result.get("shortfall"):
        lines.append(result["shortfall"])
    return "\n".join(lines)


def gather_family(directory: str | Path) -> dict:
    """The members that separate jobs built (each job's folder under ``directory`` holds its family.json) as one
    family: rows in job order, the diversity over all of them, written to ``directory``'s family files."""
    from gensynth_pl.family import diversity  # the family module builds on this one

    directory = Path(directory)
    parts = sorted((p for p in directory.glob("*/family.json")), key=lambda p: (len(p.parent.name), p.parent.name))
    if not parts:
        raise FileNotFoundError(f"no */family.json under {directory}: point to the folder of a gensynth-generate -m run")
    results = [json.loads(p.read_text()) for p in parts]
    generator, _ = Generator.load(results[0]["generator"])
    rows = [{**row, "job": part.parent.name} for part, result in zip(parts, results) for row in result["rows"]]
    archs = [Architecture.from_dict(read_spec(part.parent / row["name"])["architecture"])
             for part, result in zip(parts, results) for row in result["rows"]]
    family = {**results[0], "rows": rows, "diversity": diversity(archs, generator.graph), "jobs": len(parts)}
    family.pop("shortfall", None)
    write_family(directory, family)
    return family

