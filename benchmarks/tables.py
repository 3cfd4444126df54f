"""Rows, tables and the JSON every benchmark ends with."""
from __future__ import annotations

import copy
import json
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from torch import nn

from gensynth_pl import count_macs, count_params, export_onnx
from gensynth_pl.latency import measure_latency
from gensynth_pl.metrics import information_density, netscore
from gensynth_pl.rundir import write_text_atomic


def network_row(
    method: str,
    network: nn.Module,
    metric: float,
    input_shape: tuple[int, ...],
    seconds: float,
    work_dir: Path,
    latency_repeats: int,
    params: int | None = None,
    **extra,
) -> dict:
    """One table row: size, cost, accuracy, NetScore, information density, CPU latency, wall time."""
    network = copy.deepcopy(network).cpu().eval()  # the caller's network keeps its device and mode
    params = count_params(network) if params is None else params
    macs = count_macs(network, input_shape)
    onnx_path = export_onnx(network, input_shape, work_dir / f"{method}.onnx")
    latency = measure_latency(network, onnx_path, input_shape, (1, 64), repeats=latency_repeats)
    return {
        "method": method,
        "params": params,
        "macs": macs,
        "val_acc": metric,
        "netscore": netscore(metric, params, macs),
        "information_density": information_density(metric, params),
        "latency_ms": {f"{r['runtime']}_b{r['batch']}": round(r["median_ms"], 3) for r in latency},
        "wall_s": round(seconds, 1),
        **extra,
    }


@dataclass(frozen=True)
class Column:
    """One column of a benchmark's text table: its header, its cell's value in a row, and the value's format."""

    header: str
    value: Callable[[dict], object]
    fmt: str = "{}"

    def cell(self, row: dict) -> str:
        value = self.value(row)
        return "" if value is None else self.fmt.format(value)


def key(name: str, fmt: str = "{}", header: str | None = None) -> Column:
    """A column showing ``row[name]`` (blank where the row has none)."""
    return Column(header or name, lambda row: row.get(name), fmt)


def format_table(rows: list[dict], columns: list[Column]) -> str:
    """A fixed-width text table, right-aligned, with a rule under the headers (also pasted into the README)."""
    cells = [[column.cell(row) for column in columns] for row in rows]
    widths = [max([len(column.header), *(len(line[i]) for line in cells)]) for i, column in enumerate(columns)]
    lines = [" | ".join(c.header.rjust(w) for c, w in zip(columns, widths)), "-|-".join("-" * w for w in widths)]
    lines += [" | ".join(cell.rjust(w) for cell, w in zip(line, widths)) for line in cells]
    return "\n".join(lines)


def comparison_columns(target_macs: int) -> list[Column]:
    """The columns of a comparison at matched MACs (synthesis_quality, gpu_scale)."""
    def latency(setting: str, header: str) -> Column:
        return Column(header, lambda row: row["latency_ms"][setting], "{:.2f}")

    return [key("method"), key("params", "{:,}"), key("macs", "{:,}", "MACs"),
            Column("MACs/ours", lambda row: row["macs"] / target_macs, "{:.3f}"), key("val_acc", "{:.4f}", "val acc"),
            key("test_acc", "{:.4f}", "test acc"), key("epochs"), key("netscore", "{:.2f}", "NetScore"),
            key("information_density", "{:.2f}", "acc%/Mp"), latency("pytorch_b1", "eager b1 ms"),
            latency("pytorch_b64", "eager b64 ms"), latency("onnxruntime_b1", "ORT b1 ms"),
            latency("onnxruntime_b64", "ORT b64 ms"), key("wall_s", "{:.1f}", "wall s")]


def write_json(path: Path, result: dict) -> None:
    write_text_atomic(path, json.dumps(result, indent=2, default=_jsonable))


def publish(path: Path, result: dict) -> dict:
    """A benchmark's last step: its JSON (with the table) written, the table and where it went printed."""
    write_json(path, result)
    print(result["table"])
    print(f"written to {path}")
    return result


def _jsonable(value):
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "__dataclass_fields__"):
        return asdict(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


SEED_COLUMNS = [
    key("method"), key("seeds"),
    Column("MACs (x fewer)", lambda r: f"{r['macs_mean']:,.0f} ({r['reduction_mean']:.2f}x ± {r['reduction_std']:.2f})"),
    Column("val acc", lambda r: f"{r['val_acc_mean']:.4f} ± {r['val_acc_std']:.4f}"),
    Column("test acc", lambda r: None if r["test_acc_mean"] is None else f"{r['test_acc_mean']:.4f} ± {r['test_acc_std']:.4f}"),
]


def over_seeds(results: list[dict]) -> list[dict]:
    """Every method's mean and standard deviation (n - 1) over runs with different seeds (each its own φ): MACs, the
    reduction against that run's φ, validation and test accuracy."""
    def spread(values: list[float]) -> tuple[float | None, float | None]:
        if not values or any(v is None for v in values):
            return None, None
        return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0

    methods = [row["method"] for row in results[0]["rows"]]
    summary = []
    for method in methods:
        found = [(result, next(r for r in result["rows"] if r["method"] == method)) for result in results
                 if any(r["method"] == method for r in result["rows"])]
        prototype = [next(r for r in result["rows"] if r["method"] == "prototype")["macs"] for result, _ in found]
        row = {"method": method, "seeds": len(found)}
        for name, values in (("macs", [r["macs"] for _, r in found]),
                             ("reduction", [p / r["macs"] for p, (_, r) in zip(prototype, found)]),
                             ("val_acc", [r["val_acc"] for _, r in found]), ("test_acc", [r.get("test_acc") for _, r in found])):
            row[f"{name}_mean"], row[f"{name}_std"] = spread(values)
        summary.append(row)
    return summary
