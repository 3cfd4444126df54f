"""ONNX verification and inference latency of a network: PyTorch eager vs ONNX Runtime."""
from __future__ import annotations

import copy
import json
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from gensynth_pl.export import export_onnx
from gensynth_pl.rundir import write_text_atomic
from gensynth_pl.torch_utils import evaluating, output_tensors

RUNTIMES = ("pytorch", "onnxruntime")  # what measure_latency times


def verify_onnx(network: nn.Module, onnx_path: str | Path, input_shape: tuple[int, ...], batch: int = 2, atol: float = 1e-4) -> float:
    """Largest absolute difference between ONNX Runtime and PyTorch outputs; raises past ``atol``."""
    network.eval()
    x = torch.randn(batch, *input_shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = output_tensors(network(x))
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    outputs = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    difference = max(float(np.abs(o - e.numpy()).max()) for o, e in zip(outputs, expected))
    if difference > atol:
        raise AssertionError(f"ONNX export of {onnx_path} differs from PyTorch by {difference:.3g} (> {atol:g})")
    return difference


def _median_ms(run, repeats: int, warmup: int) -> float:
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def measure_latency(
    network: nn.Module,
    onnx_path: str | Path,
    input_shape: tuple[int, ...],
    batch_sizes: tuple[int, ...] = (1, 64),
    repeats: int = 20,
    warmup: int = 3,
    threads: int | None = None,
    runtimes: tuple[str, ...] = RUNTIMES,
) -> list[dict]:
    """Median wall time per batch (ms) and throughput, for each of ``runtimes`` and batch sizes, on CPU, with
    ``threads`` intra-op threads (None: each runtime's default), e.g. the thread count a latency budget was measured
    with."""
    unknown = set(runtimes) - set(RUNTIMES)
    if unknown:
        raise ValueError(f"runtimes {sorted(unknown)}: choose from {RUNTIMES}")
    network = network.eval().cpu()
    session = _ort_session(onnx_path, threads)
    input_name = session.get_inputs()[0].name
    rows = []
    for batch in batch_sizes:
        x = torch.randn(batch, *input_shape)
        array = x.numpy()

        def eager() -> None:
            with torch.inference_mode(), _torch_threads(threads):
                network(x)

        for runtime, run in (("pytorch", eager), ("onnxruntime", lambda: session.run(None, {input_name: array}))):
            if runtime not in runtimes:
                continue
            median = _median_ms(run, repeats, warmup)
            rows.append({"runtime": runtime, "batch": batch, "median_ms": median, "images_per_s": batch / median * 1000})
    return rows


def _ort_session(onnx_path: str | Path, threads: int | None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = options.inter_op_num_threads = threads
    return ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])


@contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(threads or previous)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


RUNTIMES = ("onnxruntime", "pytorch")


@dataclass(frozen=True)
class LatencyMeter:
    """Median milliseconds per batch of ``batch`` images on ``runtime`` (ONNX Runtime or PyTorch eager) with
    ``threads`` intra-op threads, on this machine: what a latency budget and latency costs are measured with."""

    runtime: str = "onnxruntime"
    batch: int = 64
    threads: int = 1
    repeats: int = 20
    warmup: int = 3

    def __post_init__(self) -> None:
        if self.runtime not in RUNTIMES:
            raise ValueError(f"latency runtime {self.runtime!r} is unknown; choose one of {RUNTIMES}")
        if self.batch < 1 or self.threads < 1 or self.repeats < 1 or self.warmup < 0:
            raise ValueError(f"latency batch={self.batch}, threads={self.threads}, repeats={self.repeats} must be >= 1")

    def describe(self) -> str:
        return f"{self.runtime}, batch {self.batch}, {self.threads} thread{'s' if self.threads > 1 else ''}"

    def measure(self, network: nn.Module, input_shape: tuple[int, ...]) -> float:
        network = copy.deepcopy(network).cpu().eval()
        x = torch.randn(self.batch, *input_shape, generator=torch.Generator().manual_seed(0))
        if self.runtime == "pytorch":
            with torch.inference_mode(), _torch_threads(self.threads):
                return _median_ms(lambda: network(x), self.repeats, self.warmup)
        with tempfile.TemporaryDirectory() as folder:
            session = _ort_session(export_onnx(network, input_shape, Path(folder) / "network.onnx"), self.threads)
            feed = {session.get_inputs()[0].name: x.numpy()}
            return _median_ms(lambda: session.run(None, feed), self.repeats, self.warmup)


WIDTH_FRACTIONS = (0.25, 0.5, 0.75, 1.0)


