"""The generator G(s; θ_G): keep-logits over the prototype's channels and removable blocks.

``sample(seed)`` draws an architecture spec deterministically from θ_G; ``build(spec)`` materialises it
as a physically smaller module that inherits the weights of its nearest accepted ancestor: the
generator keeps the lineage of accepted networks, from the prototype φ to the current parent.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from gensynth_pl.graph import Architecture, NetworkGraph
from gensynth_pl.recipes import instantiate_trusted
from gensynth_pl.tensorfile import is_safetensors, load_tensor_file, load_torch_file, save_tensor_file
from gensynth_pl.timing import timed
from gensynth_pl.torch_utils import brief, cpu_state_dict

KEEP_LOGIT = 20.0  # G_0 keeps every channel: a channel is dropped with probability sigmoid(-20) ~ 2e-9
DROP_LOGIT = -20.0  # channels a parent no longer has


FILE_FORMAT = "gensynth-generator/3"  # safetensors: tensors, plus the plain data as JSON
LEGACY_FORMAT = "gensynth-generator/2"  # older versions' torch pickle of tensors and plain data, still read
FILE_KEYS = ("prototype_config", "input_shape", "output_layers", "removable_blocks", "min_channels", "channel_multiple",
             "state", "extra")
STATE_KEYS = ("channel_logits", "block_logits", "passing_logits", "lineage")


@dataclass
class KeepLogits:
    """θ_G as the inquisitor proposes it: a keep-logit per prototype channel (per group) and per removable block."""

    channels: dict[str, Tensor]
    blocks: dict[str, float]


class Generator:
    """θ_G plus the lineage of accepted networks it inherits weights from (φ first, the parent last)."""

    def __init__(
        self,
        prototype: nn.Module,
        graph: NetworkGraph,
        min_channels: float = 0.1,
        prototype_config: dict | None = None,
        channel_multiple: int = 1,
    ) -> None:
        if not 0.0 < min_channels <= 1.0:
            raise ValueError(f"min_channels={min_channels} must be a fraction in (0, 1]")
        if not isinstance(channel_multiple, int) or channel_multiple < 1:
            raise ValueError(f"channel_multiple={channel_multiple!r} must be an integer >= 1 (1: no rounding)")
        self.prototype = copy.deepcopy(prototype)
        self.prototype_config = prototype_config
        self.graph = graph
        self.min_channels = min_channels
        self.channel_multiple = channel_multiple
        self.channel_logits = {g: torch.full((grp.size,), KEEP_LOGIT) for g, grp in self.graph.groups.items()}
        self.block_logits = {b: KEEP_LOGIT for b in self.graph.removable_blocks}
        self.lineage: list[tuple[Architecture, nn.Module]] = [(self.graph.full_architecture(), self.prototype)]
        self._passing_logits = self._logits_copy()

    @classmethod
    def from_prototype(
        cls,
        prototype: nn.Module,
        input_shape: tuple[int, ...],
        output_layers: list[str] | None = None,
        removable_blocks: list[str] | None = None,
        min_channels: float = 0.1,
        prototype_config: dict | None = None,
        channel_multiple: int = 1,
    ) -> "Generator":
        """G_0 for a prototype: traces its channel groups and keeps everything."""
        graph = NetworkGraph.trace(prototype, input_shape, output_layers, removable_blocks)
        return cls(prototype, graph, min_channels, prototype_config, channel_multiple)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.graph.input_shape

    @property
    def parent(self) -> nn.Module:
        """The last accepted network: the one the inquisitor probes and Δθ_G compresses further."""
        return self.lineage[-1][1]

    @property
    def parent_arch(self) -> Architecture:
        return self.lineage[-1][0]

    def min_width(self, group_id: str) -> int:
        return max(1, math.ceil(self.min_channels * self.graph.groups[group_id].size))

    @timed("sample")
    def sample(self, seed: int, temperature: float = 1.0, base: Architecture | None = None) -> Architecture:
        """Draw an architecture: unit u kept iff θ_u / T + logistic noise(seed) > 0 (Bernoulli(σ(θ/T))), then
        each group's width is brought to its floor and rounded to a ``channel_multiple`` by keeping or dropping
        its most or least likely channels (rounding up revives only channels of ``base``, the accepted network
        the logits were proposed for: the parent by default)."""
        base = base or self.parent_arch
        rng = torch.Generator().manual_seed(int(seed))
        blocks = {b: _bernoulli_keep(torch.tensor([logit]), rng, temperature).item() for b, logit in self.block_logits.items()}
        drawn = {g: _bernoulli_keep(logits, rng, temperature) for g, logits in self.channel_logits.items()}
        channels = {}
        for group_id, keep in drawn.items():  # rounding draws after all channels: the same draws for any multiple
            drawn_width = int(keep.sum())
            width = self._allowed_width(group_id, drawn_width, rng)
            if width != drawn_width:
                keep = _keep_most_likely(keep, self.channel_logits[group_id], base.channels[group_id], width)
            channels[group_id] = keep.nonzero().flatten().tolist()
        return Architecture(channels, sorted(b for b, kept in blocks.items() if not kept))

    def multiple(self, group_id: str) -> int:
        """The group's rounding multiple: ``channel_multiple``, halved until it is at most a quarter of the group's
        prototype width (a 16-channel group rounds to 4, not to 8 or 16)."""
        multiple, size = self.channel_multiple, self.graph.groups[group_id].size
        while multiple > 1 and 4 * multiple > size:
            multiple //= 2
        return multiple

    def _allowed_width(self, group_id: str, drawn: int, rng: torch.Generator) -> int:
        """At least the group's floor, and a multiple of the group's rounding ``multiple`` (or its full size).

        Rounding is stochastic and unbiased (up with probability equal to the remainder's fraction), so the
        expected saving the inquisitor aimed for survives rounding: nearest-rounding would turn every small
        step back into the parent. Accepted parents have rounded widths, so rounding never exceeds the parent.
        """
        size, multiple, floor = self.graph.groups[group_id].size, self.multiple(group_id), self.min_width(group_id)
        width = max(drawn, floor)
        if multiple > 1:
            up = torch.rand((), generator=rng).item() < (width % multiple) / multiple
            width = max(multiple * (width // multiple + up), multiple * math.ceil(floor / multiple))
        return min(width, size)

    @timed("build")
    def build(self, arch: Architecture) -> nn.Module:
        """Materialise ``arch`` from the most recent accepted network that still has all its channels."""
        source_arch, source = next((a, n) for a, n in reversed(self.lineage) if a.contains(arch))
        return self.graph.materialize(source, source_arch, arch)

    @timed("update")
    def update(self, logits: KeepLogits) -> None:
        """G_{k+1}: θ_G takes the keep-logits the inquisitor proposed (G_k + Δθ_G, with Δθ_G = proposal − θ_G)."""
        if set(logits.channels) != set(self.channel_logits) or set(logits.blocks) != set(self.block_logits):
            raise ValueError("proposed keep-logits do not match this generator's channel groups and blocks")
        self.channel_logits = {g: t.detach().clone().float() for g, t in logits.channels.items()}
        self.block_logits = {b: float(v) for b, v in logits.blocks.items()}

    def accept(self, arch: Architecture, network: nn.Module) -> None:
        """``network`` passed the gate: it becomes the parent and this θ_G the last passing generator."""
        self.graph.check(arch)
        self.lineage.append((arch, network))
        self._passing_logits = self._logits_copy()

    def rollback(self) -> None:
        """Return θ_G to the last generator whose network passed the gate."""
        self.channel_logits = {g: t.clone() for g, t in self._passing_logits[0].items()}
        self.block_logits = dict(self._passing_logits[1])

    def _logits_copy(self) -> tuple[dict[str, Tensor], dict[str, float]]:
        return {g: t.clone() for g, t in self.channel_logits.items()}, dict(self.block_logits)

    def state_dict(self) -> dict:
        return {
            "channel_logits": {g: t.clone() for g, t in self.channel_logits.items()},
            "block_logits": dict(self.block_logits),
            "passing_logits": self._passing_logits,
            "lineage": [
                (arch.to_dict(), cpu_state_dict(network)) for arch, network in self.lineage
            ],
        }

    def load_state_dict(self, state: dict) -> None:
        if set(state["channel_logits"]) != set(self.channel_logits) or any(
            state["channel_logits"][g].shape != t.shape for g, t in self.channel_logits.items()
        ):
            raise ValueError("generator state was learned on a different prototype (channel groups differ)")
        lineage = []
        for arch_dict, weights in state["lineage"]:
            arch = Architecture.from_dict(arch_dict)
            lineage.append((arch, self.graph.rebuild(self.prototype, arch, weights)))
        self.prototype = lineage[0][1]
        self.channel_logits = {g: t.clone() for g, t in state["channel_logits"].items()}
        self.block_logits = dict(state["block_logits"])
        self._passing_logits = state["passing_logits"]
        self.lineage = lineage

    def save(self, path: str | Path, extra: dict | None = None) -> None:
        """Write a generator file that cannot carry code (safetensors: tensors, and plain data as JSON): the
        prototype's recipe, graph settings, θ_G, the lineage's specs and weights, and ``extra`` (plain data and
        tensors)."""
        data = {
            "prototype_config": self.prototype_config,
            "input_shape": list(self.input_shape),
            "output_layers": self.graph.output_layers,
            "removable_blocks": self.graph.removable_blocks,
            "min_channels": self.min_channels,
            "channel_multiple": self.channel_multiple,
            "state": self.state_dict(),
            "extra": extra or {},
        }
        save_tensor_file(path, data, FILE_FORMAT)

    @classmethod
    def load(
        cls,
        path: str | Path,
        prototype: nn.Module | None = None,
        trusted_targets: Iterable[str] = (),
        trust_recipe: bool = False,
    ) -> tuple["Generator", dict]:
        """Load a generator file written by ``save`` (or an older version's ``generator.pt``); returns the generator
        and the ``extra`` it was saved with.

        The prototype is re-created from the recipe in the file (a Hydra ``_target_`` config) only if every target
        in it is on the allow-list of gensynth_pl.recipes, or in ``trusted_targets``, or ``trust_recipe`` (you
        trust the whole file); or pass the prototype module yourself (its weights do not matter): a generator of a
        prototype without a recipe needs it."""
        path = Path(path)
        data = read_generator_file(path)
        if prototype is None:
            if not data["prototype_config"]:
                raise ValueError(f"{path} has no prototype recipe; pass the prototype module: Generator.load(path, prototype)")
            prototype = instantiate_trusted(data["prototype_config"], "prototype", f"{path} (prototype_config)",
                                            trusted_targets, trust_recipe)
        try:
            generator = cls.from_prototype(
                prototype,
                tuple(data["input_shape"]),
                data["output_layers"],
                data["removable_blocks"],
                data["min_channels"],
                data["prototype_config"],
                data["channel_multiple"],
            )
            generator.load_state_dict(data["state"])
        except (ValueError, TypeError, KeyError, IndexError, RuntimeError) as error:
            raise ValueError(
                f"{path}: its networks do not fit its prototype ({brief(error)}); the file is damaged, "
                "or the prototype passed in is not the one it was learned on"
            ) from error
        return generator, data["extra"]


def read_generator_file(path: Path) -> dict:
    """A generator file's plain data and tensors, checked to hold every key ``Generator.load`` needs."""
    if not path.is_file():
        raise FileNotFoundError(f"generator file {path} does not exist; point to the generator.safetensors of a finished run")
    fix = "it is not a complete gensynth-pl generator file: copy it again, or save the generator again"
    if is_safetensors(path):
        data = load_tensor_file(path, FILE_FORMAT, fix)
    else:
        data = load_torch_file(path, f"{path.name} is not a gensynth-pl generator file that can be opened safely")
        if not isinstance(data, dict) or data.get("format") != LEGACY_FORMAT:
            raise ValueError(f"{path} is not a gensynth-pl generator file ({FILE_FORMAT} or {LEGACY_FORMAT})")
    missing = [key for key in FILE_KEYS if key not in data]
    state = data.get("state")
    missing += [f"state.{key}" for key in STATE_KEYS if isinstance(state, dict) and key not in state]
    if missing or not isinstance(state, dict):
        raise ValueError(f"{path} lacks {missing or ['state']}: {fix}")
    return data


def _keep_most_likely(drawn: Tensor, logits: Tensor, parent: list[int], width: int) -> Tensor:
    """``width`` channels: the drawn ones, then the parent's other channels, then the rest, each by descending
    logit, so that rounding up inherits the parent's weights instead of reviving channels it no longer has."""
    in_parent = torch.zeros_like(drawn)
    in_parent[parent] = True
    tiers = (drawn, in_parent & ~drawn, ~in_parent & ~drawn)
    ranked = [idx[logits[idx].argsort(descending=True, stable=True)] for idx in (t.nonzero().flatten() for t in tiers)]
    keep = torch.zeros_like(drawn)
    keep[torch.cat(ranked)[:width]] = True
    return keep


def _bernoulli_keep(logits: Tensor, rng: torch.Generator, temperature: float) -> Tensor:
    uniform = torch.rand(logits.shape, generator=rng).clamp(1e-7, 1 - 1e-7)
    logistic_noise = torch.log(uniform) - torch.log1p(-uniform)
    return logits / temperature + logistic_noise > 0
