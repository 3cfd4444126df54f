"""What every comparison shares: its settings composed from conf/, training, the synthesis run, the comparison.

A benchmark's settings are a ``train.py`` config (``experiment=<name>`` plus overrides), so the synthesis a
benchmark measures is exactly what ``python train.py`` runs, and every method trains with the run's own
datamodule, task, optimizer and per-phase learning-rate schedule.
"""
from __future__ import annotations

import argparse
import copy
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig, OmegaConf
from torch import nn

from benchmarks.baselines import (CHANNEL_PRUNING, Contender, channel_pruner, count_nonzero, match_macs, reinitialised,
                                  unstructured_pruning)
from benchmarks.tables import SEED_COLUMNS, comparison_columns, format_table, network_row, over_seeds, publish, write_json
from benchmarks.timing import EpochPrinter, OverheadTimer, Stopwatch, machine
from gensynth_pl import count_params
from gensynth_pl.callbacks import GenerativeSynthesis
from gensynth_pl.data.common import has_test_split
from gensynth_pl.export import load_network
from gensynth_pl.generator import Generator
from gensynth_pl.cli import CONF_DIR
from gensynth_pl.module import SynthesisModule
from gensynth_pl.pipeline import recipe, synthesize
from gensynth_pl.rundir import RunDirectory
from gensynth_pl.timing import listening

# a benchmark's own runs: no logger, checkpoints or live progress bar (they would only cost time)
QUIET = ["logger=none", "callbacks=none", "trainer.enable_progress_bar=false", "trainer.enable_checkpointing=false",
         "trainer.enable_model_summary=false", "+trainer.num_sanity_val_steps=0", "synthesis.family.targets=[]"]
PROTOTYPE_WEIGHTS = "prototype.pt"  # φ saved beside a comparison's JSON
ANSWER_FROM_SCRATCH = "gensynth_scratch_kd"  # our answer's architecture, freshly initialised, trained as the baselines


def parser(description: str, experiment: str | None, output: Path) -> argparse.ArgumentParser:
    """The options every comparison shares: its experiment, train.py overrides, output and latency repeats."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("overrides", nargs="*", help="train.py overrides, e.g. data.train_subset=5000 synthesis.cycles=3")
    p.add_argument("--experiment", default=experiment, help="the conf/experiment the settings start from ('null': none)")
    p.add_argument("--output", type=Path, default=output)
    p.add_argument("--latency-repeats", type=int, default=20)
    p.add_argument("--seeds", type=int, default=1,
                   help="repeat with N φs trained from seeds 0..N-1 (every method given the same φ within a seed); "
                        "report the mean and standard deviation over them")
    return p


def across_seeds(output: Path, seeds: int, measure: Callable[[list[str], Path], dict]) -> dict:
    """``measure(overrides, output_json)`` once (``seeds`` 1: as configured), or once per seed with ``seed=<s>`` and
    its own JSON beside ``output`` (``<name>_seed<s>.json``, each resumable on its own), then every method's mean
    and standard deviation over the seeds, written to ``output``."""
    if seeds < 1:
        raise ValueError(f"--seeds {seeds}: give at least 1")
    if seeds == 1:
        return measure([], output)
    runs = [measure([f"seed={seed}"], output.with_name(f"{output.stem}_seed{seed}{output.suffix}")) for seed in range(seeds)]
    summary = over_seeds(runs)
    result = {"seeds": list(range(seeds)), "runs": [str(output.with_name(f"{output.stem}_seed{s}{output.suffix}"))
                                                    for s in range(seeds)],
              "machine": machine(), "rows": summary, "table": format_table(summary, SEED_COLUMNS)}
    return publish(output, result)


def comparison_parser(description: str, experiment: str | None, output: Path) -> argparse.ArgumentParser:
    """``parser`` plus ``--resume`` for a benchmark that ends in ``compare``."""
    p = parser(description, experiment, output)
    p.add_argument("--resume", action="store_true",
                   help="measure only the rows the output JSON (each seed's) lacks, with the same settings")
    p.add_argument("--methods", nargs="+", metavar="METHOD",
                   help="compare only these (e.g. width_scaled_kd l1_pruning_kd); default: every method")
    return p


def settings(experiment: str | None, overrides: list[str], run_dir: Path) -> DictConfig:
    """The composed train.py config of a benchmark, with its synthesis run writing into ``run_dir``."""
    chosen = [*([f"experiment={experiment}"] if experiment not in (None, "null") else []), *QUIET,
              f"output_dir={run_dir}", *overrides]
    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        return compose("train", overrides=chosen)


@dataclass
class Trained:
    """A network after a benchmark's training: its module, validation metric and test-split metric."""

    module: SynthesisModule
    val: float
    test: float | None


