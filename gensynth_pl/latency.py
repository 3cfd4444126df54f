"""ONNX verification and inference latency of a network: PyTorch eager vs ONNX Runtime."""
from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn


def verify_onnx(network: nn.Module, onnx_path: str | Path, input_shape: tuple[int, ...], batch: int = 2, atol: float = 1e-4) -> float:
    """Largest absolute difference between ONNX Runtime and PyTorch outputs; raises past ``atol``."""
    network.eval()
    x = torch.randn(batch, *input_shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = network(x)
    expected = [expected] if isinstance(expected, torch.Tensor) else list(expected.values() if isinstance(expected, dict) else expected)
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
) -> list[dict]:
    """Median wall time per batch (ms) and throughput, for each runtime and batch size, on CPU."""
    network = network.eval().cpu()
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    rows = []
    for batch in batch_sizes:
        x = torch.randn(batch, *input_shape)
        array = x.numpy()

        def eager() -> None:
            with torch.inference_mode():
                network(x)

        for runtime, run in (("pytorch", eager), ("onnxruntime", lambda: session.run(None, {input_name: array}))):
            median = _median_ms(run, repeats, warmup)
            rows.append({"runtime": runtime, "batch": batch, "median_ms": median, "images_per_s": batch / median * 1000})
    return rows
