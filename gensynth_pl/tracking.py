"""Weights & Biases view of a synthesis run (offline by default; online when the user sets it)."""
from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import WandbLogger

from gensynth_pl.callbacks import PARETO_FILE, GenerativeSynthesis

CYCLE_KEYS = ("params", "macs", "metric", "netscore", "information_density", "gate_passed", "accepted", "step")


class WandbSynthesisTracker(Callback):
    """Mirrors the GenerativeSynthesis record into the trainer's WandbLogger run: per-cycle metrics on a
    ``cycle`` axis, a table of architectures (channels per group), the Pareto plot, and the best
    network and the generator as artifacts. Add it after the GenerativeSynthesis callback."""

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
            run.log({"cycle": 0, **{f"synthesis/{k}": record.prototype[k] for k in CYCLE_KEYS if k in record.prototype}})
            self._logged = 0
        for entry in record.cycles[self._logged :]:
            run.log({"cycle": entry["cycle"], **{f"synthesis/{k}": entry[k] for k in CYCLE_KEYS}})
        self._logged = len(record.cycles)
        if record.cycles:
            run.log({"synthesis/architectures": self._architecture_table(record.cycles)})

    @staticmethod
    def _architecture_table(cycles: list[dict]):
        import wandb

        groups = sorted({g for c in cycles for g in c["widths"]})
        columns = ["cycle", "seed", "accepted", "macs", "params", "metric", "removed_blocks", *groups]
        rows = [
            [c["cycle"], c["seed"], c["accepted"], c["macs"], c["params"], c["metric"], ",".join(c["removed_blocks"])]
            + [c["widths"].get(g, 0) for g in groups]
            for c in cycles
        ]
        return wandb.Table(columns=columns, data=rows)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        synthesis = self._synthesis(trainer)
        if not trainer.is_global_zero or synthesis.record.best is None:
            return
        import wandb

        run = self._run(trainer)
        for key, value in synthesis.record.best.items():
            run.summary[f"best/{key}"] = value
        run.summary["best/cycle"] = synthesis.record.best_cycle
        if synthesis.output_dir is None:
            return
        if (synthesis.output_dir / PARETO_FILE).is_file():
            run.log({"synthesis/pareto": wandb.Image(str(synthesis.output_dir / PARETO_FILE))})
        if self.log_artifacts:
            network = wandb.Artifact(f"best-network-{run.id}", type="model", metadata=synthesis.record.best)
            network.add_dir(str(synthesis.output_dir / "best"))
            run.log_artifact(network)
            generator = wandb.Artifact(f"generator-{run.id}", type="generator", metadata={"gate": synthesis.record.gate})
            generator.add_file(str(synthesis.output_dir / "generator.pt"))
            run.log_artifact(generator)
