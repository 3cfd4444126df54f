"""Ablations: what each part of the synthesis adds. Every variant starts from the same trained φ (trained once,
then given to each run as ``prototype_weights`` with ``synthesis.prototype_epochs=0``) and trains the same
number of epochs after φ; each switches one part off, or swaps the inquisitor's importance rule.

    python -m benchmarks.ablation                                            # experiment=benchmark_cifar10_cpu
    python -m benchmarks.ablation data.train_subset=5000 synthesis.prototype_epochs=10 --variants full no_distillation
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from benchmarks.common import parser, settings, train
from benchmarks.tables import Column, format_table, key, publish, write_json
from benchmarks.timing import Stopwatch, machine
from gensynth_pl.pipeline import synthesize
from gensynth_pl.record import SynthesisRecord

OUTPUT = Path("outputs/benchmarks/ablation.json")


def variants(cfg: DictConfig) -> dict[str, list[str]]:
    """Each variant's overrides. Without the polish its epochs go to further cycles, so the budget stays."""
    s = cfg.synthesis
    extra_cycles = math.ceil(s.polish_epochs / s.epochs_per_cycle)
    return {
        "full": [],
        "no_distillation": ["synthesis.distill_weight=0"],
        "no_polish": [f"synthesis.cycles={s.cycles + extra_cycles}", "synthesis.polish_epochs=0"],
        "no_early_rejection": ["synthesis.early_reject_margin=null"],
        "no_allowance": ["synthesis.recovery_allowance=0"],
        "importance_taylor": ["synthesis.inquisitor.importance=taylor"],
        "importance_magnitude": ["synthesis.inquisitor.importance=magnitude"],
    }


def row(name: str, record: SynthesisRecord, seconds: float) -> dict:
    best, proto = record.best, record.prototype
    return {
        "variant": name,
        "macs": best.macs,
        "mac_reduction": proto.macs / best.macs,
        "params": best.params,
        "val_acc": best.metric,
        "gate_passed": best.gate_passed,
        "test_acc": (best.test or {}).get("acc"),
        "netscore": best.netscore,
        "cycles": len(record.cycles),
        "accepted": sum(c.accepted for c in record.cycles),
        "early_rejected": sum(c.early_rejected for c in record.cycles),
        "polished": record.polish is not None and record.polish.accepted,
        "wall_s": round(seconds, 1),
    }


ABLATION_COLUMNS = [
    key("variant"), key("macs", "{:,}", "MACs"), key("mac_reduction", "{:.2f}", "x fewer"), key("params", "{:,}"),
    key("val_acc", "{:.4f}", "val acc"), Column("gate", lambda r: None if r["gate_passed"] is None else "yes" if r["gate_passed"] else "no"),
    key("test_acc", "{:.4f}", "test acc"), key("netscore", "{:.2f}", "NetScore"),
    Column("cycles (acc/early)", lambda r: None if r["cycles"] is None else f"{r['cycles']} ({r['accepted']}/{r['early_rejected']})"),
    Column("polished", lambda r: None if r["polished"] is None else "yes" if r["polished"] else "no"), key("wall_s", "{}", "wall s"),
]


def format_rows(rows: list[dict], prototype: dict) -> str:
    """The variants under φ's own row."""
    first = {"variant": "prototype", "macs": prototype["macs"], "mac_reduction": 1.0, "params": prototype["params"],
             "val_acc": prototype["metric"], "gate_passed": None, "test_acc": (prototype.get("test") or {}).get("acc"),
             "netscore": prototype["netscore"], "cycles": None, "polished": None}
    return format_table([first, *rows], ABLATION_COLUMNS)


def main(argv: list[str] | None = None) -> dict:
    p = parser(__doc__.splitlines()[0], "benchmark_cifar10_cpu", OUTPUT)
    p.add_argument("--variants", nargs="+", help="which variants to run (default: all)")
    p.add_argument("--prototype-weights", type=Path, help="a φ trained with these settings already (skips its training)")
    p.add_argument("--extra", nargs="*", default=[], metavar="NAME=OVERRIDE,...",
                   help="more variants, e.g. step04=synthesis.inquisitor.step=0.4")
    args = p.parse_args(argv)
    work = args.output.with_suffix("")
    cfg = settings(args.experiment, args.overrides, work / "prototype")
    chosen = variants(cfg)
    for spec in args.extra:
        name, overrides = spec.split("=", 1)
        chosen[name] = overrides.split(",")
    unknown = set(args.variants or []) - set(chosen)
    if unknown:
        raise SystemExit(f"unknown variants {sorted(unknown)}; choose from {sorted(chosen)}")
    result = {"config": OmegaConf.to_container(cfg, resolve=True), "machine_start": machine(), "rows": []}
    weights = args.prototype_weights or work / "prototype.pt"
    if args.prototype_weights is None:
        with Stopwatch() as watch:
            torch.manual_seed(cfg.seed)
            trained = train(instantiate(cfg.model), cfg, cfg.synthesis.prototype_epochs, label="prototype")
        weights.parent.mkdir(parents=True, exist_ok=True)
        torch.save(trained.module.net.state_dict(), weights)
        result["prototype_training"] = {"val_acc": trained.val, "test_acc": trained.test,
                                        "epochs": cfg.synthesis.prototype_epochs, "wall_s": round(watch.wall, 1)}
    for name in args.variants or chosen:
        overrides = [*args.overrides, *chosen[name], f"prototype_weights={weights}", "synthesis.prototype_epochs=0"]
        variant_cfg = settings(args.experiment, overrides, work / name)
        with Stopwatch() as watch:
            record, _ = synthesize(variant_cfg)
        result["prototype"] = record.prototype.to_dict()
        result["rows"].append({**row(name, record, watch.wall), "overrides": chosen[name]})
        write_json(args.output, result)
        print(f"[ablation] {name}: {result['rows'][-1]}", flush=True)
    result["machine_end"] = machine()
    result["table"] = format_rows(result["rows"], result["prototype"])
    return publish(args.output, result)


if __name__ == "__main__":
    main()
