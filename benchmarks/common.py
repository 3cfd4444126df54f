"""Shared machinery of the benchmarks: train, synthesise, prune to matched MACs, measure, tabulate.

Every comparison uses the library's own pieces (SynthesisModule, GenerativeSynthesis, the metrics and
the latency measurement), so a benchmark number is what a user of the library would get.
"""
from __future__ import annotations

import copy
import functools
import json
import os
import platform
import resource
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import lightning as L
import torch
import torch_pruning as tp
from lightning.pytorch.callbacks import Callback, ModelPruning
from torch import Tensor, nn

from gensynth_pl import callbacks as synthesis_callbacks
from gensynth_pl import count_macs, count_params, export_onnx
from gensynth_pl.callbacks import GenerativeSynthesis
from gensynth_pl.gates import Gate
from gensynth_pl.generator import Generator
from gensynth_pl.graph import find_output_layers
from gensynth_pl.inquisitor import Inquisitor, Probe
from gensynth_pl.latency import measure_latency
from gensynth_pl.metrics import information_density, netscore
from gensynth_pl.module import SynthesisModule, Task, cosine_per_phase, scale_learning_rate, sgd

MAC_TOLERANCE = 0.05  # "matched MACs": within 5% of the generated network's MACs
MONITOR = "val/acc"


@dataclass
class Schedule:
    """The training budget every method gets: fine-tuning methods get ``finetune_epochs`` on top of the
    shared trained prototype, from-scratch networks get ``prototype_epochs + finetune_epochs``."""

    prototype_epochs: int
    cycles: int
    epochs_per_cycle: int = 1
    probe_batches: int = 16
    gate_drop: float = 0.01
    step: float = 0.3
    channel_multiple: int = 8
    finetune_lr_scale: float = 0.2
    seed: int = 0
    accelerator: str = "cpu"
    latency_repeats: int = 20

    def __post_init__(self) -> None:
        if self.finetune_epochs < 2:
            raise ValueError(
                f"cycles x epochs_per_cycle = {self.finetune_epochs}: need >= 2 fine-tuning epochs (ModelPruning "
                "applies its mask at the end of the first one and must be validated after another)"
            )

    @property
    def finetune_epochs(self) -> int:
        return self.cycles * self.epochs_per_cycle


class Stopwatch:
    """Wall time and CPU time (this process and its reaped data-loader workers) of a block."""

    def __enter__(self) -> "Stopwatch":
        self._wall, self._cpu = time.perf_counter(), _cpu_seconds()
        return self

    def __exit__(self, *exc) -> None:
        self.wall = time.perf_counter() - self._wall
        self.cpu = _cpu_seconds() - self._cpu


def _cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def machine() -> dict:
    """What the numbers were measured on, including how busy the machine was (load average)."""
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "torch": torch.__version__,
    }


# --- training ------------------------------------------------------------------------------------
def make_trainer(epochs: int, schedule: Schedule, callbacks: list[Callback] | None = None) -> L.Trainer:
    return L.Trainer(
        max_epochs=epochs,
        accelerator=schedule.accelerator,
        devices=1,
        callbacks=callbacks or [],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )


def train(
    network: nn.Module,
    datamodule: L.LightningDataModule,
    task: Task,
    epochs: int,
    schedule: Schedule,
    callbacks: list[Callback] | None = None,
    fine_tuning: bool = False,
) -> tuple[SynthesisModule, float]:
    """Fit ``network`` with the library's module, optimizer and per-phase cosine schedule (at the synthesis's
    fine-tuning rate when ``fine_tuning`` a pruned φ); returns it and its last validation metric."""
    L.seed_everything(schedule.seed, workers=True, verbose=False)
    lr_scale = schedule.finetune_lr_scale if fine_tuning else 1.0
    module = SynthesisModule(network, task, lambda params: scale_learning_rate(sgd(params), lr_scale), cosine_per_phase)
    trainer = make_trainer(epochs, schedule, callbacks)
    trainer.fit(module, datamodule=datamodule)
    return module, float(trainer.callback_metrics[MONITOR])