class LatencyModel:
    """Per-layer latency as a function of its width, measured on the target runtime and interpolated: what one
    channel of a layer costs in time. Each conv/linear layer of the prototype is timed alone at its input's
    size with its output channels, then its input channels, at ``WIDTH_FRACTIONS`` of their number; a layer
    with ``o`` of its outputs and ``i`` of its inputs takes ``L_out(o) · L_in(i) / L_full``."""

    FORMAT = "gensynth-latency-model/1"

    def __init__(self, curves: dict[str, dict], meter: LatencyMeter) -> None:
        self.curves, self.meter = curves, meter  # layer -> {"out": [[width, ms], ...], "in": [...], "groups": g}

    @classmethod
    def build(cls, prototype: nn.Module, input_shape: tuple[int, ...], meter: LatencyMeter, log=print) -> "LatencyModel":
        shapes: dict[str, tuple[int, ...]] = {}
        layers = {name: m for name, m in prototype.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
        def record(name: str):
            def hook(module, inputs, output) -> None:
                shapes.setdefault(name, tuple(inputs[0].shape[1:]))

            return hook

        handles = [m.register_forward_hook(record(name)) for name, m in layers.items()]
        try:
            with torch.no_grad(), evaluating(prototype):  # the run's own prototype: it goes on training afterwards
                prototype(torch.zeros(1, *input_shape))
        finally:
            for handle in handles:
                handle.remove()
        started = time.perf_counter()
        curves = {}
        for name, layer in layers.items():
            if name in shapes:
                curves[name] = _layer_curves(layer, shapes[name], meter)
        log(f"latency model: {len(curves)} layers timed on {meter.describe()} in {time.perf_counter() - started:.0f} s")
        return cls(curves, meter)

    def save(self, path: str | Path) -> None:
        write_text_atomic(path, json.dumps({"format": self.FORMAT, "meter": asdict(self.meter), "curves": self.curves}))

    @classmethod
    def load(cls, path: str | Path, meter: LatencyMeter) -> "LatencyModel | None":
        """The model saved at ``path`` if it was measured with ``meter``'s settings, else None."""
        path = Path(path)
        if not path.is_file():
            return None
        data = json.loads(path.read_text())
        if data.get("format") != cls.FORMAT or LatencyMeter(**data["meter"]) != meter:
            return None
        return cls(data["curves"], meter)

    def layer_ms(self, name: str, inputs: int, outputs: int) -> float:
        curve = self.curves[name]
        full = curve["out"][-1][1]
        return _interpolate(curve["out"], outputs) * _interpolate(curve["in"], inputs) / full

    def slope(self, name: str, inputs: int, outputs: int, side: str) -> float:
        """Milliseconds one more channel on ``side`` ("out" or "in") costs at these widths (at least a thousandth
        of the layer's time per channel: measurements are noisy)."""
        curve = self.curves[name]
        full = curve["out"][-1][1]
        width, other = (outputs, _interpolate(curve["in"], inputs)) if side == "out" else (inputs, _interpolate(curve["out"], outputs))
        points = curve[side]
        return max(_derivative(points, width) * other / full, 1e-3 * full / points[-1][0])

    def total(self, network: nn.Module) -> float:
        """Modelled milliseconds of a (generated) network: the sum over its layers at their current widths."""
        total = 0.0
        for name, module in network.named_modules():
            if name in self.curves and isinstance(module, (nn.Conv2d, nn.Linear)):
                total += self.layer_ms(name, *_widths(module))
        return total


def _widths(module: nn.Module) -> tuple[int, int]:
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    return module.in_channels, module.out_channels


def _layer_curves(layer: nn.Module, input_shape: tuple[int, ...], meter: LatencyMeter) -> dict:
    """The layer timed alone: output widths at full input, input widths at full output (depthwise: both together)."""
    inputs, outputs = _widths(layer)
    depthwise = isinstance(layer, nn.Conv2d) and layer.groups == inputs == outputs and inputs > 1
    curves: dict[str, list] = {"out": [], "in": []}
    for fraction in WIDTH_FRACTIONS:
        for side in ("out", "in"):
            o = max(1, round(fraction * outputs)) if side == "out" or depthwise else outputs
            i = max(1, round(fraction * inputs)) if side == "in" or depthwise else inputs
            if isinstance(layer, nn.Conv2d) and layer.groups > 1 and not depthwise:
                i, o = inputs, outputs  # grouped convolutions are timed at full width only
            curves[side].append([o if side == "out" else i, meter.measure(_alone(layer, i, o), (i, *input_shape[1:]))])
    for points in curves.values():  # more channels never take less time: a dip is measurement noise
        for previous, point in zip(points, points[1:]):
            point[1] = max(point[1], previous[1])
    return curves


def _alone(layer: nn.Module, inputs: int, outputs: int) -> nn.Module:
    if isinstance(layer, nn.Linear):
        return nn.Linear(inputs, outputs, bias=layer.bias is not None)
    groups = inputs if layer.groups == layer.in_channels == layer.out_channels and layer.groups > 1 else layer.groups
    return nn.Conv2d(inputs, outputs, layer.kernel_size, layer.stride, layer.padding, layer.dilation, groups,
                     layer.bias is not None)


def _interpolate(points: list, width: float) -> float:
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    return float(np.interp(width, xs, ys, left=ys[0] * width / max(xs[0], 1)))


def _derivative(points: list, width: float) -> float:
    """Slope of the piecewise-linear curve at ``width`` (the first segment's below it, the last's above it)."""
    segments = list(zip(points, points[1:]))
    (x0, y0), (x1, y1) = next(((a, b) for a, b in segments if width <= b[0]), segments[-1])
    return (y1 - y0) / max(x1 - x0, 1)
