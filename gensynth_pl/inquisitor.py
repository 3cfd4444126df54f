"""The inquisitor I(G; θ_I): probes a generated network, keeps insights across cycles, emits Δθ_G.

Probing hooks the layers that produce each channel group. From the stimulus batches it observes the
responses (spatially pooled activations) and their loss gradients and derives, per channel:
  - loss sensitivity: first-order Taylor |Σ a · dL/da| (Molchanov et al. 2017),
  - response entropy: a channel that barely varies carries little information,
  - mutual information between the response and the class label (when targets are class labels),
  - redundancy: the largest |correlation| with a sibling channel of the same group,
  - magnitude: the mean absolute weight of the layers producing the channel,
and, from the outcome of each cycle, a per-group sensitivity and the compression step size. A pluggable
importance rule (``gensynth_pl.importance``) turns a channel's insights into one number.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from gensynth_pl.costs import Costs, MacCosts
from gensynth_pl.generator import DROP_LOGIT, KEEP_LOGIT, Generator, KeepLogits
from gensynth_pl.graph import NORM_TYPES, PRUNABLE_TYPES, Architecture, NetworkGraph
from gensynth_pl.importance import INSIGHTS, Importance, resolve_importance
from gensynth_pl.timing import emit, is_listened, timed


@dataclass
class ProbeResult:
    """What one probing pass observed, in the probed network's own channel order."""

    taylor: dict[str, Tensor]
    responses: dict[str, Tensor]
    targets: Tensor | None
    batches: int
    magnitude: dict[str, Tensor]


@dataclass(frozen=True)
class _Slice:
    """The channels of one layer's output that belong to one group: their positions in the layer's output and the
    position of the unit each belongs to among the group's kept units (the tiles of a unit share it)."""

    group: str
    positions: Tensor
    units: Tensor

    def to_units(self, values: Tensor, width: int, mean: bool = False) -> Tensor:
        """(batch, layer channels) -> (batch, group units): each unit's channels summed (or averaged)."""
        units = self.units.to(values.device)
        out = values.new_zeros(values.shape[0], width).index_add_(1, units, values[:, self.positions.to(values.device)])
        return out / torch.bincount(units, minlength=width).clamp_min(1) if mean else out


