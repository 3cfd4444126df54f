"""Save and reload generated networks as architecture spec + weights (timm-style), and ONNX export.

A saved network is a folder: ``architecture.json`` (the spec, plain JSON) and ``weights.safetensors`` (tensors
only), written and replaced as one unit; reading it runs no code from it (the prototype's recipe passes
gensynth_pl.recipes' allow-list first). Folders of older versions (``weights.pt``, a torch pickle of tensors) are
still read, with ``weights_only=True``.
"""
from __future__ import annotations

import filecmp
import json
import shutil
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn

from gensynth_pl.graph import Architecture, NetworkGraph
from gensynth_pl.recipes import instantiate_trusted
from gensynth_pl.rundir import (LATENCY_FILE, LEGACY_WEIGHTS_FILE, ONNX_FILE, SPEC_FILE, WEIGHTS_FILE, atomic_directory,
                                write_atomic)
from gensynth_pl.tensorfile import load_state_dict, save_state_dict
from gensynth_pl.torch_utils import brief, cpu_state_dict, evaluating

SPEC_FORMAT = "gensynth-network/1"
SPEC_KEYS = {  # what load_network reads, and the JSON type each must have
    "format": str, "prototype": (dict, list, type(None)), "input_shape": list, "output_layers": (list, type(None)),
    "removable_blocks": (list, type(None)), "architecture": dict,
}
_OWN_FILES = {SPEC_FILE, WEIGHTS_FILE, LEGACY_WEIGHTS_FILE, ONNX_FILE, LATENCY_FILE}


def save_network(
    directory: str | Path,
    network: nn.Module,
    arch: Architecture,
    graph: NetworkGraph,
    prototype_config: dict | None,
    report: dict | None = None,
) -> Path:
    """Write ``architecture.json`` (spec, prototype recipe, input shape, report) and ``weights.safetensors`` into a
    new folder that then replaces ``directory`` as a whole. Its ONNX export and latency report go with it, unless
    they describe this very network (the same weights and input shape)."""
    directory = Path(directory)
    foreign = sorted(p.name for p in directory.iterdir() if p.name not in _OWN_FILES) if directory.is_dir() else []
    if foreign:
        raise FileExistsError(f"{directory} holds files save_network did not write ({foreign[:5]}); it replaces the "
                              "folder as a whole: choose a new or empty folder")
    spec = {
        "format": SPEC_FORMAT,
        "prototype": prototype_config,
        "input_shape": list(graph.input_shape),
        "output_layers": graph.output_layers,
        "removable_blocks": graph.removable_blocks,
        "architecture": arch.to_dict(),
        "widths": arch.widths(),
        "report": report or {},
    }
    with atomic_directory(directory) as folder:
        save_state_dict(folder / WEIGHTS_FILE, cpu_state_dict(network))
        (folder / SPEC_FILE).write_text(json.dumps(spec, indent=2))
        _keep_exports(directory, folder, spec["input_shape"])
    return directory


def _keep_exports(old: Path, new: Path, input_shape: list[int]) -> None:
    """Carry the old folder's ONNX export and latency report over when they describe the network just saved: the
    same weights (byte for byte) and input shape, only the spec's report changed (e.g. test metrics added)."""
    try:
        same = filecmp.cmp(old / WEIGHTS_FILE, new / WEIGHTS_FILE, shallow=False) and json.loads(
            (old / SPEC_FILE).read_text())["input_shape"] == input_shape
    except (OSError, ValueError, KeyError, TypeError):  # no old folder, or not one of ours
        return
    for name in (ONNX_FILE, LATENCY_FILE):
        if same and (old / name).is_file():
            shutil.copy2(old / name, new / name)