def train(
    network: nn.Module,
    cfg: DictConfig,
    epochs: int,
    callbacks: list[Callback] | None = None,
    fine_tuning: bool = False,
    teacher: nn.Module | None = None,
    label: str = "training",
) -> Trained:
    """Fit ``network`` with the run's datamodule, task, optimizer and per-phase schedule (at the synthesis's
    fine-tuning rate when ``fine_tuning`` a pruned φ), learning from ``teacher`` with the synthesis's distillation
    settings when given; validate it after its last epoch and evaluate it on the data's test split (if any)."""
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    training = recipe(cfg)
    module = training.module(network, instantiate(cfg.task), fine_tuning)
    datamodule = instantiate(cfg.data)
    # a baseline's trainer: the run's trainer settings, without Lightning's banners (EpochPrinter reports progress);
    # nothing here is decided per epoch: validate once, at the end
    trainer = instantiate(cfg.trainer, _target_="gensynth_pl.console.QuietTrainer", max_epochs=epochs,
                          callbacks=[*(callbacks or []), EpochPrinter(label)], logger=False, check_val_every_n_epoch=epochs)
    with training.distilling(teacher, module):
        trainer.fit(module, datamodule=datamodule)
    return Trained(module, float(trainer.callback_metrics[cfg.gate.monitor]), test_metric(trainer, module, datamodule, cfg))


def test_metric(trainer: L.Trainer, module: SynthesisModule, datamodule: L.LightningDataModule, cfg: DictConfig) -> float | None:
    """The gate's metric on the test split (``val/acc`` -> ``test/acc``), or None without a test split."""
    if not has_test_split(datamodule):
        return None
    (metrics,) = trainer.test(module, datamodule=datamodule, verbose=False)
    return float(metrics["test/" + cfg.gate.monitor.split("/", 1)[-1]])


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
        overhead=timer.per_phase(),
    )


