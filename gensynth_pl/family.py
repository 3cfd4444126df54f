"""A family of networks from one learned generator: one search, then the network for each budget.

For a budget (MACs or params; a fraction of φ's when at most 1, else absolute) the builder starts from the
nearest accepted ancestor at least that large, lets the inquisitor rank its channels and blocks by what
they carry per MAC, and aims the cut until the materialised network is within ``tolerance`` of the budget.
Samples differ only where the inquisitor is unsure (channels near its threshold): different seeds give
different networks of the same size, and a sample that repeats an earlier member is redrawn.
"""
from __future__ import annotations

import copy
import itertools
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import lightning as L
from torch import nn

from gensynth_pl.gates import Requirements
from gensynth_pl.generator import Generator
from gensynth_pl.graph import Architecture, NetworkGraph
from gensynth_pl.inquisitor import Inquisitor
from gensynth_pl.metrics import count_macs, count_params, macs_per_module
from gensynth_pl.module import Recipe
from gensynth_pl.proposer import aim_cut
from gensynth_pl.referee import Referee
from gensynth_pl.members import EPOCH_LIMIT, REJECTED_EARLY, finish_member, write_family

TARGET_UNITS = ("macs", "params")  # what a family target counts
AIM_ATTEMPTS = 14  # proposals at most while aiming a member's cut at its target
REDRAWS = 8  # seeds tried for a member that differs from the others
LARGER_BASES = 2  # further ancestors a member may be cut from when the nearest one yields nothing new
REDRAW_HEAT = 0.25  # each redraw samples at a temperature this fraction (of family.temperature) hotter


@dataclass
class Member:
    """One network of the family: the budget it was built for and what it came out as (not yet fine-tuned)."""

    name: str
    target: int  # the budget, in the builder's unit
    cost: int  # the network's MACs or params
    arch: Architecture
    network: nn.Module
    seed: int
    reached: bool  # within tolerance of the target (False: the closest network the generator can build)
    temperature: float  # what it was sampled at (with ``seed``: how to draw it again)

    @property
    def deviation(self) -> float:
        return self.cost / self.target - 1.0


