"""What every comparison shares: its settings composed from conf/, training, the synthesis run, the comparison.

A benchmark's settings are a ``train.py`` config (``experiment=<name>`` plus overrides), so the synthesis a
benchmark measures is exactly what ``python train.py`` runs, and every method trains with the run's own
datamodule, task, optimizer and per-phase learning-rate schedule.
"""
from __future__ import annotations

import argparse
import copy
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig, OmegaConf
from torch import nn

from benchmarks.baselines import CHANNEL_PRUNING, Contender, channel_pruner, count_nonzero, match_macs, unstructured_pruning
from benchmarks.tables import format_table, network_row, publish, write_json
from benchmarks.timing import OverheadTimer, Stopwatch, machine
from gensynth_pl import count_params
from gensynth_pl.callbacks import GenerativeSynthesis
from gensynth_pl.cli import CONF_DIR
from gensynth_pl.module import SynthesisModule, scale_learning_rate
from gensynth_pl.pipeline import optimization, synthesize
from gensynth_pl.timing import listening

# a benchmark's own runs: no logger, checkpoints or live progress bar (they would only cost time)
QUIET = ["logger=none", "callbacks=none", "trainer.enable_progress_bar=false", "trainer.enable_checkpointing=false",
         "trainer.enable_model_summary=false", "+trainer.num_sanity_val_steps=0"]


def parser(description: str, experiment: str | None, output: Path) -> argparse.ArgumentParser:
    """The options every comparison shares: its experiment, train.py overrides, output and latency repeats."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("overrides", nargs="*", help="train.py overrides, e.g. data.train_subset=5000 synthesis.cycles=3")
    p.add_argument("--experiment", default=experiment, help="the conf/experiment the settings start from ('null': none)")
    p.add_argument("--output", type=Path, default=output)
    p.add_argument("--latency-repeats", type=int, default=20)
    return p


def settings(experiment: str | None, overrides: list[str], run_dir: Path) -> DictConfig:
    """The composed train.py config of a benchmark, with its synthesis run writing into ``run_dir``."""
    chosen = [*([f"experiment={experiment}"] if experiment not in (None, "null") else []), *QUIET,
              f"output_dir={run_dir}", *overrides]
    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        return compose("train", overrides=chosen)


def finetune_epochs(cfg: DictConfig) -> int:
    """The epochs a run trains after φ: what every fine-tuning method gets too."""
    synthesis = cfg.synthesis
    return synthesis.cycles * synthesis.epochs_per_cycle


def train(
    network: nn.Module,
    cfg: DictConfig,
    epochs: int,
    callbacks: list[Callback] | None = None,
    fine_tuning: bool = False,
) -> tuple[SynthesisModule, float]:
    """Fit ``network`` with the run's datamodule, task, optimizer and per-phase schedule (at the synthesis's
    fine-tuning rate when ``fine_tuning`` a pruned φ); returns it and its last validation metric."""
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    factories = optimization(cfg)
    scale = cfg.synthesis.finetune_lr_scale if fine_tuning else 1.0
    optimizer = factories["optimizer"]
    module = SynthesisModule(network, instantiate(cfg.task), lambda p: scale_learning_rate(optimizer(p), scale),
                             factories["scheduler"])
    trainer = instantiate(cfg.trainer, max_epochs=epochs, callbacks=callbacks or [], logger=False)
    trainer.fit(module, datamodule=instantiate(cfg.data))
    return module, float(trainer.callback_metrics[cfg.gate.monitor])


@dataclass
class SynthesisRun:
    synthesis: GenerativeSynthesis
    prototype_seconds: float
    synthesis_seconds: float
    cpu_seconds: float
    overhead: list[dict] = field(default_factory=list)

    @property
    def prototype(self) -> nn.Module:
        """The trained prototype φ every baseline starts from (the generator's first lineage entry)."""
        return self.synthesis.loop.generator.prototype


def run_synthesis(cfg: DictConfig) -> SynthesisRun:
    """``train.py`` on ``cfg``, timing every phase and the synthesis's own work."""
    timer = OverheadTimer()
    with listening(timer), Stopwatch() as watch:
        _, synthesis = synthesize(cfg, extra_callbacks=[timer])
    return SynthesisRun(
        synthesis=synthesis,
        prototype_seconds=timer.boundaries[0] - timer.started,
        synthesis_seconds=timer.boundaries[-1] - timer.boundaries[0],
        cpu_seconds=watch.cpu,
        overhead=timer.per_cycle(),
    )


def compare(cfg: DictConfig, output_json: Path, from_scratch: list[Contender], latency_repeats: int) -> dict:
    """Our best generated network against structured, random and unstructured pruning of the same trained
    prototype and against networks trained from scratch, all at the generated network's MACs.

    The JSON is rewritten after every row, so a long run that is interrupted keeps what it measured.
    """
    work_dir = Path(cfg.output_dir).parent
    result = {"config": OmegaConf.to_container(cfg, resolve=True), "machine_start": machine(), "rows": []}
    epochs = finetune_epochs(cfg)

    def add(row: dict) -> None:
        result["rows"].append(row)
        write_json(output_json, result)
        print(f"[benchmark] {row['method']}: {row['macs']:,} MACs, val acc {row['val_acc']:.4f}, {row['wall_s']} s", flush=True)

    run = run_synthesis(cfg)
    record, input_shape = run.synthesis.record, run.synthesis.loop.input_shape
    target = record.best.macs
    result.update(synthesis=record.to_dict(), overhead=run.overhead, target_macs=target, synthesis_cpu_s=run.cpu_seconds)
    add(network_row("prototype", run.prototype, record.prototype.metric, input_shape, run.prototype_seconds, work_dir,
                    latency_repeats, epochs=cfg.synthesis.prototype_epochs))
    add(network_row("gensynth", run.synthesis.loop.best_network, record.best.metric, input_shape, run.synthesis_seconds,
                    work_dir, latency_repeats, epochs=epochs, best_cycle=record.best_cycle,
                    gate_passed=record.best.gate_passed, gate_bound=record.gate["threshold"]))

    for name, importance in CHANNEL_PRUNING.items():
        with Stopwatch() as watch:
            prune = channel_pruner(run.prototype, input_shape, importance, cfg.seed)
            network, ratio, _ = match_macs(prune, input_shape, target, 0.0, 0.95, increasing=False)
            module, metric = train(network, cfg, epochs, fine_tuning=True)
        add(network_row(name, module.net, metric, input_shape, watch.wall, work_dir, latency_repeats, pruning_ratio=ratio,
                        epochs=epochs))

    for contender in from_scratch:
        with Stopwatch() as watch:
            network, knob, _ = match_macs(contender.build, input_shape, target, contender.low, contender.high, increasing=True)
            scratch_epochs = cfg.synthesis.prototype_epochs + epochs
            module, metric = train(network, cfg, scratch_epochs)
        add(network_row(contender.name, module.net, metric, input_shape, watch.wall, work_dir, latency_repeats, width=knob,
                        epochs=scratch_epochs))

    with Stopwatch() as watch:
        network = copy.deepcopy(run.prototype)
        pruning, sparsity = unstructured_pruning(network, record.best.params)
        module, metric = train(network, cfg, epochs, [pruning], fine_tuning=True)
    add(network_row("modelpruning_l1", module.net, metric, input_shape, watch.wall, work_dir, latency_repeats,
                    params=count_nonzero(module.net), dense_params=count_params(module.net), weight_sparsity=sparsity,
                    epochs=epochs))

    result["machine_end"] = machine()
    result["table"] = format_table(result["rows"], target)
    return publish(output_json, result)