# --- synthesis, with its probing and updating timed ------------------------------------------------
class SynthesisTimer:
    """Times the inquisitor's and generator's work during a run and attributes it to synthesis cycles.

    ``patched()`` wraps the calls in place for the duration of a run: probe hooks (forward hooks and the
    backward gradient hooks they register), measure, fold, learn, propose (with the parent's MAC profile
    it needs), update, sample, build, plus the callback's bookkeeping (record MACs, writing files).
    """

    PROBE_AND_UPDATE = ("probe", "measure", "fold", "learn", "propose", "update", "sample", "build")
    BOOKKEEPING = ("record", "save")

    def __init__(self) -> None:
        self.events: list[tuple[str, float, float]] = []  # (component, finished at, seconds)

    def _add(self, component: str, seconds: float) -> None:
        self.events.append((component, time.perf_counter(), seconds))

    def _timed(self, component: str, function: Callable) -> Callable:
        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self._add(component, time.perf_counter() - start)

        return wrapper

    def _timed_hooks(self, make_hook: Callable) -> Callable:
        timer = self

        @functools.wraps(make_hook)
        def timed_make_hook(probe: Probe, group_id: str, record_response: bool):
            hook = make_hook(probe, group_id, record_response)

            def timed_hook(module: nn.Module, inputs, output) -> None:
                start = time.perf_counter()
                grad_hooks = isinstance(output, Tensor) and output.requires_grad and torch.is_grad_enabled()
                marks: list[float] = []
                if grad_hooks:  # tensor hooks run in registration order: these bracket the probe's own
                    output.register_hook(lambda grad: marks.append(time.perf_counter()))
                hook(module, inputs, output)
                if grad_hooks:
                    output.register_hook(lambda grad: timer._add("probe", time.perf_counter() - marks.pop()))
                timer._add("probe", time.perf_counter() - start)

            return timed_hook

        return timed_make_hook

    @contextmanager
    def patched(self) -> Iterator["SynthesisTimer"]:
        targets = [
            (Probe, "_make_hook", self._timed_hooks),
            (Probe, "detach", functools.partial(self._timed, "probe")),
            (Inquisitor, "measure", functools.partial(self._timed, "measure")),
            (Inquisitor, "fold", functools.partial(self._timed, "fold")),
            (Inquisitor, "learn", functools.partial(self._timed, "learn")),
            (Inquisitor, "propose", functools.partial(self._timed, "propose")),
            (synthesis_callbacks, "macs_per_module", functools.partial(self._timed, "propose")),
            (Generator, "update", functools.partial(self._timed, "update")),
            (Generator, "sample", functools.partial(self._timed, "sample")),
            (Generator, "build", functools.partial(self._timed, "build")),
            (GenerativeSynthesis, "_measure", functools.partial(self._timed, "record")),
            (GenerativeSynthesis, "_save_progress", functools.partial(self._timed, "save")),
        ]
        originals = [(owner, name, getattr(owner, name)) for owner, name, _ in targets]  # AttributeError if renamed
        try:
            for (owner, name, wrap), (_, _, original) in zip(targets, originals):
                setattr(owner, name, wrap(original))
            yield self
        finally:
            for owner, name, original in originals:
                setattr(owner, name, original)

    def per_cycle(self, boundaries: list[float]) -> list[dict]:
        """Seconds per component for each cycle; cycle k spans (boundaries[k-1], boundaries[k]]: its training,
        probing and learning, and the generation of the next candidate."""
        rows = []
        for cycle, (start, end) in enumerate(zip(boundaries, boundaries[1:]), start=1):
            row = {"cycle": cycle, "wall_s": end - start}
            for component in (*self.PROBE_AND_UPDATE, *self.BOOKKEEPING):
                row[component] = sum(s for c, t, s in self.events if c == component and start < t <= end)
            row["probe_and_update_s"] = sum(row[c] for c in self.PROBE_AND_UPDATE)
            row["share"] = row["probe_and_update_s"] / row["wall_s"]
            rows.append(row)
        return rows


