"""Rows, tables and the JSON every benchmark ends with."""
from __future__ import annotations

import copy
import json
from dataclasses import asdict
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


TABLE_COLUMNS = (
    ("method", "{:<16}"),
    ("params", "{:>9,}"),
    ("macs", "{:>12,}"),
    ("mac_ratio", "{:>9}"),
    ("val_acc", "{:>7.4f}"),
    ("test_acc", "{:>8.4f}"),
    ("epochs", "{:>6}"),
    ("netscore", "{:>8.2f}"),
    ("information_density", "{:>8.2f}"),
    ("pytorch_b1", "{:>10.2f}"),
    ("pytorch_b64", "{:>11.2f}"),
    ("onnxruntime_b1", "{:>9.2f}"),
    ("onnxruntime_b64", "{:>10.2f}"),
    ("wall_s", "{:>8.1f}"),
)
HEADERS = ("method", "params", "MACs", "MACs/ours", "val acc", "test acc", "epochs", "NetScore", "acc%/Mp", "eager b1 ms", "eager b64 ms",
           "ORT b1 ms", "ORT b64 ms", "wall s")


def format_table(rows: list[dict], target_macs: int) -> str:
    """A fixed-width text table (also pasted into the README)."""
    widths = [len(fmt.format(_cell(rows[0], key, target_macs))) if rows else 10 for key, fmt in TABLE_COLUMNS]
    widths = [max(w, len(h)) for w, h in zip(widths, HEADERS)]
    lines = [" | ".join(h.rjust(w) for h, w in zip(HEADERS, widths))]
    lines.append("-|-".join("-" * w for w in widths))
    for row in rows:
        cells = [fmt.format(_cell(row, key, target_macs)).rjust(w) for (key, fmt), w in zip(TABLE_COLUMNS, widths)]
        lines.append(" | ".join(cells))
    return "\n".join(lines)


def _cell(row: dict, key: str, target_macs: int):
    if key == "mac_ratio":
        return f"{row['macs'] / target_macs:.3f}"
    if key == "test_acc" and row.get(key) is None:
        return float("nan")
    if key in row:
        return row[key]
    return row["latency_ms"][key]


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
