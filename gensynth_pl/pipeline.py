"""One synthesis run from a composed Hydra config: what ``train.py`` calls."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.loggers import WandbLogger
from omegaconf import DictConfig, OmegaConf

from gensynth_pl.callbacks import GenerativeSynthesis
from gensynth_pl.family import build_family
from gensynth_pl.members import FAMILY_COLUMNS, format_family
from gensynth_pl.module import Recipe, SynthesisModule
from gensynth_pl.record import SynthesisRecord
from gensynth_pl.rundir import RunDirectory
from gensynth_pl.tensorfile import load_state_dict
from gensynth_pl.torch_utils import brief

Build = Callable[[Any, str], Any]  # (a recipe node, what it is: "optimizer", "data"...) -> the object it describes


def _own(node: Any, what: str) -> Any:
    """Your own composed config: its recipes run as written."""
    return instantiate(node)


def optimization(cfg: DictConfig, build: Build = _own) -> dict:
    """The run's optimizer and per-phase scheduler factories (``scheduler: null`` keeps the learning rate constant).
    ``build``: how recipes become objects (a config read from a file: gensynth_pl.recipes.instantiate_trusted)."""
    scheduler = build(cfg.scheduler, "scheduler") if cfg.get("scheduler") else None
    return {"optimizer": build(cfg.optimizer, "optimizer"), "scheduler": scheduler}


def recipe(cfg: DictConfig, build: Build = _own) -> Recipe:
    """How a run fine-tunes networks from its generator: its optimizer, scheduler, rate and distillation."""
    s = cfg.synthesis
    return Recipe(**optimization(cfg, build), finetune_lr_scale=s.finetune_lr_scale, distill_weight=s.distill_weight,
                  distill_temperature=s.distill_temperature, distill_every=s.distill_every)


def load_weights(network: torch.nn.Module, path: str) -> None:
    """A trained prototype's weights: a state dict in safetensors (e.g. a run's best/weights.safetensors, for the
    same architecture) or saved with torch.save (read with weights_only=True)."""
    fix = "point prototype_weights to a state dict of the model config's network (safetensors, or torch.save)"
    weights = load_state_dict(path, f"prototype_weights: {fix}")
    try:
        network.load_state_dict(weights)
    except RuntimeError as error:
        raise ValueError(f"prototype_weights: '{path}' does not fit the {type(network).__name__} of the model config "
                         f"({brief(error)}); {fix}") from error


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
        if synthesis.family.targets and trainer.is_global_zero:
            files = RunDirectory(output_dir)
            family = build_family(files.generator, datamodule, task, synthesis.family, recipe(cfg), output_dir=files.family)
            print(format_family(family))
            if isinstance(logger, WandbLogger):
                log_family(logger, family, files.family)
    finally:
        if isinstance(logger, WandbLogger):  # each multirun job gets its own W&B run
            import wandb

            wandb.finish()
    return synthesis.record, synthesis


def log_family(logger: WandbLogger, family: dict, directory: Path) -> None:
    """The family as a W&B table (one row per member) and its plot."""
    import wandb

    rows = [[row.get(c) for c in FAMILY_COLUMNS] for row in family["rows"]]
    logger.experiment.log({"family/table": wandb.Table(columns=list(FAMILY_COLUMNS), data=rows),
                           "family/plot": wandb.Image(str(directory / "family.png"))})
    logger.experiment.summary["family/diversity"] = family["diversity"]
