"""Where the MACs are: per channel group and per removable block, its share of φ's MACs, whether the search can
shrink it, and how much it did in the answer. It tells why a search stalls (the MACs sit in layers that cannot
shrink, or in groups the search left wide) before anyone tunes a setting.

A convolution's or linear layer's MACs are counted with the group of the channels it produces (its output
channels); layers that produce no prunable group (the output layers) are "fixed"; MACs outside convolutions and
linear layers (attention products, interpolation) are "other".
"""
from __future__ import annotations

import math

from torch import nn

from gensynth_pl.graph import PRUNABLE_TYPES, Architecture, NetworkGraph
from gensynth_pl.metrics import macs_per_module


def mac_map(graph: NetworkGraph, prototype: nn.Module, answer: nn.Module, arch: Architecture,
            min_channels: float) -> list[dict]:
    """One row per channel group, fixed layer and removable block, largest share of φ's MACs first, then "other"."""
    before = macs_per_module(prototype, graph.input_shape)
    after = macs_per_module(answer, graph.input_shape)
    total = max(before.get("", 0), 1)
    modules = dict(prototype.named_modules())
    owned: set[str] = set()
    rows = []
    for group in graph.groups.values():
        layers = [p for p in group.producers if isinstance(modules.get(p), PRUNABLE_TYPES)]
        owned.update(layers)
        kept = 0 if group.block in arch.removed_blocks else len(arch.channels[group.id])
        floor = max(1, math.ceil(min_channels * group.size))
        rows.append(_row("group", group.id, before, after, layers, total, can_shrink=group.size > floor,
                         width=f"{kept}/{group.size}"))
    for name, module in modules.items():
        if isinstance(module, PRUNABLE_TYPES) and name not in owned:
            rows.append(_row("fixed", name, before, after, [name], total, can_shrink=False, width="output"))
    rows.sort(key=lambda row: -row["share"])
    for block in graph.removable_blocks:
        removed = block in arch.removed_blocks
        rows.append(_row("block", block, before, after, [block], total, can_shrink=True,
                         width="removed" if removed else "kept"))
    leaves = [n for n, m in modules.items() if isinstance(m, PRUNABLE_TYPES)]
    rows.append({"kind": "other", "name": "(not conv/linear)", "share": 1 - sum(before.get(n, 0) for n in leaves) / total,
                 "can_shrink": False, "width": "", "phi_macs": total - sum(before.get(n, 0) for n in leaves),
                 "answer_macs": after.get("", 0) - sum(after.get(n, 0) for n in leaves)})
    return rows


def _row(kind: str, name: str, before: dict[str, int], after: dict[str, int], layers: list[str], total: int,
         can_shrink: bool, width: str) -> dict:
    phi, answer = sum(before.get(n, 0) for n in layers), sum(after.get(n, 0) for n in layers)
    return {"kind": kind, "name": name, "share": phi / total, "can_shrink": can_shrink, "width": width,
            "phi_macs": phi, "answer_macs": answer}


def format_mac_map(rows: list[dict], top: int = 10) -> str:
    """The groups and fixed layers carrying most of φ's MACs, every block, and the rest."""
    shown = [r for r in rows if r["kind"] in ("group", "fixed")][:top] + [r for r in rows if r["kind"] in ("block", "other")]
    lines = [f"{'where the MACs are':<34} {'kind':>6} {'of φ':>7} {'shrinks':>8} {'width':>10} {'x fewer':>8}"]
    for r in shown:
        fewer = f"{r['phi_macs'] / r['answer_macs']:.2f}" if r["answer_macs"] else ("gone" if r["phi_macs"] else "")
        lines.append(f"{r['name'][:34]:<34} {r['kind']:>6} {100 * r['share']:>6.1f}% {'yes' if r['can_shrink'] else 'no':>8} "
                     f"{r['width']:>10} {fewer:>8}")
    return "\n".join(lines)
