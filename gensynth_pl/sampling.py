"""Many networks from one learned generator: sample N seeds, fine-tune each briefly, gate each."""
from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import lightning as L
import torch

from gensynth_pl.export import save_network
from gensynth_pl.gates import Gate
from gensynth_pl.generator import Generator
from gensynth_pl.metrics import NetworkReport
from gensynth_pl.module import SchedulerFactory, SynthesisModule, scale_learning_rate, sgd


def sample_networks(
    generator_path: str | Path,
    datamodule: L.LightningDataModule,
    task,
    seeds: Iterable[int],
    finetune_epochs: int = 1,
    optimizer: Callable[..., torch.optim.Optimizer] | None = None,
    scheduler: SchedulerFactory | None = None,
    finetune_lr_scale: float = 1.0,
    temperature: float = 1.0,
    output_dir: str | Path | None = None,
    trainer_kwargs: dict | None = None,
    prototype: torch.nn.Module | None = None,
) -> list[dict]:
    """One row per seed: seed, params, MACs, metric, whether it passes the run's gate, widths.

    Each network inherits weights from its nearest accepted ancestor in the generator's lineage and is
    fine-tuned for ``finetune_epochs`` (0: evaluate as built) at ``finetune_lr_scale`` times the optimizer's
    rate. With ``output_dir`` every network is saved under ``<output_dir>/seed_<seed>`` (spec + weights).
    ``prototype`` is needed only for a generator whose prototype has no recipe (see ``Generator.load``).
    """
    if finetune_epochs < 0:
        raise ValueError(f"finetune_epochs={finetune_epochs} must be >= 0")
    generator, extra = Generator.load(generator_path, prototype)
    if "gate" not in extra:
        raise ValueError(f"{generator_path} records no gate; it was not written by a synthesis run")
    gate = Gate.from_record(extra["gate"])
    settings = dict(
        accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False
    )
    settings.update(trainer_kwargs or {})
    def fine_tuning_optimizer(params) -> torch.optim.Optimizer:
        return scale_learning_rate((optimizer or sgd)(params), finetune_lr_scale)

    rows = []
    for seed in seeds:
        arch = generator.sample(int(seed), temperature)
        module = SynthesisModule(generator.build(arch), task, fine_tuning_optimizer, scheduler)
        trainer = L.Trainer(max_epochs=finetune_epochs, **settings)
        if finetune_epochs > 0:
            trainer.fit(module, datamodule=datamodule)
        metric = float(trainer.validate(module, datamodule=datamodule, verbose=False)[0][gate.monitor])
        report = NetworkReport.measure(module.net, generator.input_shape, metric, gate.passes(metric))
        rows.append({"seed": int(seed), **report.to_dict(), "widths": arch.widths(), "removed_blocks": arch.removed_blocks})
        if output_dir is not None:
            save_network(Path(output_dir) / f"seed_{seed}", module.net, arch, generator.graph, generator.prototype_config, rows[-1])
    return rows