class PhaseClock(Callback):
    """Timestamps the end of the prototype phase and of every cycle (after the synthesis callback's work)."""

    def __init__(self, synthesis: GenerativeSynthesis) -> None:
        self.synthesis = synthesis
        self.started = 0.0
        self.boundaries: list[float] = []

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.started = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        done = trainer.current_epoch + 1 - self.synthesis.prototype_epochs
        if done >= 0 and done % self.synthesis.epochs_per_cycle == 0:
            self.boundaries.append(time.perf_counter())


@dataclass
class SynthesisRun:
    synthesis: GenerativeSynthesis
    prototype_seconds: float
    synthesis_seconds: float
    cpu_seconds: float
    overhead: list[dict] = field(default_factory=list)

    @property
    def prototype(self) -> nn.Module:
        """The trained prototype φ every baseline starts from (the generator's first lineage entry)."""
        return self.synthesis.generator.prototype


def run_synthesis(
    prototype: nn.Module,
    datamodule: L.LightningDataModule,
    task: Task,
    schedule: Schedule,
    input_shape: tuple[int, ...],
    output_dir: Path,
    prototype_config: dict | None = None,
) -> SynthesisRun:
    """Train φ and run the synthesis (relative gate: at most ``gate_drop`` below φ), timing every phase."""
    synthesis = GenerativeSynthesis(
        Gate(MONITOR, schedule.gate_drop, relative=True),
        cycles=schedule.cycles,
        epochs_per_cycle=schedule.epochs_per_cycle,
        prototype_epochs=schedule.prototype_epochs,
        probe_batches=schedule.probe_batches,
        channel_multiple=schedule.channel_multiple,
        finetune_lr_scale=schedule.finetune_lr_scale,
        seed=schedule.seed,
        inquisitor=Inquisitor(step=schedule.step),
        input_shape=input_shape,
        prototype_config=prototype_config,
        output_dir=output_dir,
        task_name=task.name,
    )
    clock, timer = PhaseClock(synthesis), SynthesisTimer()
    with timer.patched(), Stopwatch() as watch:
        train(prototype, datamodule, task, synthesis.total_epochs, schedule, [synthesis, clock])
    return SynthesisRun(
        synthesis=synthesis,
        prototype_seconds=clock.boundaries[0] - clock.started,
        synthesis_seconds=clock.boundaries[-1] - clock.boundaries[0],
        cpu_seconds=watch.cpu,
        overhead=timer.per_cycle(clock.boundaries),
    )


# --- baselines at matched MACs ---------------------------------------------------------------------
def match_macs(
    build: Callable[[float], nn.Module],
    input_shape: tuple[int, ...],
    target_macs: int,
    low: float,
    high: float,
    increasing: bool,
    resolution: float = 0.004,
) -> tuple[nn.Module, float, int]:
    """Bisect the knob of ``build`` (a width multiplier or a pruning ratio) until its MACs are within 0.5% of
    the target or the knob is pinned down to ``resolution``; returns the closest network, its knob and MACs."""
    best: tuple[float, nn.Module, float, int] | None = None
    while best is None or high - low > resolution:
        knob = (low + high) / 2
        network = build(knob)
        macs = count_macs(network, input_shape)
        error = abs(macs - target_macs) / target_macs
        if best is None or error < best[0]:
            best = (error, network, knob, macs)
        if error < 0.005:
            break
        if (macs < target_macs) == increasing:
            low = knob
        else:
            high = knob
    return best[1], best[2], best[3]


def channel_pruner(
    network: nn.Module, input_shape: tuple[int, ...], importance: Callable[[], tp.importance.Importance], seed: int
) -> Callable[[float], nn.Module]:
    """``ratio -> copy of network`` with that fraction of every channel group removed (uniform, not global)."""
    output_layers = network.output_layers() if hasattr(network, "output_layers") else find_output_layers(network, input_shape)

    def prune(ratio: float) -> nn.Module:
        torch.manual_seed(seed)  # RandomImportance: the same draw for the same ratio
        pruned = copy.deepcopy(network).eval()
        example = torch.zeros((1, *input_shape), device=next(pruned.parameters()).device)
        pruner = tp.pruner.MetaPruner(
            pruned,
            example,
            importance=importance(),
            pruning_ratio=ratio,
            global_pruning=False,
            ignored_layers=[pruned.get_submodule(name) for name in output_layers],
        )
        pruner.step()
        return pruned.train()

    return prune


