"""The prototype as a graph of coupled channel groups, and materialisation of architectures from it.

Torch-Pruning's ``DependencyGraph`` finds which channels are coupled (a residual stream, a concat, a
depthwise conv) and physically slices them; this module only names the groups stably so an
architecture spec can refer to them, and applies a spec to a real module.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import torch
import torch_pruning as tp
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from gensynth_pl.torch_utils import evaluating, output_tensors

PRUNABLE_TYPES = (nn.Conv2d, nn.Linear)
NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)
_CHANNEL_TYPES = (*PRUNABLE_TYPES, *NORM_TYPES)
_HEAD_PROJECTIONS = ("qkv", "q", "k", "v", "kv")  # timm-style attention: Linear layers whose output is split into heads


@dataclass(frozen=True)
class ChannelGroup:
    """Channels that must be kept or removed together, named after their first producing layer."""

    id: str
    size: int
    producers: tuple[str, ...]  # layers whose output channels are these (conv/linear/batch-norm)
    consumers: tuple[str, ...]  # conv/linear layers that read these channels as input
    block: str | None = None  # the removable block that contains every producer, if any
    tiles: int = 1  # the channels are ``tiles`` equal blocks of ``size`` units (conv groups, norm groups, heads)

    def channel_positions(self, units: list[int], width: int) -> list[int]:
        """Channel positions of unit positions ``units`` where the group is ``width`` units wide: the same position
        in every tile, so grouped convolutions keep equal groups and attention keeps equal heads."""
        return [tile * width + unit for tile in range(self.tiles) for unit in units]


@dataclass(frozen=True)
class ModuleChannels:
    """Which prototype channels of one layer's output belong to which group: ``owners[c] = (group id, unit)`` for
    prototype channel ``c`` (absent: the channel belongs to no prunable group and is always kept)."""

    size: int
    owners: dict[int, tuple[str, int]]

    def kept(self, arch: "Architecture", live: set[str]) -> list[tuple[str, int] | None]:
        """The layer's output channels in the network built from ``arch``, in order: each one's (group, unit
        position in the group's kept units), or None for a channel no live group owns."""
        position = {g: {unit: i for i, unit in enumerate(arch.channels[g])} for g in {g for g, _ in self.owners.values()}}
        channels = []
        for channel in range(self.size):
            owner = self.owners.get(channel)
            if owner is None or owner[0] not in live:
                channels.append(None)
            elif owner[1] in position[owner[0]]:
                channels.append((owner[0], position[owner[0]][owner[1]]))
        return channels


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


_RESHAPES = {torch.Tensor.view, torch.Tensor.reshape, torch.reshape}


class _ReshapeShapes(TorchFunctionMode):
    """Records the input and output shape of every reshape in a forward pass, by the result's autograd node."""

    def __init__(self) -> None:
        super().__init__()
        self.shapes: dict[object, tuple[tuple[int, ...], tuple[int, ...]]] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        if func in _RESHAPES and isinstance(result, Tensor) and result.grad_fn is not None:
            self.shapes[result.grad_fn] = (tuple(args[0].shape), tuple(result.shape))
        return result


def splits_channels(before: tuple[int, ...], after: tuple[int, ...]) -> bool:
    """A reshape of a feature map (N, C, H, W) that splits C into several dimensions (N, a, b, H, W), or merges
    them back: a channel shuffle or per-group statistics. Channel c before is not channel c after, which
    Torch-Pruning's index mapping cannot follow."""
    for four, more in ((before, after), (after, before)):
        if len(four) == 4 and len(more) > 4 and four[0] == more[0] and four[2:] == more[-2:]:
            return math.prod(more[1:-2]) == four[1]
    return False


class _DependencyGraph(tp.DependencyGraph):
    """Torch-Pruning's graph, with channel-splitting reshapes (``splits_channels``) marked as barriers: left without
    an index mapping (Torch-Pruning raises on a channel shuffle, or maps it as if channels kept their order), so
    that ``NetworkGraph.trace`` keeps every channel group that passes through one."""

    def build_dependency(self, model: nn.Module, example_inputs, **kwargs) -> "_DependencyGraph":
        self._reshapes = _ReshapeShapes()

        def forward(module: nn.Module, inputs: Tensor):
            with self._reshapes:
                return module(inputs)

        self.barriers: set[object] = set()
        super().build_dependency(model, example_inputs, forward_fn=forward, verbose=False, **kwargs)
        for node in self.module2node.values():
            sizes = _chunk_sizes(node.grad_fn) if node.type == tp.ops.OPTYPE.SPLIT else None
            if sizes:  # index mappings are refreshed from these whenever a group is formed
                node.module.split_sizes = sizes
                node.module.offsets = [sum(sizes[:i]) for i in range(len(sizes) + 1)]
        return self

    def _build_dependency(self, module2node) -> None:
        super()._build_dependency(module2node)
        for node in module2node.values():
            shapes = self._reshapes.shapes.get(node.grad_fn)
            if node.type == tp.ops.OPTYPE.RESHAPE and shapes is not None and splits_channels(*shapes):
                node.type = tp.ops.OPTYPE.ELEMENTWISE  # no index mapping: the group through it is kept whole
                self.barriers.add(node.module)


def _chunk_sizes(grad_fn) -> list[int] | None:
    """The channel sizes of a ``chunk``/equal ``split`` along dim 1, from its autograd node. Torch-Pruning reads them
    only from older PyTorch's field names and otherwise infers them from the consumers, which goes wrong (and
    raises) when a piece is used twice or passes a channel shuffle."""
    if not (hasattr(grad_fn, "_saved_split_size") and hasattr(grad_fn, "_saved_self_sym_sizes")):
        return None
    shape = [int(s) for s in grad_fn._saved_self_sym_sizes]
    if int(grad_fn._saved_dim) % len(shape) != 1:
        return None
    total, size = shape[1], int(grad_fn._saved_split_size)
    return [size] * (total // size) + ([total % size] if total % size else [])


def _dependency_graph(module: nn.Module, input_shape: tuple[int, ...]) -> _DependencyGraph:
    with evaluating(module):
        return _DependencyGraph().build_dependency(module, _example_input(module, input_shape))


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
    return list(dict.fromkeys(produced[id(t)][0] for t in output_tensors(outputs) if id(t) in produced))


class NetworkGraph:
    """Channel groups and removable blocks of a prototype; builds physically smaller networks from specs.

    ``module_channels`` says which group (and unit) owns each output channel of every conv, linear and norm layer
    that produces a group's channels (what the inquisitor's probe reads); ``kept_whole`` names the groups that
    tracing found but that are never pruned, with the reason (they reach the model's output or pass a channel
    shuffle)."""

    def __init__(
        self,
        groups: list[ChannelGroup],
        removable_blocks: list[str],
        output_layers: list[str],
        input_shape: tuple[int, ...],
        module_channels: dict[str, ModuleChannels] | None = None,
        kept_whole: dict[str, str] | None = None,
    ) -> None:
        self.groups = {group.id: group for group in groups}
        self.removable_blocks = list(removable_blocks)
        self.output_layers = list(output_layers)
        self.input_shape = tuple(input_shape)
        self.module_channels = dict(module_channels or {})
        self.kept_whole = dict(kept_whole or {})

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
        output layers are found by tracing and no block is removable.

        Channels that reach the model's output through a reshape or concatenation, and channels that pass a
        channel shuffle, are kept (``kept_whole``). Every other group is pruned once on a copy to check the network
        still runs with its output shapes: a group that breaks it is named in the error, with the fix."""
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

        graph = _dependency_graph(model, input_shape)
        tracer = _GroupTracer(graph, modules, removable_blocks)
        for tp_group in graph.get_all_groups(
            ignored_layers=[modules[name] for name in output_layers], root_module_types=list(PRUNABLE_TYPES)
        ):
            tracer.add(tp_group)
        if not tracer.groups:
            raise ValueError(f"{type(model).__name__} has no prunable channel group (conv/linear layers outside the output layers)")
        network_graph = cls(tracer.groups, removable_blocks, output_layers, input_shape, tracer.module_channels, tracer.kept_whole)
        network_graph._check_prunable(model)
        return network_graph

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
        return sorted(a.removed_blocks) == sorted(b.removed_blocks) and all(
            sorted(a.channels[g]) == sorted(b.channels[g]) for g in self.live_groups(a))

    def same_shape(self, a: Architecture, b: Architecture) -> bool:
        """True when two specs build networks of the same architecture: equal blocks removed and equal widths in
        every live group, whichever channels they keep (two such networks differ only in their weights)."""
        return sorted(a.removed_blocks) == sorted(b.removed_blocks) and all(
            len(a.channels[g]) == len(b.channels[g]) for g in self.live_groups(a))

    def live_groups(self, arch: Architecture) -> set[str]:
        """The groups whose channels exist in the network built from ``arch`` (not inside a removed block)."""
        return {g for g, group in self.groups.items() if group.block not in arch.removed_blocks}

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
            keep, source_units = set(arch.channels[group.id]), source_arch.channels[group.id]
            remove = group.channel_positions(
                [pos for pos, index in enumerate(source_units) if index not in keep], len(source_units)
            )
            if not remove:
                continue
            layer = next(modules[p] for p in group.producers if p in modules and isinstance(modules[p], PRUNABLE_TYPES))
            pruner = graph.get_pruner_of_module(layer)
            graph.get_pruning_group(layer, pruner.prune_out_channels, remove).prune()
        _sync_width_attributes(network)
        return network

    def _check_prunable(self, model: nn.Module) -> None:
        """Prune every group by one unit on a copy; if the network then fails or changes its output shapes, find
        the groups responsible (bisection) and name them with the fix."""
        reference = _output_shapes(model, self.input_shape)
        full = self.full_architecture()
        candidates = [g for g, group in self.groups.items() if group.size > 1]
        errors: dict[tuple[str, ...], str] = {}

        def breaks(ids: list[str]) -> bool:
            arch = Architecture({g: units[:-1] if g in ids else units for g, units in full.channels.items()})
            try:
                shapes = _output_shapes(self.materialize(model, full, arch), self.input_shape)
            except Exception as error:  # whatever breaks: Torch-Pruning's slicing or the model's own forward
                errors[tuple(ids)] = f"{type(error).__name__}: {str(error)[:200]}"
                return True
            if shapes != reference:
                errors[tuple(ids)] = f"the output shapes change from {reference} to {shapes}"
            return shapes != reference

        def culprits(ids: list[str]) -> list[str]:
            if len(ids) == 1:
                return ids
            halves = (ids[: len(ids) // 2], ids[len(ids) // 2 :])
            return [g for half in halves if breaks(half) for g in culprits(half)]

        if not candidates or not breaks(candidates):
            return
        found = culprits(candidates) or candidates
        reason = errors.get((found[0],), errors[tuple(candidates)])
        raise ValueError(
            f"{type(model).__name__}: pruning the channels of {', '.join(repr(g) for g in found[:5])} breaks the network "
            f"({reason}); Torch-Pruning does not follow these channels through every operation that uses them. Keep "
            f"them: pass output_layers={[*self.output_layers, *found]} (to GenerativeSynthesis, Generator.from_prototype "
            "or as the model's output_layers())"
        )


class _GroupTracer:
    """Turns Torch-Pruning's groups into named channel groups, records which group owns each output channel of
    the layers that produce it, and sets aside the groups that must stay whole."""

    def __init__(self, graph: _DependencyGraph, modules: dict[str, nn.Module], removable_blocks: list[str]) -> None:
        self.graph, self.modules, self.removable_blocks = graph, modules, removable_blocks
        self.names = {module: name for name, module in modules.items()}
        self.order = {name: index for index, name in enumerate(modules)}
        self.groups: list[ChannelGroup] = []
        self.module_channels: dict[str, ModuleChannels] = {}
        self.kept_whole: dict[str, str] = {}

    def add(self, tp_group) -> None:
        graph, root = self.graph, tp_group[0].dep.target.module
        targets = [item.dep.target for item in tp_group.items]
        if any(node.type == tp.ops.OPTYPE.OUTPUT for node in targets):
            self.kept_whole[self.names[root]] = "its channels reach the model's output (through a reshape or concatenation)"
            return
        if any(node.module in graph.barriers for node in targets):
            self.kept_whole[self.names[root]] = "its channels pass a reshape that splits the channel dimension (a channel shuffle)"
            return
        producers: dict[str, dict[int, int]] = {}  # layer -> its output channel -> the root channel it holds
        consumers, tiles = set(), 1
        for item in tp_group.items:
            module, out = item.dep.target.module, graph.is_out_channel_pruning_fn(item.dep.handler)
            tiles = math.lcm(tiles, self._tiles(item, out))
            if not isinstance(module, _CHANNEL_TYPES):
                continue
            if out:
                producers.setdefault(self.names[module], {}).update(zip(item.idxs, item.root_idxs))
            elif isinstance(module, PRUNABLE_TYPES):
                consumers.add(self.names[module])
        layers = sorted((p for p in producers if isinstance(self.modules[p], PRUNABLE_TYPES)), key=self.order.get)
        if not layers:
            return
        channels = graph.get_out_channels(root)
        if any(idx != root_idx for idx, root_idx in producers[layers[0]].items()) or len(producers[layers[0]]) != channels:
            raise ValueError(
                f"layer '{layers[0]}' holds the channels of '{self.names[root]}' in another order (a concatenation or split "
                f"between them); pass output_layers=[..., '{self.names[root]}'] to keep these channels"
            )
        if channels % tiles:
            raise ValueError(f"the {channels} channels of '{layers[0]}' do not split into {tiles} equal groups (conv groups, "
                             f"norm groups or attention heads); pass output_layers=[..., '{layers[0]}'] to keep them")
        size = channels // tiles
        for name, held in producers.items():
            owners = self.module_channels.setdefault(name, ModuleChannels(graph.get_out_channels(self.modules[name]), {})).owners
            owners.update({idx: (layers[0], root_idx % size) for idx, root_idx in held.items()})
        block = next((b for b in self.removable_blocks if all(p.startswith(b + ".") for p in producers)), None)
        self.groups.append(
            ChannelGroup(
                id=layers[0],
                size=size,
                producers=tuple(sorted(producers, key=self.order.get)),
                consumers=tuple(sorted(consumers, key=self.order.get)),
                block=block,
                tiles=tiles,
            )
        )

    def _tiles(self, item, out: bool) -> int:
        """How many equal blocks a layer splits these channels into (1: none): conv groups and norm groups as
        Torch-Pruning's pruners report them (a depthwise conv is pruned channel by channel), attention heads of
        ``nn.MultiheadAttention`` and of timm-style attention (``qkv`` and friends, split into heads by a reshape).
        The group's root must address the layer's channels directly, or equal blocks could not be kept."""
        module = item.dep.target.module
        if not isinstance(module, nn.Module):
            return 1
        name = self.names.get(module, "")
        if isinstance(module, nn.MultiheadAttention):
            tiles = module.num_heads
        elif isinstance(module, nn.Linear) and out and name.rpartition(".")[2] in _HEAD_PROJECTIONS:
            parent = self.modules[name.rpartition(".")[0]]
            head_dim = getattr(parent, "head_dim", None)
            tiles = module.out_features // head_dim if isinstance(head_dim, int) and module.out_features % head_dim == 0 else 1
        elif isinstance(module, nn.Conv2d) and module.groups == module.out_channels:
            tiles = 1
        else:
            pruner = self.graph.get_pruner_of_module(module)
            tiles = (pruner.get_out_channel_groups if out else pruner.get_in_channel_groups)(module) if pruner else 1
        if tiles > 1 and list(item.idxs) != list(item.root_idxs):
            raise ValueError(
                f"layer '{name}' splits its channels into {tiles} groups but reads them concatenated or split from "
                f"other layers; pass output_layers=[..., '{name}'] to keep them"
            )
        return tiles


def _sync_width_attributes(network: nn.Module) -> None:
    """Widths that modules keep in plain attributes their forward reads (not in a parameter's shape), re-derived
    after pruning: torchvision's VisionTransformer (``hidden_dim``) and timm-style attention (``head_dim``,
    ``attn_dim``); the attention scale keeps its value, so the network computes what its parent did."""
    for module in network.modules():
        qkv = getattr(module, "qkv", None)
        if isinstance(qkv, nn.Linear) and isinstance(getattr(module, "num_heads", None), int) and isinstance(getattr(module, "head_dim", None), int):
            module.head_dim = qkv.out_features // (3 * module.num_heads)
            if isinstance(getattr(module, "attn_dim", None), int):
                module.attn_dim = module.num_heads * module.head_dim
        if isinstance(getattr(module, "conv_proj", None), nn.Conv2d) and isinstance(getattr(module, "hidden_dim", None), int):
            module.hidden_dim = module.conv_proj.out_channels


def _output_shapes(model: nn.Module, input_shape: tuple[int, ...]) -> list[tuple[int, ...]]:
    """The shapes of every tensor in the model's output (a tensor, or a dict, list or tuple of them)."""
    return [tuple(t.shape) for t in output_tensors(_forward_with_hooks(model, input_shape, {}))]


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
