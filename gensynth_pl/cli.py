"""Console scripts: ``gensynth-generate`` (networks for budgets, or distinct networks at the answer's budget, from a
learned generator; ``-m`` builds one member per job on any Hydra launcher), ``gensynth-gather`` (the members of such
a sweep as one family) and ``gensynth-export`` (ONNX + verification + latency report of a saved network). All are
Hydra apps.

They open files that may come from someone else: the recipes in them pass gensynth_pl.recipes' allow-list unless
the user trusts more (``trusted_targets=[...]``, ``trust_recipe=true``)."""
from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from gensynth_pl.console import silence_foreign_warnings
from gensynth_pl.export import export_onnx, load_network, read_spec
from gensynth_pl.latency import measure_latency, verify_onnx
from gensynth_pl.family import FamilySettings, build_family
from gensynth_pl.members import format_family, gather_family
from gensynth_pl.pipeline import log_family, recipe
from gensynth_pl.recipes import instantiate_trusted
from gensynth_pl.rundir import LATENCY_FILE, ONNX_FILE, RunDirectory, write_text_atomic
CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")  # the project's conf/ (source or editable install)


def run_config_path(run_dir: Path) -> Path:
    return run_dir / ".hydra" / "config.yaml"


def load_run_config(run_dir: Path, overrides: list[str]) -> DictConfig:
    """The composed config a train.py run saved (``.hydra/config.yaml``), with dotlist overrides."""
    path = run_config_path(run_dir)
    if not path.is_file():
        raise FileNotFoundError(f"run_dir: {path} not found; point run_dir to a directory written by train.py")
    return OmegaConf.merge(OmegaConf.load(path), OmegaConf.from_dotlist(list(overrides)))