def unstructured_pruning(network: nn.Module, target_params: int) -> tuple[ModelPruning, float]:
    """Lightning's ModelPruning (global L1, unstructured) on conv/linear weights, masking once at the end of the
    first fine-tuning epoch so that ``target_params`` parameters stay non-zero."""
    weights = [(m, "weight") for m in network.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    prunable = sum(m.weight.numel() for m, _ in weights)
    sparsity = min(max((count_params(network) - target_params) / prunable, 0.0), 0.99)
    callback = ModelPruning(
        "l1_unstructured",
        parameters_to_prune=weights,
        amount=lambda epoch: sparsity if epoch == 0 else 0.0,
        use_global_unstructured=True,
        make_pruning_permanent=True,
        verbose=0,
    )
    return callback, sparsity


def count_nonzero(network: nn.Module) -> int:
    return int(sum(int((p != 0).sum()) for p in network.parameters()))


# --- rows and tables -------------------------------------------------------------------------------
def network_row(
    method: str,
    network: nn.Module,
    metric: float,
    input_shape: tuple[int, ...],
    seconds: float,
    work_dir: Path,
    latency_repeats: int,
    params: int | None = None,
    **extra,
) -> dict:
    """One table row: size, cost, accuracy, NetScore, information density, CPU latency, wall time."""
    network = copy.deepcopy(network).cpu().eval()  # the caller's network keeps its device and mode
    params = count_params(network) if params is None else params
    macs = count_macs(network, input_shape)
    onnx_path = export_onnx(network, input_shape, work_dir / f"{method}.onnx")
    latency = measure_latency(network, onnx_path, input_shape, (1, 64), repeats=latency_repeats)
    return {
        "method": method,
        "params": params,
        "macs": macs,
        "val_acc": metric,
        "netscore": netscore(metric, params, macs),
        "information_density": information_density(metric, params),
        "latency_ms": {f"{r['runtime']}_b{r['batch']}": round(r["median_ms"], 3) for r in latency},
        "wall_s": round(seconds, 1),
        **extra,
    }


TABLE_COLUMNS = (
    ("method", "{:<16}"),
    ("params", "{:>9,}"),
    ("macs", "{:>12,}"),
    ("mac_ratio", "{:>9}"),
    ("val_acc", "{:>7.4f}"),
    ("netscore", "{:>8.2f}"),
    ("information_density", "{:>8.2f}"),
    ("pytorch_b1", "{:>10.2f}"),
    ("pytorch_b64", "{:>11.2f}"),
    ("onnxruntime_b1", "{:>9.2f}"),
    ("onnxruntime_b64", "{:>10.2f}"),
    ("wall_s", "{:>8.1f}"),
)
HEADERS = ("method", "params", "MACs", "MACs/ours", "val acc", "NetScore", "acc%/Mp", "eager b1 ms", "eager b64 ms",
           "ORT b1 ms", "ORT b64 ms", "wall s")


def format_table(rows: list[dict], target_macs: int) -> str:
    """A fixed-width text table (also pasted into the README)."""
    widths = [len(fmt.format(_cell(rows[0], key, target_macs))) if rows else 10 for key, fmt in TABLE_COLUMNS]
    widths = [max(w, len(h)) for w, h in zip(widths, HEADERS)]
    lines = [" | ".join(h.rjust(w) for h, w in zip(HEADERS, widths))]
    lines.append("-|-".join("-" * w for w in widths))
    for row in rows:
        cells = [fmt.format(_cell(row, key, target_macs)).rjust(w) for (key, fmt), w in zip(TABLE_COLUMNS, widths)]
        lines.append(" | ".join(cells))
    return "\n".join(lines)


def _cell(row: dict, key: str, target_macs: int):
    if key == "mac_ratio":
        return f"{row['macs'] / target_macs:.3f}"
    if key in row:
        return row[key]
    return row["latency_ms"][key]


def write_json(path: Path, result: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, default=_jsonable))


def publish(path: Path, result: dict) -> dict:
    """A benchmark's last step: its JSON (with the table) written, the table and where it went printed."""
    write_json(path, result)
    print(result["table"])
    print(f"written to {path}")
    return result