class Probe:
    """Hooks on the layers that produce each live group's channels (its norm layers if it has any, else its conv and
    linear layers); active between ``attach`` and ``detach``.

    A hooked layer's output is reduced to one value per channel along its channel axis (dim 1 for convolutions and
    batch/group norms, the last dim for linear layers and LayerNorm: tokens and channels-last maps) and each channel
    is credited to the unit of the group that owns it (``NetworkGraph.module_channels``), so a layer whose output
    concatenates several groups feeds each group its own slice."""

    def __init__(self, network: nn.Module, graph: NetworkGraph, arch: Architecture, max_responses: int) -> None:
        self.max_responses = max_responses
        self.taylor: dict[str, Tensor] = {}
        self.responses: dict[str, list[Tensor]] = {}
        self.targets: list[Tensor] = []
        self.batches = 0
        self._handles = []
        modules = dict(network.named_modules())
        live = graph.live_groups(arch)
        self.widths = {g: len(arch.channels[g]) for g in live}
        layouts = {
            name: channels.kept(arch, live) for name, channels in graph.module_channels.items() if name in modules
        }
        self._weights: dict[str, list[tuple[nn.Module, _Slice]]] = {}  # each group's producing conv/linear layers
        taps: dict[str, list[_Slice]] = {}
        responding: dict[str, str] = {}  # group -> the layer whose responses it records
        for group_id in (g for g in graph.groups if g in live):
            producers = [p for p in graph.groups[group_id].producers if p in layouts]
            weighted = [p for p in producers if isinstance(modules[p], PRUNABLE_TYPES)]
            self._weights[group_id] = [(modules[p], _slice(layouts[p], group_id)) for p in weighted]
            hooked = [p for p in producers if isinstance(modules[p], NORM_TYPES)] or weighted
            for name in hooked:
                taps.setdefault(name, []).append(_slice(layouts[name], group_id))
            if hooked:
                responding[group_id] = hooked[0]
        for name, slices in taps.items():
            hook = self._make_hook(name, len(layouts[name]), slices, responding)
            self._handles.append(modules[name].register_forward_hook(hook))

    def _make_hook(self, name: str, width: int, slices: list[_Slice], responding: dict[str, str]):
        def hook(module: nn.Module, inputs, output: Tensor) -> None:
            if not torch.is_grad_enabled() or not isinstance(output, Tensor) or not output.requires_grad:
                return
            with timed("probe"):
                activation = output.detach().clone()  # an in-place activation may overwrite ``output`` later
                axis = channel_axis(name, module, activation, width)
                for part in slices:
                    stored = self.responses.setdefault(part.group, [])
                    if responding[part.group] == name and sum(len(r) for r in stored) < self.max_responses:
                        pooled = per_channel(activation, axis, mean=True)
                        stored.append(part.to_units(pooled, self.widths[part.group], mean=True).float().cpu())

            def accumulate(grad: Tensor) -> None:
                start = time.perf_counter() if is_listened() else 0.0
                per_sample = per_channel(activation * grad, axis)
                for part in slices:
                    value = part.to_units(per_sample, self.widths[part.group]).abs().sum(0).float().cpu()
                    self.taylor[part.group] = self.taylor.get(part.group, 0) + value
                if start:
                    emit("probe", time.perf_counter() - start)

            output.register_hook(accumulate)

        return hook

    def record_targets(self, batch: object) -> None:
        """Keep image-level class labels (``(x, y)`` batches with integer ``y``) for mutual information."""
        self.batches += 1
        if isinstance(batch, (tuple, list)) and len(batch) >= 2:
            target = batch[1]
            if isinstance(target, Tensor) and target.dim() == 1 and not target.is_floating_point():
                self.targets.append(target.detach().cpu())

    @timed("probe")
    def detach(self) -> ProbeResult:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        magnitude = {g: self._mean_abs_weight(g, layers) for g, layers in self._weights.items() if layers}
        responses = {g: torch.cat(r)[: self.max_responses] for g, r in self.responses.items() if r}
        targets = torch.cat(self.targets) if self.targets else None
        if targets is not None and responses and len(targets) != len(next(iter(responses.values()))):
            targets = targets[: min(len(r) for r in responses.values())]
            responses = {g: r[: len(targets)] for g, r in responses.items()}
        batches = max(self.batches, 1)
        taylor = {g: t / batches for g, t in self.taylor.items()}
        return ProbeResult(taylor, responses, targets, self.batches, magnitude)

    def _mean_abs_weight(self, group_id: str, layers: list[tuple[nn.Module, _Slice]]) -> Tensor:
        """Mean |w| of each unit's output channels, averaged over the group's producing layers."""
        per_layer = [
            part.to_units(layer.weight.detach().abs().flatten(1).mean(1)[None].float().cpu(), self.widths[group_id], mean=True)[0]
            for layer, part in layers
        ]
        return torch.stack(per_layer).mean(0)


def _slice(layout: list[tuple[str, int] | None], group_id: str) -> _Slice:
    """The positions of ``group_id``'s channels in a layer's output (``ModuleChannels.kept``) and their units."""
    pairs = [(position, owner[1]) for position, owner in enumerate(layout) if owner is not None and owner[0] == group_id]
    positions, units = zip(*pairs) if pairs else ((), ())
    return _Slice(group_id, torch.tensor(positions, dtype=torch.long), torch.tensor(units, dtype=torch.long))


def channel_axis(name: str, module: nn.Module, output: Tensor, width: int) -> int:
    """The axis of ``output`` that holds the layer's ``width`` channels: dim 1 for convolutions and batch/group norms
    (and LayerNorm subclasses that normalise channels-first maps, such as LayerNorm2d), the last dim for linear
    layers and LayerNorm; otherwise the one non-batch axis of that size."""
    channels_first = isinstance(module, (nn.Conv2d, nn.modules.batchnorm._BatchNorm, nn.GroupNorm)) or (
        isinstance(module, nn.LayerNorm) and type(module).forward is not nn.LayerNorm.forward
    )
    preferred = 1 if channels_first else output.dim() - 1
    if output.dim() > 1 and output.shape[preferred] == width:
        return preferred
    matching = [axis for axis in range(1, output.dim()) if output.shape[axis] == width]
    if len(matching) != 1:
        raise ValueError(f"cannot tell which axis of layer '{name}''s output {tuple(output.shape)} holds its {width} channels")
    return matching[0]


def per_channel(values: Tensor, axis: int, mean: bool = False) -> Tensor:
    """(batch, ..., channels at ``axis``, ...) -> (batch, channels): summed (or averaged) over every other axis."""
    moved = values.movedim(axis, -1)
    flat = moved.reshape(moved.shape[0], -1, moved.shape[-1])
    return flat.mean(1) if mean else flat.sum(1)


