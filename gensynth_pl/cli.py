"""Console scripts: ``gensynth-generate`` (many networks from a learned generator) and
``gensynth-export`` (ONNX + verification + latency report of a saved network). Both are Hydra apps."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from gensynth_pl.export import export_onnx, load_network
from gensynth_pl.latency import measure_latency, verify_onnx
from gensynth_pl.pipeline import optimization
from gensynth_pl.rundir import LATENCY_FILE, ONNX_FILE, SPEC_FILE, RunDirectory, write_text_atomic
from gensynth_pl.sampling import sample_networks

SAMPLE_COLUMNS = ("seed", "params", "macs", "metric", "netscore", "gate_passed")
CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")  # the project's conf/ (source or editable install)


def load_run_config(run_dir: Path, overrides: list[str]) -> DictConfig:
    """The composed config a train.py run saved (``.hydra/config.yaml``), with dotlist overrides."""
    path = run_dir / ".hydra" / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"run_dir: {path} not found; point run_dir to a directory written by train.py")
    return OmegaConf.merge(OmegaConf.load(path), OmegaConf.from_dotlist(list(overrides)))


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="generate")
def generate(cfg: DictConfig) -> None:
    run_dir = Path(cfg.run_dir)
    run_cfg = load_run_config(run_dir, cfg.run_overrides)
    out = Path(HydraConfig.get().runtime.output_dir)
    seeds = list(cfg.seeds) if cfg.seeds is not None else list(range(cfg.num_networks))
    rows = sample_networks(
        RunDirectory(run_dir).generator,
        instantiate(run_cfg.data),
        instantiate(run_cfg.task),
        seeds,
        finetune_epochs=cfg.finetune_epochs,
        **optimization(run_cfg),
        finetune_lr_scale=run_cfg.synthesis.get("finetune_lr_scale", 1.0),
        temperature=cfg.temperature,
        output_dir=out,
    )
    write_text_atomic(out / "samples.json", json.dumps(rows, indent=2))
    with open(out / "samples.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=SAMPLE_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    print(" | ".join(f"{c:>11}" for c in SAMPLE_COLUMNS))
    for row in rows:
        print(" | ".join(f"{row[c]:>11.4f}" if isinstance(row[c], float) else f"{row[c]!s:>11}" for c in SAMPLE_COLUMNS))
    print(f"{sum(r['gate_passed'] for r in rows)}/{len(rows)} networks pass the gate; files in {out}")


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="export")
def export(cfg: DictConfig) -> None:
    network_dir = Path(cfg.network_dir)
    network = load_network(network_dir)
    input_shape = tuple(json.loads((network_dir / SPEC_FILE).read_text())["input_shape"])
    onnx_path = network_dir / ONNX_FILE
    if not onnx_path.is_file():
        export_onnx(network, input_shape, onnx_path)
    difference = verify_onnx(network, onnx_path, input_shape)
    rows = measure_latency(network, onnx_path, input_shape, tuple(cfg.batch_sizes), cfg.repeats, cfg.warmup)
    report = {"onnx": str(onnx_path), "max_abs_difference": difference, "latency": rows}
    write_text_atomic(network_dir / LATENCY_FILE, json.dumps(report, indent=2))
    print(f"ONNX {onnx_path}: matches PyTorch within {difference:.2e}")
    print(f"{'runtime':>12} | {'batch':>5} | {'median ms':>10} | {'images/s':>10}")
    for row in rows:
        print(f"{row['runtime']:>12} | {row['batch']:>5} | {row['median_ms']:>10.3f} | {row['images_per_s']:>10.1f}")