def read_spec(directory: str | Path) -> dict:
    """A saved network's ``architecture.json``, checked to hold what ``load_network`` needs."""
    path = Path(directory) / SPEC_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: pass the folder written by save_network (e.g. <run>/best)")
    fix = "copy the folder again, or save the network again with save_network"
    try:
        spec = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON ({error}): the file is damaged; {fix}") from error
    if not isinstance(spec, dict):
        raise ValueError(f"{path} holds a JSON {type(spec).__name__}, not an object: it is not a network spec; {fix}")
    missing = sorted(key for key in SPEC_KEYS if key not in spec)
    if missing:
        raise ValueError(f"{path} lacks the key(s) {missing}: it is incomplete or not a network spec; {fix}")
    if spec["format"] != SPEC_FORMAT:
        raise ValueError(f"{path} has format {spec['format']!r}, not {SPEC_FORMAT!r}: it was not written by save_network "
                         "of this version; save the network again with this version")
    wrong = sorted(key for key, kind in SPEC_KEYS.items() if not isinstance(spec[key], kind))
    if wrong or not all(isinstance(size, int) and size > 0 for size in spec["input_shape"]):
        raise ValueError(f"{path}: {wrong or ['input_shape']} have the wrong type (input_shape: positive integers); {fix}")
    return spec


def load_network(
    directory: str | Path,
    prototype: nn.Module | None = None,
    trusted_targets: Iterable[str] = (),
    trust_recipe: bool = False,
) -> nn.Module:
    """Rebuild a saved network from its spec and weights, without any training objects.

    The prototype is re-created from the recipe in the spec (a Hydra ``_target_`` config) only if every target in
    it is on the allow-list of gensynth_pl.recipes, or in ``trusted_targets``, or ``trust_recipe`` (you trust the
    whole folder); it is traced and cut to the saved architecture, then the saved weights are loaded (safetensors;
    an older version's ``weights.pt`` with ``torch.load(weights_only=True)``). Networks of a prototype without a
    recipe (a plug-in user's own module) need that prototype passed in; its weights do not matter.

    Args:
        directory: a folder written by ``save_network``: a run's ``best/``, a family member's folder.
        prototype: the prototype module, when the spec has no recipe (or to use it instead of the recipe).
        trusted_targets: recipe targets you trust beyond the allow-list, by exact name.
        trust_recipe: run the recipe as written (only for a folder you trust entirely).

    Returns:
        The network as a plain ``nn.Module``, in eval mode, on the CPU.

    Raises:
        FileNotFoundError: ``directory`` has no ``architecture.json``.
        ValueError: the spec is damaged, has no prototype recipe and no ``prototype`` was given, or the weights do
            not fit it (each message names the file and the fix).
        UntrustedRecipeError: the recipe names a target outside the allow-list (the message says how to trust it).

    Example:
        ```python
        network = load_network("outputs/<date>/<time>/best")
        logits = network(torch.zeros(1, 3, 32, 32))
        ```
    """
    directory = Path(directory)
    spec = read_spec(directory)
    spec_path = directory / SPEC_FILE
    if prototype is None:
        if not spec["prototype"]:
            raise ValueError(f"{spec_path} has no prototype recipe; pass the prototype module to load_network")
        prototype = instantiate_trusted(spec["prototype"], "prototype", f"{spec_path} (prototype)", trusted_targets,
                                        trust_recipe)
    weights_path = directory / WEIGHTS_FILE
    if not weights_path.is_file() and (directory / LEGACY_WEIGHTS_FILE).is_file():
        weights_path = directory / LEGACY_WEIGHTS_FILE
    weights = load_state_dict(weights_path, "the folder is incomplete or damaged: copy it again, or save the network again")
    try:
        graph = NetworkGraph.trace(prototype, tuple(spec["input_shape"]), spec["output_layers"], spec["removable_blocks"])
        return graph.rebuild(prototype, Architecture.from_dict(spec["architecture"]), weights).eval()
    except (ValueError, TypeError, KeyError, IndexError, RuntimeError) as error:
        raise ValueError(
            f"{weights_path} does not fit the architecture in {spec_path} ({brief(error)}); the two "
            "files come from different saves, or the prototype passed in is not the network's: save it again"
        ) from error


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