def trust(cfg: DictConfig) -> dict:
    """The recipes the user vouches for beyond the allow-list (``trusted_targets``: a list, or one name)."""
    targets = cfg.trusted_targets or ()
    return {"trusted_targets": (targets,) if isinstance(targets, str) else tuple(targets), "trust_recipe": bool(cfg.trust_recipe)}


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="generate")
def generate(cfg: DictConfig) -> None:
    """``gensynth-generate``: networks from the generator a finished ``train.py`` run learned (``build_family``).

    Rebuilds the run's data and task from its ``.hydra/config.yaml`` (changed by ``run_overrides``), then builds one
    network per budget in ``targets``, or, without targets, ``num_networks`` distinct networks at the budget of the
    run's answer. Each is fine-tuned learning from φ until it meets every condition of the run (at most
    ``finetune_epochs``), judged by the run's referee, tested where the data has a test split and timed; the family
    table is printed. With ``-m`` and several ``targets`` values, one member per job (then ``gensynth-gather``).

    Settings (``conf/generate.yaml``): ``run_dir`` (required), ``num_networks`` (4), ``targets`` (fractions of φ's
    ``budget`` when at most 1, counts otherwise), ``budget`` (``macs`` or ``params``), ``finetune_epochs`` (6, a
    limit), ``early_reject_margin`` (null), ``tolerance`` (0.05), ``temperature`` (1.0), ``threads`` (null),
    ``run_overrides`` (e.g. ``[data.root=/data/cifar10]``), ``trusted_targets``, ``trust_recipe``.

    Writes ``<run_dir>/generated/<date>_<time>/``: one folder per network (``architecture.json``, ``weights.safetensors``,
    ``network.onnx``), ``family.json``, ``family.csv``, ``family.png``.

    Raises:
        FileNotFoundError: ``run_dir`` holds no ``.hydra/config.yaml`` or generator file.
        ValueError: the generator file was not written by a synthesis run of this version, or a setting is out of
            range.

    Example:
        ```bash
        gensynth-generate run_dir=outputs/<date>/<time> num_networks=8
        gensynth-generate run_dir=outputs/<date>/<time> targets=[0.5,0.33,0.25,0.167] finetune_epochs=4
        ```
    """
    silence_foreign_warnings()
    if cfg.threads:  # parallel jobs on one machine: one thread each, or they fight over the cores
        torch.set_num_threads(cfg.threads)
    run_dir = Path(cfg.run_dir)
    run_cfg = load_run_config(run_dir, cfg.run_overrides)
    out = Path(HydraConfig.get().runtime.output_dir)
    targets = tuple(cfg.targets) if cfg.targets else ()
    settings = FamilySettings(targets, cfg.budget, cfg.finetune_epochs, cfg.tolerance, cfg.temperature,
                              cfg.early_reject_margin)
    build = partial(instantiate_trusted, source=run_config_path(run_dir), **trust(cfg))
    result = build_family(
        RunDirectory(run_dir).saved_generator,
        build(run_cfg.data, "data"),
        build(run_cfg.task, "task"),
        settings,
        recipe(run_cfg, build),
        output_dir=out,
        variations=None if targets else cfg.num_networks,
        **trust(cfg),
    )
    print(format_family(result))
    print(f"files in {out}")


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="gather")
def gather(cfg: DictConfig) -> None:
    """The members of a ``gensynth-generate -m`` sweep (one job per target) as one family: table, plot, W&B table."""
    directory = Path(cfg.dir)
    family = gather_family(directory)
    print(format_family(family))
    if cfg.wandb:
        from lightning.pytorch.loggers import WandbLogger

        import wandb

        logger = WandbLogger(project=cfg.wandb_project, name=f"family {directory.name}", save_dir=str(directory))
        log_family(logger, family, directory)
        wandb.finish()
    print(f"files in {directory}")


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="export")
def export(cfg: DictConfig) -> None:
    """``gensynth-export``: ONNX export (if missing), verification against PyTorch, and a latency report.

    Loads the network with ``load_network``, exports ``network.onnx`` beside it when it is missing, checks that ONNX
    Runtime computes what PyTorch computes, and times both runtimes at each batch size (median over ``repeats``
    after ``warmup`` runs). Prints the table and writes ``latency.json`` beside the network.

    Settings (``conf/export.yaml``): ``network_dir`` (required: a run's ``best/`` or a family member's folder),
    ``batch_sizes`` ([1, 64]), ``repeats`` (20), ``warmup`` (3), ``threads`` (null: each runtime's default; 1 to
    match ``gate.latency.threads=1``).

    Raises:
        FileNotFoundError: ``network_dir`` holds no saved network.
        ValueError: the spec has no prototype recipe.
        AssertionError: ONNX Runtime's outputs differ from PyTorch's beyond the tolerance.

    Example:
        ```bash
        gensynth-export network_dir=outputs/<date>/<time>/best batch_sizes=[1,64]
        gensynth-export network_dir=outputs/<date>/<time>/best batch_sizes=[64] threads=1
        ```
    """
    network_dir = Path(cfg.network_dir)
    network = load_network(network_dir, **trust(cfg))
    input_shape = tuple(read_spec(network_dir)["input_shape"])
    onnx_path = network_dir / ONNX_FILE
    if not onnx_path.is_file():
        export_onnx(network, input_shape, onnx_path)
    difference = verify_onnx(network, onnx_path, input_shape)
    rows = measure_latency(network, onnx_path, input_shape, tuple(cfg.batch_sizes), cfg.repeats, cfg.warmup, cfg.threads)
    report = {"onnx": str(onnx_path), "max_abs_difference": difference, "latency": rows}
    write_text_atomic(network_dir / LATENCY_FILE, json.dumps(report, indent=2))
    print(f"ONNX {onnx_path}: matches PyTorch within {difference:.2e}")
    print(f"{'runtime':>12} | {'batch':>5} | {'median ms':>10} | {'images/s':>10}")
    for row in rows:
        print(f"{row['runtime']:>12} | {row['batch']:>5} | {row['median_ms']:>10.3f} | {row['images_per_s']:>10.1f}")