@dataclass
class CycleOutcome:
    passed: bool
    margin: float  # metric distance above (positive) or below (negative) the gate bound
    cut: float = 0.0  # the fraction of the parent's cost the candidate really removed (rounding moves it off the step)


class Inquisitor:
    """θ_I: insight estimates per prototype channel, per-group sensitivities and the step size.

    ``step`` is the fraction of the parent's cost (MACs, or time with latency costs) the next candidate should drop; it grows by ``growth``
    (up to ``max_step``) after a pass with at least ``comfortable_margin`` to spare and halves (down to
    ``min_step``) after a failure. Keep-logits are ``sharpness · ln(score / threshold)``; insights are
    running averages that keep ``memory`` of their past; responses are binned into ``bins`` for the
    information measures, from at most ``max_responses`` probed samples; ``importance`` names the rule that
    turns insights into a channel's importance (``gensynth_pl.importance.IMPORTANCES``) or is one.
    """

    def __init__(
        self,
        step: float = 0.3,
        min_step: float = 0.02,
        max_step: float = 0.5,
        growth: float = 1.5,
        comfortable_margin: float = 0.01,
        sharpness: float = 8.0,
        memory: float = 0.5,
        bins: int = 16,
        max_responses: int = 2048,
        importance: str | Importance = "information",
    ) -> None:
        checks = {
            "step": 0 < step < 1,
            "min_step": 0 < min_step <= step,
            "max_step": step <= max_step < 1,
            "growth": growth >= 1,
            "sharpness": sharpness > 0,
            "memory": 0 <= memory < 1,
            "bins": bins >= 2,
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(
                    f"inquisitor.{name}={locals()[name]} is invalid: need 0 < min_step <= step <= max_step < 1, "
                    "growth >= 1, sharpness > 0, 0 <= memory < 1, bins >= 2"
                )
        self.step, self.min_step, self.max_step, self.growth = step, min_step, max_step, growth
        self.comfortable_margin, self.sharpness, self.memory = comfortable_margin, sharpness, memory
        self.bins, self.max_responses = bins, max_responses
        self.importance = resolve_importance(importance)
        self.insights: dict[str, dict[str, Tensor]] = {}
        self.group_sensitivity: dict[str, float] = {}
        self.block_sensitivity: dict[str, float] = {}

    # --- probing -------------------------------------------------------------------------------
    def attach(self, network: nn.Module, graph: NetworkGraph, arch: Architecture) -> Probe:
        return Probe(network, graph, arch, self.max_responses)

    @timed("measure")
    def measure(self, result: ProbeResult) -> dict[str, dict[str, Tensor]]:
        """Per-channel insights of one probe, in the probed network's channel order (ranks average these)."""
        measured = {}
        for group_id, taylor in result.taylor.items():
            responses = result.responses.get(group_id)
            values = {name: torch.zeros_like(taylor) for name in INSIGHTS}
            values["taylor"] = taylor
            if group_id in result.magnitude:
                values["magnitude"] = result.magnitude[group_id]
            if responses is not None and len(responses) > 1:
                values["entropy"], values["mutual_info"] = self._information(responses, result.targets)
                values["redundancy"] = _redundancy(responses)
            measured[group_id] = values
        return measured

    @timed("fold")
    def fold(self, measured: dict[str, dict[str, Tensor]], graph: NetworkGraph, arch: Architecture) -> None:
        """Fold the insights of an accepted network into the running estimates (prototype channel order)."""
        for group_id, values in measured.items():
            kept = torch.tensor(arch.channels[group_id])
            store = self.insights.setdefault(
                group_id, {name: torch.zeros(graph.groups[group_id].size) for name in (*INSIGHTS, "seen")}
            )
            seen = store["seen"][kept] > 0
            for name, value in values.items():
                old = store[name][kept]
                store[name][kept] = torch.where(seen, self.memory * old + (1 - self.memory) * value, value)
            store["seen"][kept] = 1.0

    def fold_probe(self, result: ProbeResult, graph: NetworkGraph, arch: Architecture,
                   mean: Callable[[Tensor], Tensor] = lambda value: value) -> None:
        """Measure an accepted network's probe and fold it in; ``mean`` averages each insight over processes (DDP)
        so that every one learns the same."""
        measured = {g: {name: mean(value) for name, value in values.items()} for g, values in self.measure(result).items()}
        self.fold(measured, graph, arch)

    def _information(self, responses: Tensor, targets: Tensor | None) -> tuple[Tensor, Tensor]:
        """Normalised response entropy and mutual information with the label, from binned responses."""
        low, high = responses.min(0).values, responses.max(0).values
        span = (high - low).clamp_min(1e-12)
        bins = ((responses - low) / span * self.bins).long().clamp(0, self.bins - 1).T  # (C, N)
        entropy = _entropy(bins, self.bins) / math.log(self.bins)
        entropy = torch.where(high - low > 1e-6 * (high.abs() + 1), entropy, torch.zeros_like(entropy))
        if targets is None:
            return entropy, torch.zeros_like(entropy)
        classes = targets.unique()
        if len(classes) < 2:
            return entropy, torch.zeros_like(entropy)
        conditional = torch.zeros(bins.shape[0])
        for label in classes:
            mask = targets == label
            conditional += mask.float().mean() * _entropy(bins[:, mask], self.bins)
        raw_entropy = entropy * math.log(self.bins)
        mutual_info = (raw_entropy - conditional).clamp_min(0) / math.log(min(self.bins, len(classes)))
        return entropy, mutual_info

    # --- learning from outcomes ----------------------------------------------------------------
    @timed("learn")
    def learn(self, outcome: CycleOutcome, parent_arch: Architecture, child_arch: Architecture) -> None:
        """Adapt the step size to what the candidate really cut, and protect the groups/blocks that a failing
        candidate cut deepest: a pass with margin grows the larger of the step and the cut; a failure halves the
        cut that failed (the step, if nothing was cut)."""
        if outcome.passed:
            if outcome.margin >= self.comfortable_margin:
                self.step = min(self.max_step, max(self.step, outcome.cut))
                self.grow_step()
            for table in (self.group_sensitivity, self.block_sensitivity):
                for key in table:
                    table[key] = 1.0 + 0.8 * (table[key] - 1.0)
            return
        self.step = max(self.min_step, (outcome.cut if outcome.cut > 0 else self.step) / 2)
        for group_id, kept in parent_arch.channels.items():
            if kept and group_id in child_arch.channels:
                cut = 1.0 - len(set(child_arch.channels[group_id]) & set(kept)) / len(kept)
                self.group_sensitivity[group_id] = self.group_sensitivity.get(group_id, 1.0) * (1.0 + cut)
        for block in set(child_arch.removed_blocks) - set(parent_arch.removed_blocks):
            self.block_sensitivity[block] = self.block_sensitivity.get(block, 1.0) * 2.0

    def grow_step(self) -> bool:
        """Compress faster; False when the step is already at ``max_step``."""
        grown = min(self.max_step, self.step * self.growth)
        changed, self.step = grown > self.step, grown
        return changed

    # --- θ_G targets ---------------------------------------------------------------------------
    def channel_importance(self, group_id: str, indices: list[int]) -> Tensor:
        """Estimated information carried by the given prototype channels of a group (higher = keep)."""
        store = self.insights.get(group_id)
        if store is None:
            return torch.ones(len(indices))
        idx = torch.tensor(indices)
        importance = self.importance({name: values[idx] for name, values in store.items() if name != "seen"})
        return importance * self.group_sensitivity.get(group_id, 1.0)

    @timed("propose")
    def propose(
        self,
        generator: Generator,
        macs: dict[str, int],
        parent_cost: float,
        aim: float = 1.0,
        base: tuple[Architecture, nn.Module] | None = None,
        step: float | None = None,
        costs: Costs = MacCosts(),
    ) -> KeepLogits:
        """The keep-logits θ_G should take so that sampling drops ~``step`` (the inquisitor's own by default) of the
        cost (``costs``: MACs by default; ``parent_cost`` in its unit) of ``base`` (an accepted network, the parent by
        default; ``macs`` is its profile), lowest information-per-cost first.

        Targets are θ_u = sharpness · ln(score_u / b), score = importance per MAC; the threshold b is set so
        that the MACs saved *in expectation under sampling* match ``aim`` x the step (the caller's correction for
        what the linear cost estimate and rounding make of it). Channels the parent no longer has get DROP_LOGIT;
        each group's most informative channels up to its floor get KEEP_LOGIT.
        """
        parent_arch, parent = base or (generator.parent_arch, generator.parent)
        graph, modules = generator.graph, dict(parent.named_modules())
        live = [g for g in graph.groups.values() if g.block not in parent_arch.removed_blocks]
        scores, costs_of, protected = {}, {}, {}
        for group in live:
            kept = parent_arch.channels[group.id]
            costs_of[group.id] = costs.channel(group, modules, macs)
            scores[group.id] = self.channel_importance(group.id, kept).clamp_min(1e-30) / costs_of[group.id]
            floor = min(generator.min_width(group.id), len(kept))  # the most informative channels always stay
            protected[group.id] = torch.zeros(len(kept), dtype=torch.bool)
            protected[group.id][torch.topk(scores[group.id], floor).indices] = True
        block_scores, block_costs = {}, {}
        for block in graph.removable_blocks:
            if block not in parent_arch.removed_blocks and macs.get(block):
                inner = [g for g in live if g.block == block]
                importance = sum(float(self.channel_importance(g.id, parent_arch.channels[g.id]).sum()) for g in inner)
                block_costs[block] = max(costs.block(block, modules, macs), 1e-9)
                block_scores[block] = max(importance, 1e-30) * self.block_sensitivity.get(block, 1.0) / block_costs[block]

        def expected_saving(log_threshold: float) -> float:
            threshold = math.exp(log_threshold)
            keep_block = {b: torch.sigmoid(self._logits(torch.tensor([s]), threshold))[0] for b, s in block_scores.items()}
            saved = sum((1 - p) * block_costs[b] for b, p in keep_block.items())
            for group in live:
                drop = 1 - torch.sigmoid(self._logits(scores[group.id], threshold))
                drop[protected[group.id]] = 0
                saved += float(drop.sum()) * costs_of[group.id] * float(keep_block.get(group.block, 1.0))
            return float(saved)

        all_scores = torch.cat([*scores.values(), torch.tensor(list(block_scores.values()) or [1.0])]).log()
        low, high = float(all_scores.min()) - 5.0, float(all_scores.max()) + 5.0
        budget = min((self.step if step is None else step) * aim, 0.95) * parent_cost
        for _ in range(40):  # bisection: expected saving grows with the threshold
            middle = (low + high) / 2
            low, high = (middle, high) if expected_saving(middle) < budget else (low, middle)
        threshold = math.exp(high)

        channels = {}
        for group_id, group in graph.groups.items():
            target = torch.full((group.size,), DROP_LOGIT)
            if group_id in scores:
                kept = torch.tensor(parent_arch.channels[group_id])
                target[kept] = torch.where(protected[group_id], KEEP_LOGIT, self._logits(scores[group_id], threshold))
            channels[group_id] = target
        blocks = {}
        for block in graph.removable_blocks:
            blocks[block] = DROP_LOGIT
            if block not in parent_arch.removed_blocks:
                blocks[block] = float(self._logits(torch.tensor([block_scores.get(block, math.inf)]), threshold)[0])
        return KeepLogits(channels, blocks)

    def _logits(self, scores: Tensor, threshold: float) -> Tensor:
        ratio = (scores / threshold).clamp_min(1e-30)
        return (self.sharpness * torch.log(ratio)).clamp(DROP_LOGIT, KEEP_LOGIT)

    # --- checkpointing -------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "step": self.step,
            "insights": {g: {k: v.clone() for k, v in s.items()} for g, s in self.insights.items()},
            "group_sensitivity": dict(self.group_sensitivity),
            "block_sensitivity": dict(self.block_sensitivity),
        }

    def load_state_dict(self, state: dict) -> None:
        self.step = state["step"]
        self.insights = {g: {k: v.clone() for k, v in s.items()} for g, s in state["insights"].items()}
        self.group_sensitivity = dict(state["group_sensitivity"])
        self.block_sensitivity = dict(state["block_sensitivity"])


def _entropy(bins: Tensor, num_bins: int) -> Tensor:
    """Shannon entropy (nats) of each row of integer bin indices."""
    counts = torch.zeros(bins.shape[0], num_bins).scatter_add_(1, bins, torch.ones_like(bins, dtype=torch.float))
    p = counts / counts.sum(1, keepdim=True).clamp_min(1)
    return -(p * torch.log(p.clamp_min(1e-12))).sum(1)


def _redundancy(responses: Tensor) -> Tensor:
    """Largest absolute correlation of each channel's response with another channel of its group."""
    if responses.shape[1] < 2:
        return torch.zeros(responses.shape[1])
    centred = responses - responses.mean(0)
    norm = centred.norm(dim=0).clamp_min(1e-12)
    correlation = (centred.T @ centred) / (norm[:, None] * norm[None, :])
    correlation.fill_diagonal_(0)
    return correlation.abs().max(1).values.clamp(0, 1)
