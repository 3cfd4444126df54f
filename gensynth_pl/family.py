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
import json
from dataclasses import dataclass
from pathlib import Path

import lightning as L
from torch import nn

from gensynth_pl.console import QuietTrainer
from gensynth_pl.data.common import has_test_split
from gensynth_pl.export import export_onnx, save_network
from gensynth_pl.gates import Gate
from gensynth_pl.generator import Generator
from gensynth_pl.graph import Architecture, NetworkGraph
from gensynth_pl.inquisitor import Inquisitor
from gensynth_pl.latency import measure_latency
from gensynth_pl.metrics import NetworkReport, count_macs, count_params, macs_per_module
from gensynth_pl.module import Recipe
from gensynth_pl.report import family_plot
from gensynth_pl.rundir import ONNX_FILE, write_text_atomic

BUDGETS = ("macs", "params")
AIM_STEPS = 14  # bisection steps on the cut
REDRAWS = 8  # seeds tried for a member that differs from the others


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

    @property
    def deviation(self) -> float:
        return self.cost / self.target - 1.0


class FamilyBuilder:
    """Networks for budgets from a learned generator and the inquisitor's insights (both left unchanged)."""

    def __init__(
        self, generator: Generator, inquisitor: Inquisitor, budget: str = "macs", tolerance: float = 0.05,
        temperature: float = 1.0,
    ) -> None:
        if budget not in BUDGETS:
            raise ValueError(f"family.budget={budget!r} must be one of {BUDGETS}")
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

    def member(self, name: str, target: int, seed: int = 0, avoid: list[Architecture] = ()) -> Member:
        """The network for ``target``; a draw that builds one of ``avoid`` again is redrawn with the next seed."""
        for attempt in range(REDRAWS):
            member = self._aimed(name, target, seed + attempt * 7_919, avoid)
            if not any(self.generator.graph.same_network(member.arch, other) for other in avoid):
                return member
        return member

    def _base(self, target: int, avoid: list[Architecture]) -> tuple[Architecture, nn.Module, int]:
        """The nearest accepted ancestor at least as large as the target (the prototype when none is) that is not
        one of ``avoid`` (so that around an accepted network's own budget the members differ from it)."""
        graph = self.generator.graph
        fits = [
            (cost, index) for index, cost in enumerate(self._costs)
            if cost >= target and (index == 0 or not any(graph.same_network(self.generator.lineage[index][0], a) for a in avoid))
        ]
        cost, index = min(fits) if fits else (self._costs[0], 0)
        arch, network = self.generator.lineage[index]
        return arch, network, cost

    def _aimed(self, name: str, target: int, seed: int, avoid: list[Architecture]) -> Member:
        """Bisect the cut asked of the inquisitor until the built network's cost is within tolerance of the target."""
        base_arch, base, base_cost = self._base(target, avoid)
        if base_cost <= target * (1 + self.tolerance):
            return Member(name, target, base_cost, base_arch, copy.deepcopy(base), seed, base_cost >= target * (1 - self.tolerance))
        generator = copy.copy(self.generator)  # its own θ_G: the learned generator keeps its logits
        macs = macs_per_module(base, self.input_shape)
        low, high, best = 0.0, 0.95, None
        for _ in range(AIM_STEPS):
            step = (low + high) / 2
            generator.update(self.inquisitor.propose(generator, macs, macs[""], base=(base_arch, base), step=step))
            arch = generator.sample(seed, self.temperature, base=base_arch)
            network = generator.graph.materialize(base, base_arch, arch)
            cost = self.cost(network)
            if best is None or abs(cost - target) < abs(best[0] - target):
                best = (cost, arch, network)
            if abs(cost - target) <= self.tolerance * target:
                break
            low, high = (step, high) if cost > target else (low, step)
        cost, arch, network = best
        return Member(name, target, cost, arch, network, seed, abs(cost - target) <= self.tolerance * target)


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
    MACs or params, when at most 1; counts otherwise; empty: no family), each fine-tuned ``finetune_epochs``
    epochs and gated; members within ``tolerance`` of their target; samples at ``temperature``."""

    targets: tuple[float, ...] = (1 / 2, 1 / 3, 1 / 4, 1 / 6)
    budget: str = "macs"
    finetune_epochs: int = 2
    tolerance: float = 0.05
    temperature: float = 1.0


FAMILY_COLUMNS = ("name", "target", "reached", "macs", "params", "metric", "test_metric", "netscore", "gate_passed", "latency_ms")


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
) -> dict:
    """Networks from a run's learned generator, fine-tuned, gated against the run's gate, tested where the data
    has a test split, timed (ONNX Runtime, batch 1) and, with ``output_dir``, saved with their table and plot.

    Each member starts from the nearest accepted ancestor at least as large as its budget, lets the run's inquisitor
    rank its channels and blocks, and aims the cut until the built network is within ``settings.tolerance`` of the
    budget. A member that is the run's answer itself is kept as the run left it (0 epochs). Each member prints a
    ``[family]`` line when built and when judged. ``train.py`` calls this after every run (``synthesis.family``);
    ``gensynth-generate`` calls it on a finished run.

    Args:
        generator_path: a run's ``generator.pt``.
        datamodule: the data to fine-tune, validate and test on (the run's own, or any with the same inputs).
        task (ClassificationTask | SegmentationTask | DetectionTask): the task (loss, metrics) the members train
            with, e.g. ``ClassificationTask(10)``.
        settings: the budgets (``targets``: fractions of φ's ``budget`` when at most 1, counts otherwise), the
            fine-tuning epochs, the tolerance and the sampling temperature.
        recipe: the optimizer, scheduler, fine-tuning rate and distillation the members train with.
        output_dir: where each member (``<name>/architecture.json``, ``weights.pt``, ``network.onnx``) and
            ``family.json``, ``family.csv``, ``family.png`` are written; None: nothing is written.
        variations: instead of one member per target, this many distinct networks at the budget of the run's answer
            (they differ where the inquisitor is unsure; a draw that repeats an earlier one is redrawn).
        prototype: the prototype module, for a generator learned from your own module (no recipe in the file).
        trainer_kwargs: ``lightning.Trainer`` arguments for the members' fine-tuning (default: CPU, no logger).

    Returns:
        ``{"budget", "gate", "prototype", "rows", "diversity"}``: one row per member (``name``, ``target``,
        ``reached``, ``macs``, ``params``, ``metric``, ``test_metric``, ``netscore``, ``gate_passed``,
        ``latency_ms`` with ``output_dir``, widths, removed blocks) and the mean share of channels two members do
        not have in common. A target no network fits is reported (``reached: false``) with the closest network.

    Raises:
        FileNotFoundError: ``generator_path`` does not exist.
        ValueError: the file is not a generator written by a synthesis run of this version, has no prototype recipe
            and no ``prototype`` was given, or a target or setting is out of range.

    Example:
        ```python
        family = build_family("outputs/<date>/<time>/generator.pt", SyntheticDataModule(), ClassificationTask(10),
                              FamilySettings(targets=(0.5, 0.25)), output_dir="family")
        [(row["name"], row["macs"], row["gate_passed"]) for row in family["rows"]], family["diversity"]
        ```
    """
    generator, extra = Generator.load(generator_path, prototype)
    for key in ("gate", "inquisitor", "best", "best_arch"):
        if key not in extra:
            raise ValueError(f"{generator_path} records no {key}; it was not written by a synthesis run of this version")
    gate = Gate.from_record(extra["gate"])
    inquisitor = Inquisitor()
    inquisitor.load_state_dict(extra["inquisitor"])
    builder = FamilyBuilder(generator, inquisitor, settings.budget, settings.tolerance, settings.temperature)
    answer_arch = Architecture.from_dict(extra["best_arch"])
    members: list[Member] = []
    if variations is not None:
        answer = extra["best"][settings.budget]
        for index in range(variations):
            avoid = [answer_arch, *(m.arch for m in members)]
            members.append(builder.member(f"variation_{index}", answer, seed=index, avoid=avoid))
    else:
        for target in settings.targets:
            resolved = builder.resolve(target)
            name = f"{settings.budget}_{target:.3g}" if target <= 1 else f"{settings.budget}_{int(target)}"
            members.append(builder.member(name, resolved, avoid=[m.arch for m in members]))
    rows = []
    for member in members:
        # the run's answer itself (a budget it fits) is kept as the run left it: polished, so more epochs at a
        # restarted rate would only perturb it
        epochs = 0 if generator.graph.same_network(member.arch, answer_arch) else settings.finetune_epochs
        rows.append(_finish(member, epochs, generator, gate, datamodule, task, recipe, output_dir, trainer_kwargs))
    result = {"budget": settings.budget, "gate": extra["gate"], "prototype": extra.get("prototype"), "rows": rows,
              "diversity": diversity([m.arch for m in members], generator.graph)}
    if output_dir is not None:
        write_family(Path(output_dir), result)
    return result


def _finish(member: Member, epochs: int, generator: Generator, gate: Gate, datamodule, task, recipe: Recipe,
            output_dir: str | Path | None, trainer_kwargs: dict | None) -> dict:
    """Fine-tune ``epochs`` (learning from φ), validate, gate, test, time and save one member."""
    print(f"[family] {member.name}: built at {member.cost:,} (target {member.target:,}), fine-tuning {epochs} epochs",
          flush=True)
    module = recipe.module(member.network, task)
    defaults = dict(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                    enable_model_summary=False, num_sanity_val_steps=0)
    trainer = QuietTrainer(max_epochs=epochs, **{**defaults, **(trainer_kwargs or {})})
    if epochs > 0:
        with recipe.distilling(generator.prototype, module):
            trainer.fit(module, datamodule=datamodule)
    metric = float(trainer.validate(module, datamodule=datamodule, verbose=False)[0][gate.monitor])
    test = None
    if has_test_split(datamodule):
        test = {k.removeprefix("test/"): float(v) for k, v in trainer.test(module, datamodule=datamodule, verbose=False)[0].items()}
    network = module.net.cpu().eval()
    report = NetworkReport.measure(network, generator.input_shape, metric, gate.passes(metric), test=test)
    row = {"name": member.name, "target": member.target, "reached": member.reached, "seed": member.seed, "epochs": epochs,
           **report.to_dict(), "test_metric": (test or {}).get(gate.monitor.split("/", 1)[-1]),
           "widths": member.arch.widths(), "removed_blocks": member.arch.removed_blocks}
    if output_dir is not None:
        folder = save_network(Path(output_dir) / member.name, network, member.arch, generator.graph,
                              generator.prototype_config, report.to_dict())
        onnx = export_onnx(network, generator.input_shape, folder / ONNX_FILE)
        timings = measure_latency(network, onnx, generator.input_shape, (1,), repeats=20)
        row["latency_ms"] = next(t["median_ms"] for t in timings if t["runtime"] == "onnxruntime")
    print(f"[family] {member.name}: {report.macs:,} MACs, {gate.monitor} {metric:.4f} "
          f"({'passes' if report.gate_passed else 'fails'} the gate)", flush=True)
    return row


def write_family(directory: Path, result: dict) -> None:
    """family.json (everything), family.csv (the table) and family.png (metric against MACs)."""
    write_text_atomic(directory / "family.json", json.dumps(result, indent=2))
    lines = [",".join(FAMILY_COLUMNS)] + [",".join(str(row.get(c, "")) for c in FAMILY_COLUMNS) for row in result["rows"]]
    write_text_atomic(directory / "family.csv", "\n".join(lines) + "\n")
    family_plot(result, directory / "family.png")


def format_family(result: dict) -> str:
    """The family as a console table, with the diversity figure."""
    header = " | ".join(f"{c:>12}" for c in FAMILY_COLUMNS)
    lines = [header]
    for row in result["rows"]:
        cells = []
        for column in FAMILY_COLUMNS:
            value = row.get(column)
            cells.append(f"{value:>12.4f}" if isinstance(value, float) else f"{value!s:>12}")
        lines.append(" | ".join(cells))
    passed = sum(row["gate_passed"] for row in result["rows"])
    lines.append(f"{passed}/{len(result['rows'])} members pass the gate; diversity (mean share of channels two members "
                 f"do not have in common) {result['diversity']:.3f}")
    return "\n".join(lines)
