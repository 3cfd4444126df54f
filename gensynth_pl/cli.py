"""Console scripts: ``gensynth-generate`` (networks for budgets, or distinct networks at the answer's budget,
from a learned generator) and
``gensynth-export`` (ONNX + verification + latency report of a saved network). Both are Hydra apps."""
from __future__ import annotations

import json
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from gensynth_pl.export import export_onnx, load_network
from gensynth_pl.latency import measure_latency, verify_onnx
from gensynth_pl.family import FamilySettings, build_family, format_family
from gensynth_pl.pipeline import recipe
from gensynth_pl.rundir import LATENCY_FILE, ONNX_FILE, SPEC_FILE, RunDirectory, write_text_atomic
CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")  # the project's conf/ (source or editable install)


def load_run_config(run_dir: Path, overrides: list[str]) -> DictConfig:
    """The composed config a train.py run saved (``.hydra/config.yaml``), with dotlist overrides."""
    path = run_dir / ".hydra" / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"run_dir: {path} not found; point run_dir to a directory written by train.py")
    return OmegaConf.merge(OmegaConf.load(path), OmegaConf.from_dotlist(list(overrides)))


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="generate")
def generate(cfg: DictConfig) -> None:
    """``gensynth-generate``: networks from the generator a finished ``train.py`` run learned (``build_family``).

    Rebuilds the run's data and task from its ``.hydra/config.yaml`` (changed by ``run_overrides``), then builds one
    network per budget in ``targets``, or, without targets, ``num_networks`` distinct networks at the budget of the
    run's answer. Each is fine-tuned ``finetune_epochs`` learning from φ, gated against the run's gate, tested where
    the data has a test split and timed; the family table is printed.

    Settings (``conf/generate.yaml``): ``run_dir`` (required), ``num_networks`` (4), ``targets`` (fractions of φ's
    ``budget`` when at most 1, counts otherwise), ``budget`` (``macs`` or ``params``), ``finetune_epochs`` (2),
    ``tolerance`` (0.05), ``temperature`` (1.0), ``run_overrides`` (e.g. ``[data.root=/data/cifar10]``).

    Writes ``<run_dir>/generated/<date>_<time>/``: one folder per network (``architecture.json``, ``weights.pt``,
    ``network.onnx``), ``family.json``, ``family.csv``, ``family.png``.

    Raises:
        FileNotFoundError: ``run_dir`` holds no ``.hydra/config.yaml`` or ``generator.pt``.
        ValueError: the generator file was not written by a synthesis run of this version, or a setting is out of
            range.

    Example:
        ```bash
        gensynth-generate run_dir=outputs/<date>/<time> num_networks=8
        gensynth-generate run_dir=outputs/<date>/<time> targets=[0.5,0.33,0.25,0.167] finetune_epochs=4
        ```
    """
    run_dir = Path(cfg.run_dir)
    run_cfg = load_run_config(run_dir, cfg.run_overrides)
    out = Path(HydraConfig.get().runtime.output_dir)
    targets = tuple(cfg.targets) if cfg.targets else ()
    settings = FamilySettings(targets, cfg.budget, cfg.finetune_epochs, cfg.tolerance, cfg.temperature)
    result = build_family(
        RunDirectory(run_dir).generator,
        instantiate(run_cfg.data),
        instantiate(run_cfg.task),
        settings,
        recipe(run_cfg),
        output_dir=out,
        variations=None if targets else cfg.num_networks,
    )
    print(format_family(result))
    print(f"files in {out}")


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
    network = load_network(network_dir)
    input_shape = tuple(json.loads((network_dir / SPEC_FILE).read_text())["input_shape"])
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
