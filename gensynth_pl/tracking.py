"""Weights & Biases view of a synthesis run (offline by default; online when the user sets it)."""
from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import WandbLogger

from gensynth_pl.callbacks import GenerativeSynthesis
from gensynth_pl.record import CycleEntry

NETWORK_KEYS = ("params", "macs", "metric", "netscore", "information_density", "gate_passed")


class WandbSynthesisTracker(Callback):
    """Mirrors the GenerativeSynthesis record into the trainer's WandbLogger run: per-cycle metrics on a
    ``cycle`` axis, a table of architectures (channels per group), the Pareto plot, the best network and the
    generator as artifacts, and the test split's metrics of the prototype and the answer (``test/<network>/<metric>``
    in the run summary). Add it after the GenerativeSynthesis callback."""

    def __init__(self, log_artifacts: bool = True) -> None:
        self.log_artifacts = log_artifacts
        self._logged = -1  # cycles already mirrored; -1: not even the prototype

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._synthesis(trainer)
            self._run(trainer)

    @staticmethod
    def _synthesis(trainer: L.Trainer) -> GenerativeSynthesis:
        found = [c for c in trainer.callbacks if isinstance(c, GenerativeSynthesis)]
        if not found:
            raise ValueError("WandbSynthesisTracker needs a GenerativeSynthesis callback in the same Trainer")
        return found[0]

    @staticmethod
    def _run(trainer: L.Trainer):
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                return logger.experiment
        raise ValueError("WandbSynthesisTracker needs a WandbLogger (logger=wandb)")

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        record = self._synthesis(trainer).record
        if not trainer.is_global_zero or record.prototype is None or self._logged == len(record.cycles):
            return
        run = self._run(trainer)
        if self._logged < 0:
            run.define_metric("cycle")
            run.define_metric("synthesis/*", step_metric="cycle")
            run.log({"cycle": 0, **self._network_values(record.prototype)})
            self._logged = 0
        for entry in record.cycles[self._logged :]:
            values = {"synthesis/accepted": entry.accepted, "synthesis/step": entry.step}
            run.log({"cycle": entry.cycle, **self._network_values(entry.report), **values})
        self._logged = len(record.cycles)
        if record.cycles:
            run.log({"synthesis/architectures": self._architecture_table(record.cycles)})

    @staticmethod
    def _network_values(report) -> dict:
        values = {f"synthesis/{k}": getattr(report, k) for k in NETWORK_KEYS}
        for name, verdict in (report.conditions or {}).items():  # each requirement's value and verdict
            values[f"synthesis/condition/{name}"] = verdict.value
            values[f"synthesis/condition/{name}_met"] = verdict.passed
        return values

    @staticmethod
    def _architecture_table(cycles: list[CycleEntry]):
        import wandb

        groups = sorted({g for c in cycles for g in c.widths})
        columns = ["cycle", "seed", "accepted", "reason", "macs", "params", "metric", "removed_blocks", *groups]
        rows = [
            [c.cycle, c.seed, c.accepted, c.reason.value, c.report.macs, c.report.params, c.report.metric, ",".join(c.removed_blocks)]
            + [c.widths.get(g, 0) for g in groups]
            for c in cycles
        ]
        return wandb.Table(columns=columns, data=rows)

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        network = self._synthesis(trainer).testing
        if not trainer.is_global_zero or network is None:
            return
        run = self._run(trainer)
        for key, value in trainer.callback_metrics.items():
            if key.startswith("test/"):
                run.summary[f"test/{network}/{key.removeprefix('test/')}"] = float(value)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        synthesis = self._synthesis(trainer)
        if not trainer.is_global_zero or synthesis.record.best is None:
            return
        import wandb

        run = self._run(trainer)
        best = synthesis.record.best.to_dict()
        for key, value in best.items():
            run.summary[f"best/{key}"] = value
        run.summary["best/cycle"] = synthesis.record.best_cycle
        polish = synthesis.record.polish
        if polish is not None:
            run.summary.update({"polish/cycle": polish.cycle, "polish/epochs": polish.epochs, "polish/accepted": polish.accepted,
                                "polish/metric_before": polish.before.metric, "polish/metric_after": polish.after.metric})
        run_dir = synthesis.loop.run_dir
        if run_dir is None:
            return
        if run_dir.pareto.is_file():
            run.log({"synthesis/pareto": wandb.Image(str(run_dir.pareto))})
        if self.log_artifacts:
            network = wandb.Artifact(f"best-network-{run.id}", type="model", metadata=best)
            network.add_dir(str(run_dir.best))
            run.log_artifact(network)
            generator = wandb.Artifact(f"generator-{run.id}", type="generator", metadata={"gate": synthesis.record.gate})
            generator.add_file(str(run_dir.generator))
            run.log_artifact(generator)