def compare(cfg: DictConfig, output_json: Path, from_scratch: list[Contender], latency_repeats: int,
            prototype_epochs: int | None = None, resume: bool = False, methods: list[str] | None = None) -> dict:
    """Our best generated network against channel pruning (L1 as Torch-Pruning users run it, and random), networks
    trained from scratch at a matched width, and unstructured pruning, all at the generated network's MACs, from
    the same trained φ and with the same epochs after φ (from-scratch networks: φ's epochs too); L1 pruning and the
    from-scratch networks also with the same distillation from φ, so the table shows what the search adds. Our
    answer's own architecture is also trained from scratch with distillation (``gensynth_scratch_kd``): it separates
    what the architecture is worth from what its inherited, fine-tuned weights reach.

    The JSON is rewritten after every row and φ's weights are saved beside it, so a long run that is interrupted
    keeps what it measured: ``resume`` (with the same settings) measures only the rows it lacks. A second
    benchmark can also start from those weights (``prototype_weights``, with ``prototype_epochs`` saying how long
    that φ trained: what the from-scratch networks get too). ``methods``: measure only these (φ and ours always).
    """
    unknown = set(methods or []) - set(comparison_methods(from_scratch))
    if unknown:
        raise ValueError(f"--methods {sorted(unknown)}: no such method; choose from {comparison_methods(from_scratch)}")
    prototype_epochs = cfg.synthesis.prototype_epochs if prototype_epochs is None else prototype_epochs
    if resume and output_json.is_file():
        rows = _resumed(cfg, output_json, latency_repeats)
    else:
        if resume:
            print(f"[benchmark] --resume: {output_json} does not exist yet; measuring it from the start", flush=True)
        rows = _synthesis_rows(cfg, output_json, latency_repeats, prototype_epochs)
    result, teacher, done = rows.result, rows.teacher, {row["method"] for row in rows.result["rows"]}
    if methods is not None:  # the ones not asked for count as done
        done |= set(comparison_methods(from_scratch)) - set(methods)
    ours = next(row for row in result["rows"] if row["method"] == "gensynth")
    target, epochs = result["target_macs"], ours["epochs"]  # every fine-tuning method gets our epochs after φ too

    for method, name, distilled in _pruning_methods():
        if method in done:
            continue
        with Stopwatch() as watch:
            prune = channel_pruner(teacher, rows.input_shape, CHANNEL_PRUNING[name], cfg.seed)
            network, ratio, _ = match_macs(prune, rows.input_shape, target, 0.0, 0.95, increasing=False)
            trained = train(network, cfg, epochs, fine_tuning=True, teacher=teacher if distilled else None, label=method)
        rows.add(method, trained.module.net, trained.val, trained.test, watch.wall, pruning_ratio=ratio, epochs=epochs)

    scratch_epochs = prototype_epochs + epochs
    for method, contender, distilled in _scratch_methods(from_scratch):
        if method in done:
            continue
        with Stopwatch() as watch:
            network, knob, _ = match_macs(contender.build, rows.input_shape, target, contender.low, contender.high, increasing=True)
            trained = train(network, cfg, scratch_epochs, teacher=teacher if distilled else None, label=method)
        rows.add(method, trained.module.net, trained.val, trained.test, watch.wall, width=knob, epochs=scratch_epochs)

    if ANSWER_FROM_SCRATCH not in done:  # the search's architecture, trained as the from-scratch networks are
        with Stopwatch() as watch:
            answer = load_network(RunDirectory(cfg.output_dir).best, prototype=teacher)
            trained = train(reinitialised(answer, cfg.seed), cfg, scratch_epochs, teacher=teacher, label=ANSWER_FROM_SCRATCH)
        rows.add(ANSWER_FROM_SCRATCH, trained.module.net, trained.val, trained.test, watch.wall, epochs=scratch_epochs)

    if "modelpruning_l1" not in done:
        with Stopwatch() as watch:
            network = copy.deepcopy(teacher)
            pruning, sparsity = unstructured_pruning(network, ours["params"])
            trained = train(network, cfg, epochs, [pruning], fine_tuning=True, label="modelpruning_l1")
        rows.add("modelpruning_l1", trained.module.net, trained.val, trained.test, watch.wall,
                 params=count_nonzero(trained.module.net), dense_params=count_params(trained.module.net),
                 weight_sparsity=sparsity, epochs=epochs)

    result["machine_end"] = machine()
    result["table"] = format_table(result["rows"], comparison_columns(target))
    return publish(output_json, result)


@dataclass
class ComparisonRows:
    """A comparison's JSON as it grows, and what each new row needs: φ (the teacher) and the input shape."""

    output_json: Path
    result: dict
    teacher: nn.Module
    input_shape: tuple[int, ...]
    latency_repeats: int

    def add(self, method: str, network: nn.Module, val: float, test: float | None, seconds: float, **extra) -> None:
        """Measure ``network`` (size, latency), append its row and rewrite the JSON."""
        work_dir = self.output_json.with_suffix("")
        row = network_row(method, network, val, self.input_shape, seconds, work_dir, self.latency_repeats, test_acc=test, **extra)
        self.result["rows"].append(row)
        write_json(self.output_json, self.result)
        print(f"[benchmark] {method}: {row['macs']:,} MACs, val acc {val:.4f}, test acc {test}, {row['wall_s']} s", flush=True)


