"""Measured speed-up of generated networks over their prototype against their MAC reduction.

Reads a synthesis run directory (``generator.safetensors`` holds the prototype and every accepted network, ``best/``
marks the best one), exports each network to ONNX and measures PyTorch eager and ONNX Runtime latency at
batch 1 and 64 on CPU. Latencies are the median over ``--rounds`` round-robin passes over all networks, so
that a change in machine load hits every network alike.

    python -m benchmarks.inference_speed outputs/benchmarks/synthesis_quality/gensynth_run
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from torch import nn

from benchmarks.tables import Column, format_table, key, publish
from benchmarks.timing import machine
from gensynth_pl import count_macs, count_params, export_onnx
from gensynth_pl.generator import Generator
from gensynth_pl.graph import Architecture
from gensynth_pl.latency import measure_latency
from gensynth_pl.rundir import SPEC_FILE, RunDirectory

SETTINGS = ("pytorch_b1", "onnxruntime_b1", "pytorch_b64", "onnxruntime_b64")


def lineage_networks(run_dir: Path) -> tuple[list[tuple[str, nn.Module]], tuple[int, ...]]:
    """The prototype and every accepted network of a run (a polished one once), the best one named ``best``.

    An accepted polish re-enters the lineage with the architecture of its cycle's network; it is measured
    once, under the name ``polished``."""
    files = RunDirectory(run_dir)
    generator, _ = Generator.load(files.saved_generator)
    best = Architecture.from_dict(json.loads((files.best / SPEC_FILE).read_text())["architecture"])
    archs: list[Architecture] = []
    networks: list[tuple[str, nn.Module]] = []
    for arch, network in generator.lineage:
        if arch in archs:
            at = archs.index(arch)
            networks[at] = ("polished (best)" if arch == best else "polished", network.eval())
            continue
        name = "prototype" if not archs else f"accepted_{len(archs)}"
        archs.append(arch)
        networks.append((f"{name} (best)" if arch == best else name, network.eval()))
    return networks, generator.input_shape


def measure(
    networks: list[tuple[str, nn.Module]], input_shape: tuple[int, ...], repeats: int, rounds: int,
    threads: int | None = None,
) -> list[dict]:
    """One row per network: MACs, latency per setting, and speed-up and MAC reduction against the first network."""
    with tempfile.TemporaryDirectory() as tmp:
        paths = [export_onnx(network, input_shape, Path(tmp) / f"{i}.onnx") for i, (_, network) in enumerate(networks)]
        samples: list[dict[str, list[float]]] = [{s: [] for s in SETTINGS} for _ in networks]
        for _ in range(rounds):
            for (_, network), path, sample in zip(networks, paths, samples):
                for r in measure_latency(network, path, input_shape, (1, 64), repeats=repeats, threads=threads):
                    sample[f"{r['runtime']}_b{r['batch']}"].append(r["median_ms"])
    rows = []
    for (name, network), sample in zip(networks, samples):
        latency = {s: statistics.median(v) for s, v in sample.items()}
        rows.append({"network": name, "params": count_params(network), "macs": count_macs(network, input_shape),
                     "latency_ms": latency})
    reference = rows[0]
    for row in rows:
        row["mac_reduction"] = reference["macs"] / row["macs"]
        row["speedup"] = {s: reference["latency_ms"][s] / row["latency_ms"][s] for s in SETTINGS}
        row["speedup_per_mac_reduction"] = {s: row["speedup"][s] / row["mac_reduction"] for s in SETTINGS}
    return rows


def format_speed(rows: list[dict]) -> str:
    """Each network's latency per setting with its speed-up over φ, and speed-up per MAC reduction at batch 64."""
    def setting(name: str) -> Column:
        return Column(f"{name} ms (x)", lambda r: f"{r['latency_ms'][name]:.2f} ({r['speedup'][name]:.2f}x)")

    def efficiency(r: dict) -> str:
        e = r["speedup_per_mac_reduction"]
        return f"{100 * e['pytorch_b64']:.0f}% / {100 * e['onnxruntime_b64']:.0f}%"

    columns = [key("network"), key("macs", "{:,}", "MACs"), key("mac_reduction", "{:.2f}x", "MAC red."),
               *(setting(name) for name in SETTINGS), Column("b64 eff. eager/ORT", efficiency)]
    return format_table(rows, columns)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir", type=Path, help="a synthesis run directory (generator.safetensors, best/)")
    p.add_argument("--repeats", type=int, default=20, help="timed runs per measurement (median)")
    p.add_argument("--rounds", type=int, default=3, help="round-robin passes over all networks (median)")
    p.add_argument("--threads", type=int, help="intra-op threads, e.g. 1 as a latency budget measures (default: each runtime's)")
    p.add_argument("--output", type=Path, default=Path("outputs/benchmarks/inference_speed.json"))
    args = p.parse_args(argv)
    networks, input_shape = lineage_networks(args.run_dir)
    rows = measure(networks, input_shape, args.repeats, args.rounds, args.threads)
    result = {"run_dir": str(args.run_dir), "machine": machine(), "repeats": args.repeats, "rounds": args.rounds, "threads": args.threads,
              "rows": rows, "table": format_speed(rows)}
    return publish(args.output, result)


if __name__ == "__main__":
    main()
