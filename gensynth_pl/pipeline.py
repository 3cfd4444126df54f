"""One synthesis run from a composed Hydra config: what ``train.py`` calls."""
from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.loggers import WandbLogger
from omegaconf import DictConfig, OmegaConf

from gensynth_pl.callbacks import GenerativeSynthesis
from gensynth_pl.module import SynthesisModule
from gensynth_pl.record import SynthesisRecord


def optimization(cfg: DictConfig) -> dict:
    """The run's optimizer and per-phase scheduler factories (``scheduler: null`` keeps the learning rate constant)."""
    scheduler = instantiate(cfg.scheduler) if cfg.get("scheduler") else None
    return {"optimizer": instantiate(cfg.optimizer), "scheduler": scheduler}


def load_weights(network: torch.nn.Module, path: str) -> None:
    """A trained prototype's weights (a state dict saved with torch.save, e.g. a run's best/weights.pt)."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"prototype_weights: '{path}' does not exist; point it to a state dict saved with torch.save")
    try:
        network.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    except RuntimeError as error:
        raise ValueError(f"prototype_weights: '{path}' does not fit the {type(network).__name__} of the model config: {error}") from error


def synthesize(cfg: DictConfig, extra_callbacks: list[L.Callback] | None = None) -> tuple[SynthesisRecord, GenerativeSynthesis]:
    """Train the prototype, run the synthesis cycles, write the run directory; returns the record and the callback.
    ``extra_callbacks`` run after the configured ones (e.g. a benchmark's timer)."""
    L.seed_everything(cfg.seed, workers=True)
    output_dir = Path(cfg.output_dir)
    datamodule = instantiate(cfg.data)
    task = instantiate(cfg.task)
    network = instantiate(cfg.model)
    if cfg.get("prototype_weights"):
        load_weights(network, cfg.prototype_weights)
    module = SynthesisModule(network, task, **optimization(cfg))
    synthesis: GenerativeSynthesis = instantiate(
        cfg.synthesis,
        gate=instantiate(cfg.gate),
        output_dir=str(output_dir),
        task_name=task.name,
        input_shape=getattr(datamodule, "input_shape", None),
    )
    # set after instantiate: Hydra would otherwise instantiate the recipe's own _target_
    synthesis.loop.prototype_config = OmegaConf.to_container(cfg.model, resolve=True)
    logger = instantiate(cfg.logger) if cfg.get("logger") else False
    callbacks = [synthesis, *(instantiate(c) for c in (cfg.get("callbacks") or {}).values()), *(extra_callbacks or [])]
    trainer: L.Trainer = instantiate(  # default_root_dir: whatever Lightning writes by default stays in the run dir
        cfg.trainer, max_epochs=synthesis.total_epochs, callbacks=callbacks, logger=logger,
        default_root_dir=str(output_dir),
    )
    if logger:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    torch.set_float32_matmul_precision("high")
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
        synthesis.evaluate_test_split(trainer, module, datamodule)
    finally:
        if isinstance(logger, WandbLogger):  # each multirun job gets its own W&B run
            import wandb

            wandb.finish()
    return synthesis.record, synthesis