def _synthesis_rows(cfg: DictConfig, output_json: Path, latency_repeats: int, prototype_epochs: int) -> ComparisonRows:
    """Run the synthesis (training φ unless it is given) and start the comparison with φ's row and ours."""
    run = run_synthesis(cfg)
    record = run.synthesis.record
    result = {"config": OmegaConf.to_container(cfg, resolve=True), "machine_start": machine(), "rows": [],
              "synthesis": record.to_dict(), "overhead": run.overhead, "target_macs": record.best.macs,
              "synthesis_cpu_s": run.cpu_seconds}
    rows = ComparisonRows(output_json, result, run.prototype, run.synthesis.loop.input_shape, latency_repeats)

    def test_of(report) -> float | None:
        return (report.test or {}).get(cfg.gate.monitor.split("/", 1)[-1])

    output_json.with_suffix("").mkdir(parents=True, exist_ok=True)
    torch.save(run.prototype.state_dict(), output_json.with_suffix("") / PROTOTYPE_WEIGHTS)
    rows.add("prototype", run.prototype, record.prototype.metric, test_of(record.prototype), run.prototype_seconds,
             epochs=prototype_epochs, weights=cfg.get("prototype_weights"))
    rows.add("gensynth", run.synthesis.loop.best.network, record.best.metric, test_of(record.best), run.synthesis_seconds,
             epochs=run.synthesis.schedule.epochs_after_prototype, best_cycle=record.best_cycle,
             gate_passed=record.best.gate_passed, gate_bound=record.gate["bound"])
    return rows


def _pruning_methods() -> list[tuple[str, str, bool]]:
    """(method, importance in ``CHANNEL_PRUNING``, distilled) of each channel-pruning comparison: L1 also distilled."""
    return [(f"{name}_kd" if distilled else name, name, distilled) for name in CHANNEL_PRUNING
            for distilled in ((False, True) if name == "l1_pruning" else (False,))]


def _scratch_methods(from_scratch: list[Contender]) -> list[tuple[str, Contender, bool]]:
    """(method, contender, distilled) of each from-scratch comparison: every contender with and without distillation."""
    return [(f"{c.name}_kd" if distilled else c.name, c, distilled) for c in from_scratch for distilled in (False, True)]


def comparison_methods(from_scratch: list[Contender]) -> list[str]:
    """The methods ``compare`` measures besides φ and ours, in its order."""
    return [method for method, _, _ in (*_pruning_methods(), *_scratch_methods(from_scratch))] + [ANSWER_FROM_SCRATCH,
                                                                                                  "modelpruning_l1"]


def _resumed(cfg: DictConfig, output_json: Path, latency_repeats: int) -> ComparisonRows:
    """An interrupted comparison's rows, φ from the weights it saved and the input shape from its run's generator."""
    result = json.loads(output_json.read_text())
    if _measured_with(result["config"]) != _measured_with(OmegaConf.to_container(cfg, resolve=True)):
        raise ValueError(f"--resume: {output_json} was measured with other settings; repeat its command line exactly")
    if not any(row["method"] == "gensynth" for row in result["rows"]):
        raise ValueError(f"--resume: {output_json} has no synthesis row yet; run the benchmark without --resume")
    teacher = instantiate(cfg.model)
    teacher.load_state_dict(torch.load(output_json.with_suffix("") / PROTOTYPE_WEIGHTS, map_location="cpu", weights_only=True))
    generator, _ = Generator.load(RunDirectory(cfg.output_dir).generator, teacher)
    return ComparisonRows(output_json, result, teacher, generator.graph.input_shape, latency_repeats)


def _measured_with(config: dict) -> dict:
    """A comparison's settings, less where it writes (its folder may have moved since)."""
    return {key: value for key, value in config.items() if key != "output_dir"}