def _jsonable(value):
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "__dataclass_fields__"):
        return asdict(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


# --- the comparison --------------------------------------------------------------------------------
@dataclass
class Contender:
    """A network trained from scratch at matched MACs: ``build(knob)`` with knob bisected in [low, high]
    (MACs grow with the knob), e.g. a width multiplier."""

    name: str
    build: Callable[[float], nn.Module]
    low: float
    high: float


def compare(
    prototype: nn.Module,
    datamodule: L.LightningDataModule,
    task: Task,
    schedule: Schedule,
    input_shape: tuple[int, ...],
    output_json: Path,
    from_scratch: list[Contender],
    prototype_config: dict | None = None,
    config: dict | None = None,
) -> dict:
    """Our best generated network against structured, random and unstructured pruning of the same trained
    prototype and against networks trained from scratch, all at the generated network's MACs.

    The JSON is rewritten after every row, so a long run that is interrupted keeps what it measured.
    """
    work_dir = output_json.with_suffix("")
    work_dir.mkdir(parents=True, exist_ok=True)
    result = {"config": {**(config or {}), **asdict(schedule)}, "machine_start": machine(), "rows": []}

    def add(row: dict) -> None:
        result["rows"].append(row)
        write_json(output_json, result)
        print(f"[benchmark] {row['method']}: {row['macs']:,} MACs, val acc {row['val_acc']:.4f}, {row['wall_s']} s", flush=True)

    run = run_synthesis(prototype, datamodule, task, schedule, input_shape, work_dir / "gensynth_run", prototype_config)
    record = run.synthesis.record
    target = record.best["macs"]
    result.update(synthesis=record.to_dict(), overhead=run.overhead, target_macs=target, synthesis_cpu_s=run.cpu_seconds)
    repeats = schedule.latency_repeats
    add(network_row("prototype", run.prototype, record.prototype["metric"], input_shape, run.prototype_seconds, work_dir,
                    repeats, epochs=schedule.prototype_epochs))
    add(network_row("gensynth", run.synthesis.best_network, record.best["metric"], input_shape, run.synthesis_seconds,
                    work_dir, repeats, epochs=schedule.finetune_epochs, best_cycle=record.best_cycle,
                    gate_passed=record.best["gate_passed"], gate_bound=record.gate["threshold"]))

    for name, importance in (("l1_pruning", lambda: tp.importance.MagnitudeImportance(p=1)),
                             ("random_pruning", tp.importance.RandomImportance)):
        with Stopwatch() as watch:
            prune = channel_pruner(run.prototype, input_shape, importance, schedule.seed)
            network, ratio, _ = match_macs(prune, input_shape, target, 0.0, 0.95, increasing=False)
            module, metric = train(network, datamodule, task, schedule.finetune_epochs, schedule, fine_tuning=True)
        add(network_row(name, module.net, metric, input_shape, watch.wall, work_dir, repeats, pruning_ratio=ratio,
                        epochs=schedule.finetune_epochs))

    for contender in from_scratch:
        with Stopwatch() as watch:
            network, knob, _ = match_macs(contender.build, input_shape, target, contender.low, contender.high, increasing=True)
            epochs = schedule.prototype_epochs + schedule.finetune_epochs
            module, metric = train(network, datamodule, task, epochs, schedule)
        add(network_row(contender.name, module.net, metric, input_shape, watch.wall, work_dir, repeats, width=knob,
                        epochs=epochs))

    with Stopwatch() as watch:
        network = copy.deepcopy(run.prototype)
        pruning, sparsity = unstructured_pruning(network, record.best["params"])
        module, metric = train(network, datamodule, task, schedule.finetune_epochs, schedule, [pruning], fine_tuning=True)
    add(network_row("modelpruning_l1", module.net, metric, input_shape, watch.wall, work_dir, repeats,
                    params=count_nonzero(module.net), dense_params=count_params(module.net), weight_sparsity=sparsity,
                    epochs=schedule.finetune_epochs))

    result["machine_end"] = machine()
    result["table"] = format_table(result["rows"], target)
    return publish(output_json, result)