class FamilyBuilder:
    """Networks for budgets from a learned generator and the inquisitor's insights (both left unchanged)."""

    def __init__(
        self, generator: Generator, inquisitor: Inquisitor, budget: str = "macs", tolerance: float = 0.05,
        temperature: float = 1.0,
    ) -> None:
        if budget not in TARGET_UNITS:
            raise ValueError(f"family.budget={budget!r} must be one of {TARGET_UNITS}")
        if not 0 < tolerance < 1 or temperature <= 0:
            raise ValueError(f"family.tolerance={tolerance} must be in (0, 1) and family.temperature={temperature} > 0")
        self.generator, self.inquisitor = generator, inquisitor
        self.budget, self.tolerance, self.temperature = budget, tolerance, temperature
        self.input_shape = generator.input_shape
        self._costs = [self.cost(network) for _, network in generator.lineage]

    def cost(self, network: nn.Module) -> int:
        return count_macs(network, self.input_shape) if self.budget == "macs" else count_params(network)

    @property
    def prototype_cost(self) -> int:
        return self._costs[0]

    def resolve(self, target: float) -> int:
        """A budget as a number of MACs/params: fractions (<= 1) are of φ's."""
        if target <= 0:
            raise ValueError(f"family target {target} must be > 0 (a fraction of the prototype's {self.budget}, or a count)")
        return round(target * self.prototype_cost) if target <= 1 else int(target)

    def member(self, name: str, target: int, seed: int = 0, avoid: list[Architecture] = (),
               near: bool = False) -> Member | None:
        """The network for ``target``; a draw that builds the architecture of one of ``avoid`` again (the same
        widths, whichever channels it keeps) or, when ``near``, misses the target's tolerance, is redrawn with the
        next seed: ``REDRAWS`` from the nearest ancestor, then half as many from each of the next ``LARGER_BASES``
        larger ones (a network cut from another ancestor differs more). None when every draw fails: no further
        distinct network exists near this budget."""
        draws = [(0, attempt) for attempt in range(REDRAWS)]
        draws += [(skip, attempt) for skip in range(1, LARGER_BASES + 1) for attempt in range(REDRAWS // 2)]
        for skip, attempt in draws:
            # each redraw a little hotter, so that repeated draws spread beyond the channels nearest the threshold
            temperature = self.temperature * (1 + attempt * REDRAW_HEAT)
            member = self._aimed(name, target, seed + attempt * 7_919, avoid, skip, temperature)
            distinct = not any(self.generator.graph.same_shape(member.arch, other) for other in avoid)
            if distinct and (member.reached or not near):
                return member
        return None

    def trained(self, arch: Architecture) -> nn.Module | None:
        """A copy of the latest accepted network of this architecture (its trained, polished weights), if any."""
        same = [network for a, network in self.generator.lineage if self.generator.graph.same_network(a, arch)]
        return copy.deepcopy(same[-1]) if same else None

    def _base(self, target: int, avoid: list[Architecture], skip: int = 0) -> tuple[Architecture, nn.Module, int]:
        """The nearest accepted ancestor at least as large as the target (the prototype when none is) whose
        architecture is not one of ``avoid``'s (so that around an accepted network's own budget the members differ
        from it); ``skip``: the next larger ones instead (a network cut from another ancestor differs more), up to
        the prototype."""
        graph = self.generator.graph
        fits = sorted(  # by cost; ties: the latest first (the polished answer before its unpolished self)
            ((cost, -index) for index, cost in enumerate(self._costs)
             if cost >= target and (index == 0 or not any(graph.same_shape(self.generator.lineage[index][0], a) for a in avoid))),
        ) or [(self._costs[0], 0)]
        cost, latest_first = fits[min(skip, len(fits) - 1)]
        arch, network = self.generator.lineage[-latest_first]
        return arch, network, cost

    def _aimed(self, name: str, target: int, seed: int, avoid: list[Architecture], skip: int,
               temperature: float) -> Member:
        """Aim the cut asked of the inquisitor (``aim_cut``, as the synthesis cycles do) until the built network's
        cost is within tolerance of the target."""
        base_arch, base, base_cost = self._base(target, avoid, skip)
        if base_cost <= target * (1 + self.tolerance):
            return Member(name, target, base_cost, base_arch, copy.deepcopy(base), seed,
                          base_cost >= target * (1 - self.tolerance), temperature)
        generator = copy.copy(self.generator)  # its own θ_G: the learned generator keeps its logits
        macs = macs_per_module(base, self.input_shape)
        goal = 1.0 - target / base_cost  # the fraction of the base's cost to cut

        def attempt(aim: float) -> tuple[float, tuple[int, Architecture, nn.Module]]:
            generator.update(self.inquisitor.propose(generator, macs, macs[""], aim, base=(base_arch, base), step=goal))
            arch = generator.sample(seed, temperature, base=base_arch)
            network = generator.graph.materialize(base, base_arch, arch)
            cost = self.cost(network)
            return 1.0 - cost / base_cost, (cost, arch, network)

        tolerance = self.tolerance * target / (base_cost * goal)  # within tolerance of the target, as a share of the cut
        (cost, arch, network), _ = aim_cut(attempt, lambda: goal, 1.0, tolerance, AIM_ATTEMPTS)
        return Member(name, target, cost, arch, network, seed, abs(cost - target) <= self.tolerance * target, temperature)


def diversity(archs: list[Architecture], graph: NetworkGraph) -> float:
    """Mean over pairs of the share of (group, channel) units the two networks do not have in common (Jaccard
    distance; the channels of a removed block count as absent): 0 for identical networks."""
    if len(archs) < 2:
        return 0.0
    distances = []
    for a, b in itertools.combinations(archs, 2):
        units_a, units_b = _units(a, graph), _units(b, graph)
        distances.append(1 - len(units_a & units_b) / max(1, len(units_a | units_b)))
    return sum(distances) / len(distances)


def _units(arch: Architecture, graph: NetworkGraph) -> set[tuple[str, int]]:
    removed = set(arch.removed_blocks)
    return {(g, c) for g, kept in arch.channels.items() if graph.groups[g].block not in removed for c in kept}


@dataclass(frozen=True)
class FamilySettings:
    """The family a run ends with (``synthesis.family``): one network per target (fractions of φ's ``budget``,
    MACs or params, when at most 1; counts otherwise; empty: no family) within ``tolerance`` of it, sampled at
    ``temperature``. Each member fine-tunes (learning from φ) until it meets every condition of the run, for at
    most ``finetune_epochs`` epochs; with ``early_reject_margin``, after its first epoch it is rejected when even
    the recovery the run measured leaves it that far short (None, the default: never. The cycles' recovery comes from
    candidates cut a step from their parent; a member cut further from its base recovers far more: on the default
    run one at 1/6 of φ's MACs was rejected at 0.693 and, without rejection, passed at 0.990 one epoch later). A
    member that cannot pass is replaced by a larger one when its budget leaves room."""

    targets: tuple[float, ...] = (1 / 2, 1 / 3, 1 / 4, 1 / 6)
    budget: str = "macs"
    finetune_epochs: int = 6
    tolerance: float = 0.05
    temperature: float = 1.0
    early_reject_margin: float | None = None


def build_family(
    generator_path: str | Path,
    datamodule: L.LightningDataModule,
    task,
    settings: FamilySettings = FamilySettings(),
    recipe: Recipe = Recipe(),
    output_dir: str | Path | None = None,
    variations: int | None = None,
    prototype: nn.Module | None = None,
    trainer_kwargs: dict | None = None,
    trusted_targets: Iterable[str] = (),
    trust_recipe: bool = False,
) -> dict:
    """Networks from a run's learned generator, fine-tuned until they meet every condition of the run (judged by
    its referee), tested where the data has a test split, timed (ONNX Runtime, batch 1) and, with ``output_dir``,
    saved with their table and plot.

    Each member starts from the nearest accepted ancestor at least as large as its budget, lets the run's inquisitor
    rank its channels and blocks, and aims the cut until the built network is within ``settings.tolerance`` of the
    budget, then fine-tunes (learning from φ) until it meets every condition of the run, judged by the run's referee
    (``members.finish_member``); one that cannot pass is replaced by a larger network within its budget when one
    exists. A member that is the run's answer itself is kept as the run left it (its own weights, 0 epochs). Each
    member prints a ``[family]`` line when built and when judged. ``train.py`` calls this after every run (``synthesis.family``);
    ``gensynth-generate`` calls it on a finished run.

    Args:
        generator_path: a run's ``generator.safetensors`` (or an older version's ``generator.pt``).
        datamodule: the data to fine-tune, validate and test on (the run's own, or any with the same inputs).
        task (ClassificationTask | SegmentationTask | DetectionTask): the task (loss, metrics) the members train
            with, e.g. ``ClassificationTask(10)``.
        settings: the budgets (``targets``: fractions of φ's ``budget`` when at most 1, counts otherwise), the
            fine-tuning epoch limit, the tolerance, the sampling temperature and early rejection.
        recipe: the optimizer, scheduler, fine-tuning rate and distillation the members train with.
        output_dir: where each member (``<name>/architecture.json``, ``weights.safetensors``, ``network.onnx``) and
            ``family.json``, ``family.csv``, ``family.png`` are written; None: nothing is written.
        variations: instead of one member per target, this many distinct networks within the tolerance of the answer's
            budget, none of them the answer (a draw that repeats one is redrawn; fewer: ``shortfall`` says so).
        prototype: the prototype module, for a generator learned from your own module (no recipe in the file).
        trusted_targets, trust_recipe: how the generator file's prototype recipe is trusted (see ``Generator.load``).
        trainer_kwargs: ``lightning.Trainer`` arguments for the members' fine-tuning (default: CPU, no logger).

    Returns:
        ``{"budget", "gate", "prototype", "generator", "rows", "diversity", "shortfall"}``: one row per member
        (``name``, ``target``, ``reached``, ``macs``, ``params``, ``metric``, ``test_metric``, ``netscore``,
        ``gate_passed``, ``conditions``, ``unmet``, ``epochs``, ``stop``, ``replaces``,
        ``latency_ms`` with ``output_dir``, widths, removed blocks) and the mean share of channels two members do
        not have in common. A target no network fits is reported (``reached: false``) with the closest network.

    Raises:
        FileNotFoundError: ``generator_path`` does not exist.
        ValueError: the file is not a generator written by a synthesis run of this version, has no prototype recipe
            and no ``prototype`` was given, or a target or setting is out of range.

    Example:
        ```python
        family = build_family("outputs/<date>/<time>/generator.safetensors", SyntheticDataModule(), ClassificationTask(10),
                              FamilySettings(targets=(0.5, 0.25)), output_dir="family")
        [(row["name"], row["macs"], row["gate_passed"]) for row in family["rows"]], family["diversity"]
        ```
    """
    generator, extra = Generator.load(generator_path, prototype, trusted_targets, trust_recipe)
    for key in ("gate", "inquisitor", "best", "best_arch"):
        if key not in extra:
            raise ValueError(f"{generator_path} records no {key}; it was not written by a synthesis run of this version")
    # every condition of the run, as its cycles were judged; early rejection with the recovery the run measured
    referee = Referee(Requirements.from_record(extra["gate"]), recovery_allowance=0.0,
                      early_reject_margin=settings.early_reject_margin)
    referee.recoveries = [list(pair) for pair in extra.get("recoveries", [])]
    inquisitor = Inquisitor()
    inquisitor.load_state_dict(extra["inquisitor"])
    builder = FamilyBuilder(generator, inquisitor, settings.budget, settings.tolerance, settings.temperature)
    answer_arch = Architecture.from_dict(extra["best_arch"])
    members: list[Member] = []
    shortfall = None
    if variations is not None:
        answer = extra["best"][settings.budget]
        for index in range(variations):
            member = builder.member(f"variation_{index}", answer, seed=index, avoid=[answer_arch, *(m.arch for m in members)],
                                    near=True)
            if member is None:
                shortfall = (f"only {len(members)} networks distinct from each other and from the answer exist within "
                             f"{settings.tolerance:.0%} of the answer's {settings.budget} ({answer:,}); {variations} were "
                             "asked for. Raise family.temperature or family.tolerance for more")
                break
            members.append(member)
    else:
        for target in settings.targets:
            resolved = builder.resolve(target)
            name = f"{settings.budget}_{target:.3g}" if target <= 1 else f"{settings.budget}_{int(target)}"
            member = builder.member(name, resolved, avoid=[m.arch for m in members])
            members.append(member or builder.member(name, resolved))  # a budget shared with another member: its network
    rows = [_finish(member, builder, answer_arch, referee, settings, datamodule, task, recipe, output_dir, trainer_kwargs)
            for member in members]
    result = {"budget": settings.budget, "gate": extra["gate"], "prototype": extra.get("prototype"),
              "generator": str(Path(generator_path).resolve()), "rows": rows,
              "diversity": diversity([m.arch for m in members], generator.graph), "shortfall": shortfall}
    if shortfall:
        print(f"[family] {shortfall}", flush=True)
    if output_dir is not None:
        write_family(Path(output_dir), result)
    return result


def _finish(member: Member, builder: FamilyBuilder, answer_arch: Architecture, referee: Referee,
            settings: FamilySettings, datamodule, task, recipe: Recipe, output_dir, trainer_kwargs) -> dict:
    """Fine-tune and judge a member; one that cannot pass is replaced by a larger network within its budget (its
    target plus the tolerance), when the generator builds one."""
    generator = builder.generator
    # the run's answer is kept as the run left it: its own polished weights, not rebuilt from an ancestor
    answer = generator.graph.same_network(member.arch, answer_arch)
    network = builder.trained(member.arch) if answer else member.network
    common = (generator, referee, settings.finetune_epochs, datamodule, task, recipe, output_dir, trainer_kwargs)
    row = finish_member(member.name, network, member.arch, *common, answer=answer)
    row.update(target=member.target, reached=member.reached, seed=member.seed, temperature=member.temperature)
    if row["gate_passed"] or row["stop"] not in (REJECTED_EARLY, EPOCH_LIMIT) or not member.reached:
        return row
    ceiling = member.target * (1 + settings.tolerance)
    larger = builder.member(member.name, round((member.cost + ceiling) / 2), member.seed + 1, avoid=[member.arch])
    if larger is None or not member.cost < larger.cost <= ceiling:
        row["replacement"] = "none: no larger network within the budget"
        return row
    replaced = finish_member(larger.name, larger.network, larger.arch, *common)
    replaced.update(target=member.target, reached=True, seed=larger.seed, temperature=larger.temperature,
                    replaces={"macs": row["macs"], "metric": row["metric"], "stop": row["stop"]})
    return replaced
