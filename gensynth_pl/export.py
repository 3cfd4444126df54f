"""Save and reload generated networks as architecture spec + weights (timm-style), and ONNX export."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from hydra.utils import instantiate
from torch import nn

from gensynth_pl.graph import Architecture, NetworkGraph
from gensynth_pl.rundir import SPEC_FILE, WEIGHTS_FILE, write_atomic, write_text_atomic
from gensynth_pl.torch_utils import cpu_state_dict, evaluating


def save_network(
    directory: str | Path,
    network: nn.Module,
    arch: Architecture,
    graph: NetworkGraph,
    prototype_config: dict | None,
    report: dict | None = None,
) -> Path:
    """Write ``architecture.json`` (spec, prototype recipe, input shape, report) and ``weights.pt``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    spec = {
        "format": "gensynth-network/1",
        "prototype": prototype_config,
        "input_shape": list(graph.input_shape),
        "output_layers": graph.output_layers,
        "removable_blocks": graph.removable_blocks,
        "architecture": arch.to_dict(),
        "widths": arch.widths(),
        "report": report or {},
    }
    weights = cpu_state_dict(network)
    write_atomic(directory / WEIGHTS_FILE, lambda temporary: torch.save(weights, temporary))
    write_text_atomic(directory / SPEC_FILE, json.dumps(spec, indent=2))  # last: a spec always has its weights
    return directory


def load_network(directory: str | Path, prototype: nn.Module | None = None) -> nn.Module:
    """Rebuild a saved network from its spec and weights, without any training objects.

    The prototype is re-created from the recipe in the spec (a Hydra ``_target_`` config), traced, and cut to the
    saved architecture; then the saved weights are loaded (``torch.load(weights_only=True)``). Networks of a
    prototype without a recipe (a plug-in user's own module) need that prototype passed in; its weights do not
    matter.

    Args:
        directory: a folder written by ``save_network``: a run's ``best/``, a family member's folder.
        prototype: the prototype module, when the spec has no recipe.

    Returns:
        The network as a plain ``nn.Module``, in eval mode, on the CPU.

    Raises:
        FileNotFoundError: ``directory`` has no ``architecture.json``.
        ValueError: the spec has no prototype recipe and no ``prototype`` was given.

    Example:
        ```python
        network = load_network("outputs/<date>/<time>/best")
        logits = network(torch.zeros(1, 3, 32, 32))
        ```
    """
    directory = Path(directory)
    spec_path = directory / SPEC_FILE
    if not spec_path.is_file():
        raise FileNotFoundError(f"{spec_path} not found: pass the folder written by save_network (e.g. <run>/best)")
    spec = json.loads(spec_path.read_text())
    if prototype is None:
        if not spec.get("prototype"):
            raise ValueError(f"{spec_path} has no prototype recipe; pass the prototype module to load_network")
        prototype = instantiate(spec["prototype"])
    input_shape = tuple(spec["input_shape"])
    graph = NetworkGraph.trace(prototype, input_shape, spec["output_layers"], spec["removable_blocks"])
    weights = torch.load(directory / WEIGHTS_FILE, map_location="cpu", weights_only=True)
    return graph.rebuild(prototype, Architecture.from_dict(spec["architecture"]), weights).eval()


def export_onnx(network: nn.Module, input_shape: tuple[int, ...], path: str | Path) -> Path:
    """Export with a dynamic batch dimension (legacy TorchScript exporter: no extra tracing deps)."""
    example = torch.zeros((1, *input_shape), device=next(network.parameters()).device)

    def write(temporary: Path) -> None:
        with evaluating(network):
            torch.onnx.export(
                network,
                (example,),
                str(temporary),
                input_names=["input"],
                output_names=["output"],
                dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
                dynamo=False,
            )

    return write_atomic(path, write)
