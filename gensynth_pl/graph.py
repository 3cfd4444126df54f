"""The prototype as a graph of coupled channel groups, and materialisation of architectures from it.

Torch-Pruning's ``DependencyGraph`` finds which channels are coupled (a residual stream, a concat, a
depthwise conv) and physically slices them; this module only names the groups stably so an
architecture spec can refer to them, and applies a spec to a real module.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
import torch_pruning as tp
from torch import nn

from gensynth_pl.torch_utils import evaluating

PRUNABLE_TYPES = (nn.Conv2d, nn.Linear)
_CHANNEL_TYPES = (nn.Conv2d, nn.Linear, nn.modules.batchnorm._BatchNorm)


@dataclass(frozen=True)
class ChannelGroup:
    """Channels that must be kept or removed together, named after their first producing layer."""

    id: str
    size: int
    producers: tuple[str, ...]  # layers whose output channels are these (conv/linear/batch-norm)
    consumers: tuple[str, ...]  # conv/linear layers that read these channels as input
    block: str | None = None  # the removable block that contains every producer, if any


@dataclass
class Architecture:
    """A generated network: kept prototype channel indices per group and the dropped residual blocks.

    Indices always refer to the prototype, so a spec is meaningful without its lineage.
    """

    channels: dict[str, list[int]]
    removed_blocks: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"channels": {k: list(v) for k, v in self.channels.items()}, "removed_blocks": list(self.removed_blocks)}

    @classmethod
    def from_dict(cls, data: dict) -> "Architecture":
        return cls({k: sorted(int(i) for i in v) for k, v in data["channels"].items()}, sorted(data["removed_blocks"]))

    def widths(self) -> dict[str, int]:
        return {group: len(kept) for group, kept in self.channels.items()}

    def contains(self, other: "Architecture") -> bool:
        """True when ``other`` can be cut out of this architecture (so it can inherit its weights)."""
        if not set(self.removed_blocks) <= set(other.removed_blocks):
            return False
        return all(set(other.channels[g]) <= set(kept) for g, kept in self.channels.items())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Architecture) and self.to_dict() == other.to_dict()


def _example_input(module: nn.Module, input_shape: tuple[int, ...]) -> torch.Tensor:
    return torch.zeros((1, *input_shape), device=next(module.parameters()).device)


def _dependency_graph(module: nn.Module, input_shape: tuple[int, ...]) -> tp.DependencyGraph:
    with evaluating(module):
        return tp.DependencyGraph().build_dependency(module, example_inputs=_example_input(module, input_shape))


def _forward_with_hooks(model: nn.Module, input_shape: tuple[int, ...], hooks: dict[str, object]):
    """One eval-mode forward pass at batch 1 with temporary forward hooks on the named submodules."""
    handles = [model.get_submodule(name).register_forward_hook(hook) for name, hook in hooks.items()]
    try:
        with evaluating(model), torch.no_grad():
            return model(_example_input(model, input_shape))
    finally:
        for handle in handles:
            handle.remove()


def find_output_layers(model: nn.Module, input_shape: tuple[int, ...]) -> list[str]:
    """Layers whose output tensor is (part of) the model's output: their channels must never be pruned."""
    produced: dict[int, tuple[str, torch.Tensor]] = {}  # the tensor is held so its id stays unique

    def record(name: str):
        def hook(module, inputs, output) -> None:
            produced.setdefault(id(output), (name, output))

        return hook

    hooks = {name: record(name) for name, module in model.named_modules() if isinstance(module, PRUNABLE_TYPES)}
    outputs = _forward_with_hooks(model, input_shape, hooks)
    if isinstance(outputs, dict):
        outputs = list(outputs.values())
    elif isinstance(outputs, torch.Tensor):
        outputs = [outputs]
    return [produced[id(t)][0] for t in outputs if id(t) in produced]


class NetworkGraph:
    """Channel groups and removable blocks of a prototype; builds physically smaller networks from specs."""

    def __init__(
        self,
        groups: list[ChannelGroup],
        removable_blocks: list[str],
        output_layers: list[str],
        input_shape: tuple[int, ...],
    ) -> None:
        self.groups = {group.id: group for group in groups}
        self.removable_blocks = list(removable_blocks)
        self.output_layers = list(output_layers)
        self.input_shape = tuple(input_shape)

    @classmethod
    def trace(
        cls,
        model: nn.Module,
        input_shape: tuple[int, ...],
        output_layers: list[str] | None = None,
        removable_blocks: list[str] | None = None,
    ) -> "NetworkGraph":
        """Trace ``model``. Output layers and removable blocks default to what the model declares
        (``model.output_layers()``, ``model.removable_blocks()``, as our prototypes do); otherwise the
        output layers are found by tracing and no block is removable."""
        input_shape = tuple(input_shape)
        if output_layers is None:
            output_layers = model.output_layers() if hasattr(model, "output_layers") else find_output_layers(model, input_shape)
        if removable_blocks is None:
            removable_blocks = model.removable_blocks() if hasattr(model, "removable_blocks") else []
        modules = dict(model.named_modules())
        for name in [*output_layers, *removable_blocks]:
            if name not in modules:
                raise ValueError(f"layer '{name}' is not a submodule of {type(model).__name__}; check its name")
        _check_blocks_keep_shape(model, input_shape, removable_blocks)

        names = {module: name for name, module in modules.items()}
        order = {name: index for index, name in enumerate(modules)}
        graph = _dependency_graph(model, input_shape)
        ignored = [modules[name] for name in output_layers]
        groups = []
        for tp_group in graph.get_all_groups(ignored_layers=ignored, root_module_types=list(PRUNABLE_TYPES)):
            producers, consumers = set(), set()
            for item in tp_group.items:
                module = item.dep.target.module
                if not isinstance(module, _CHANNEL_TYPES):
                    continue
                if graph.is_out_channel_pruning_fn(item.dep.handler):
                    producers.add(names[module])
                elif isinstance(module, PRUNABLE_TYPES):
                    consumers.add(names[module])
            layers = sorted((p for p in producers if isinstance(modules[p], PRUNABLE_TYPES)), key=order.get)
            if not layers:
                continue
            size = graph.get_out_channels(modules[layers[0]])
            block = next((b for b in removable_blocks if all(p.startswith(b + ".") for p in producers)), None)
            groups.append(
                ChannelGroup(
                    id=layers[0],
                    size=size,
                    producers=tuple(sorted(producers, key=order.get)),
                    consumers=tuple(sorted(consumers, key=order.get)),
                    block=block,
                )
            )
        if not groups:
            raise ValueError(f"{type(model).__name__} has no prunable channel group (conv/linear layers outside the output layers)")
        return cls(groups, removable_blocks, output_layers, input_shape)

    def full_architecture(self) -> Architecture:
        """The prototype itself as a spec: every channel, every block."""
        return Architecture({g.id: list(range(g.size)) for g in self.groups.values()}, [])

    def check(self, arch: Architecture) -> None:
        """Reject specs that do not belong to this prototype, naming what does not fit."""
        if set(arch.channels) != set(self.groups):
            missing, extra = set(self.groups) - set(arch.channels), set(arch.channels) - set(self.groups)
            raise ValueError(
                f"architecture does not match this prototype: missing groups {sorted(missing)[:5]}, "
                f"unknown groups {sorted(extra)[:5]}; was it generated from another prototype?"
            )
        for group_id, kept in arch.channels.items():
            size = self.groups[group_id].size
            if not kept or min(kept) < 0 or max(kept) >= size:
                raise ValueError(f"group '{group_id}' keeps {len(kept)} channel(s) outside 0..{size - 1}")
        unknown = set(arch.removed_blocks) - set(self.removable_blocks)
        if unknown:
            raise ValueError(f"blocks {sorted(unknown)} are not removable blocks of this prototype")

    def same_network(self, a: Architecture, b: Architecture) -> bool:
        """True when two specs build the same network: equal blocks removed, equal channels in every group that
        is not inside a removed block (channels of a removed block do not exist in the network)."""
        if sorted(a.removed_blocks) != sorted(b.removed_blocks):
            return False
        removed = set(a.removed_blocks)
        return all(
            sorted(a.channels[g]) == sorted(b.channels[g]) for g, group in self.groups.items() if group.block not in removed
        )

    def rebuild(self, prototype: nn.Module, arch: Architecture, weights: dict | None = None) -> nn.Module:
        """``arch`` cut from the full prototype, with saved ``weights`` loaded: how stored networks come back."""
        network = self.materialize(prototype, self.full_architecture(), arch)
        if weights is not None:
            network.load_state_dict(weights)
        return network

    def materialize(self, source: nn.Module, source_arch: Architecture, arch: Architecture) -> nn.Module:
        """A physically smaller copy of ``source`` (whose own spec is ``source_arch``) shaped as ``arch``.

        The copy inherits ``source``'s weights for every kept channel; ``source`` is left untouched.
        """
        self.check(arch)
        if not source_arch.contains(arch):
            raise ValueError("architecture keeps channels or blocks its source network no longer has")
        network = copy.deepcopy(source)
        for block in set(arch.removed_blocks) - set(source_arch.removed_blocks):
            network.set_submodule(block, nn.Identity())
        modules = dict(network.named_modules())
        graph = _dependency_graph(network, self.input_shape)
        for group in self.groups.values():
            if group.block in arch.removed_blocks:
                continue
            keep = set(arch.channels[group.id])
            remove = [pos for pos, index in enumerate(source_arch.channels[group.id]) if index not in keep]
            if not remove:
                continue
            layer = next(modules[p] for p in group.producers if p in modules and isinstance(modules[p], PRUNABLE_TYPES))
            pruner = graph.get_pruner_of_module(layer)
            graph.get_pruning_group(layer, pruner.prune_out_channels, remove).prune()
        return network


def _check_blocks_keep_shape(model: nn.Module, input_shape: tuple[int, ...], blocks: list[str]) -> None:
    """A block can only be replaced by identity if its output has its input's shape."""
    if not blocks:
        return
    shapes: dict[str, tuple] = {}

    def record(name: str):
        def hook(module, inputs, output) -> None:
            shapes.setdefault(name, (tuple(inputs[0].shape), tuple(output.shape)))

        return hook

    _forward_with_hooks(model, input_shape, {name: record(name) for name in blocks})
    for name in blocks:
        if name not in shapes or shapes[name][0] != shapes[name][1]:
            raise ValueError(f"block '{name}' cannot be removed: its output shape differs from its input shape {shapes.get(name)}")
