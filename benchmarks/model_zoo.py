"""Which networks users bring work: every check of the engine on the models people ship, one row per model.

For each model (random weights: no download) at a small input and without training: trace its channel groups,
probe it once (forward and backward on random images, as the inquisitor does between cycles), build networks at
about 1/2 and 1/4 of its MACs from the generator and the inquisitor's ranking (physically smaller, weights
inherited), check their output shapes, check that the unchanged architecture reproduces the model's outputs
exactly, save and reload one through ``best/``-style files (with the prototype passed in: these models have no
Hydra recipe), export all three to ONNX and compare ONNX Runtime with PyTorch, and time them under ONNX Runtime
(batch 1, one thread, the median over round-robin passes). A failing check is a verdict with its cause; the
checks that need its result are skipped.

    python -m benchmarks.model_zoo                                    # every model (about 20 minutes on 2 CPU cores)
    python -m benchmarks.model_zoo --models torchvision/resnet18 smp/unet-resnet34 --output zoo.json
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from benchmarks.tables import Column, format_table, key, publish, write_json
from benchmarks.timing import machine
from gensynth_pl import count_macs, count_params, export_onnx, load_network, save_network
from gensynth_pl.family import FamilyBuilder, Member
from gensynth_pl.generator import Generator
from gensynth_pl.inquisitor import Inquisitor
from gensynth_pl.latency import measure_latency, verify_onnx
from gensynth_pl.torch_utils import evaluating, output_tensors

OUTPUT = Path("outputs/benchmarks/model_zoo.json")
CHECKS = ("trace", "probe", "build", "shape", "identity", "reload", "onnx", "faster")
TARGETS = {"half": 1 / 2, "quarter": 1 / 4}
ONNX_TOLERANCE = 1e-4  # relative to the output's largest magnitude (at least 1)


@dataclass(frozen=True)
class ZooModel:
    """A model as a user builds it (random weights) and the input it runs at."""

    name: str
    build: Callable[[], nn.Module]
    input_shape: tuple[int, ...]


class SSDLiteHeads(nn.Module):
    """torchvision's SSDlite without its transform and box decoding: backbone and head, one (N, anchors, 4 + classes)
    tensor; what the detection loss reads and what a deployment exports (decoding and NMS run after the network)."""

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.backbone, self.head = detector.backbone, detector.head

    def forward(self, images: Tensor) -> Tensor:
        outputs = self.head(list(self.backbone(images).values()))
        return torch.cat([outputs["bbox_regression"], outputs["cls_logits"]], dim=-1)


def _torchvision(arch: str, **kwargs) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import torchvision

        return torchvision.models.get_model(arch, weights=None, num_classes=10, **kwargs)

    return build


def _timm(arch: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import timm

        return timm.create_model(arch, pretrained=False, num_classes=10)

    return build


def _smp(arch: str, encoder: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import segmentation_models_pytorch as smp

        return getattr(smp, arch)(encoder_name=encoder, encoder_weights=None, classes=3)

    return build


def _ssdlite() -> nn.Module:
    import torchvision

    return SSDLiteHeads(torchvision.models.get_model("ssdlite320_mobilenet_v3_large", weights=None, weights_backbone=None))


SMALL, SEGMENTATION = (3, 64, 64), (3, 64, 64)
MODELS = [
    *(ZooModel(f"torchvision/{arch}", _torchvision(arch), SMALL) for arch in (
        "resnet18", "resnet50", "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0", "regnet_x_400mf",
        "shufflenet_v2_x1_0", "densenet121", "convnext_tiny")),
    ZooModel("torchvision/vit_b_16", _torchvision("vit_b_16", image_size=64), SMALL),
    *(ZooModel(f"timm/{arch}", _timm(arch), SMALL) for arch in ("resnet26d", "efficientnet_b0", "mobilevit_xxs")),
    *(ZooModel(f"smp/{arch.lower()}-{encoder}", _smp(arch, encoder), SEGMENTATION)
      for arch in ("Unet", "FPN") for encoder in ("resnet34", "mobilenet_v2", "efficientnet-b0")),
    ZooModel("torchvision/ssdlite320_mobilenet_v3_large", _ssdlite, (3, 128, 128)),
]


class _Failed(Exception):
    """A check failed: the checks that need its result are skipped."""


class Checks:
    """One model's verdicts: each check passes, fails with its cause, or is skipped after an earlier failure."""

    def __init__(self) -> None:
        self.verdicts = {name: "skipped" for name in CHECKS}
        self.causes: dict[str, str] = {}

    def run(self, name: str, check: Callable[[], object]):
        try:
            result = check()
        except Exception as error:  # any failure of the engine on this model is the finding
            self.verdicts[name] = "fail"
            self.causes[name] = f"{type(error).__name__}: {str(error).strip()[:400]}"
            raise _Failed(name) from error
        self.verdicts[name] = "pass"
        return result


def _outputs(network: nn.Module, x: Tensor) -> list[Tensor]:
    with evaluating(network), torch.no_grad():
        return output_tensors(network(x))


def _identical(a: list[Tensor], b: list[Tensor], what: str) -> None:
    if len(a) != len(b) or any(not torch.equal(x, y) for x, y in zip(a, b)):
        worst = max((float((x - y).abs().max()) for x, y in zip(a, b) if x.shape == y.shape), default=float("nan"))
        raise AssertionError(f"{what}: outputs differ (largest difference {worst:.3g})")


def probe_once(generator: Generator, inquisitor: Inquisitor, x: Tensor) -> None:
    """One probing pass as between cycles (forward and backward through the probe's hooks; the loss is the mean
    square of the outputs, as no labels exist here), folded into the inquisitor's insights."""
    network, graph, arch = generator.prototype, generator.graph, generator.parent_arch
    probe = inquisitor.attach(network, graph, arch)
    try:
        with evaluating(network):
            sum(out.float().pow(2).mean() for out in output_tensors(network(x))).backward()
    finally:
        result = probe.detach()
        network.zero_grad(set_to_none=True)
    for group_id, group in graph.groups.items():
        if group_id not in result.taylor or result.taylor[group_id].shape != (group.size,):
            raise AssertionError(f"probe recorded no loss sensitivity of the right size for group '{group_id}'")
    inquisitor.fold(inquisitor.measure(result), graph, arch)


def sample(generator: Generator, inquisitor: Inquisitor) -> dict[str, Member]:
    """Networks at about each target fraction of the prototype's MACs (the family builder's aimed cut); each
    must be physically smaller than the prototype."""
    builder = FamilyBuilder(generator, inquisitor, "macs")
    members: dict[str, Member] = {}
    for name, fraction in TARGETS.items():
        member = builder.member(name, builder.resolve(fraction), avoid=[m.arch for m in members.values()])
        if member is None:
            raise AssertionError(f"the generator builds no distinct network near {fraction:g} of the prototype's MACs")
        members[name] = member
    prototype_params = count_params(generator.prototype)
    for member in members.values():
        if member.cost >= builder.prototype_cost or count_params(member.network) >= prototype_params:
            raise AssertionError(f"the {member.name} network is not smaller than the prototype")
    return members


def check_model(model: ZooModel, work_dir: Path, repeats: int, rounds: int) -> dict:
    """Every check on one model; returns its row (verdicts, causes, MACs, params, latencies, speed-ups)."""
    started = time.perf_counter()
    checks = Checks()
    row: dict = {"model": model.name, "input": list(model.input_shape)}
    try:
        torch.manual_seed(0)
        prototype = model.build().eval()
        x = torch.randn(2, *model.input_shape, generator=torch.Generator().manual_seed(0))
        reference = _outputs(prototype, x)
        row.update(macs=count_macs(prototype, model.input_shape), params=count_params(prototype))
        generator = checks.run("trace", lambda: Generator.from_prototype(prototype, model.input_shape, channel_multiple=8))
        graph = generator.graph
        row.update(groups=len(graph.groups), kept_whole=graph.kept_whole)
        inquisitor = Inquisitor()
        checks.run("probe", lambda: probe_once(generator, inquisitor, x))
        members = checks.run("build", lambda: sample(generator, inquisitor))
        for name, member in members.items():
            row[name] = {"macs": member.cost, "params": count_params(member.network), "reached": member.reached,
                         "widths": member.arch.widths()}
        checks.run("shape", lambda: _same_shapes(reference, members, x))
        full = graph.full_architecture()
        checks.run("identity", lambda: _identical(reference, _outputs(graph.materialize(prototype, full, full), x), "unchanged architecture"))
        checks.run("reload", lambda: _reload(model, members["half"], graph, x, work_dir))
        networks = {"prototype": prototype, **{name: member.network for name, member in members.items()}}
        paths = checks.run("onnx", lambda: _export_and_verify(networks, model.input_shape, work_dir, row))
        latency = ort_latency(networks, paths, model.input_shape, repeats, rounds)
        row["ort_ms"] = latency
        row["speedup"] = {name: latency["prototype"] / latency[name] for name in TARGETS}
        checks.run("faster", lambda: _faster(row["speedup"]))
    except _Failed:
        pass
    row.update(checks=checks.verdicts, causes=checks.causes, seconds=round(time.perf_counter() - started, 1))
    row["passed"] = all(verdict == "pass" for verdict in checks.verdicts.values())
    return row


def _same_shapes(reference: list[Tensor], members: dict[str, Member], x: Tensor) -> None:
    expected = [tuple(t.shape) for t in reference]
    for name, member in members.items():
        shapes = [tuple(t.shape) for t in _outputs(member.network, x)]
        if shapes != expected:
            raise AssertionError(f"the {name} network outputs {shapes}, the prototype {expected}")


def _reload(model: ZooModel, member: Member, graph, x: Tensor, work_dir: Path) -> None:
    """Saved as ``best/`` is (spec + weights), reloaded onto a freshly built prototype with other random weights."""
    folder = save_network(work_dir / "best", member.network, member.arch, graph, prototype_config=None)
    torch.manual_seed(1)
    reloaded = load_network(folder, prototype=model.build())
    _identical(_outputs(member.network, x), _outputs(reloaded, x), "reloaded network")


def _export_and_verify(networks: dict[str, nn.Module], input_shape: tuple[int, ...], work_dir: Path, row: dict) -> dict[str, Path]:
    paths, differences = {}, {}
    for name, network in networks.items():
        paths[name] = export_onnx(network, input_shape, work_dir / f"{name}.onnx")
        scale = max(1.0, max(float(t.abs().max()) for t in _outputs(network, torch.randn(2, *input_shape))))
        differences[name] = verify_onnx(network, paths[name], input_shape, atol=ONNX_TOLERANCE * scale)
    row["onnx_max_difference"] = differences
    return paths


def ort_latency(networks: dict[str, nn.Module], paths: dict[str, Path], input_shape: tuple[int, ...], repeats: int,
             rounds: int) -> dict[str, float]:
    """ONNX Runtime median ms at batch 1 on one thread, the median over round-robin passes over the networks (a
    change in machine load hits each alike)."""
    samples: dict[str, list[float]] = {name: [] for name in networks}
    for _ in range(rounds):
        for name, network in networks.items():
            (timing,) = measure_latency(network, paths[name], input_shape, (1,), repeats, threads=1, runtimes=("onnxruntime",))
            samples[name].append(timing["median_ms"])
    return {name: statistics.median(values) for name, values in samples.items()}


def _faster(speedup: dict[str, float]) -> None:
    slow = {name: round(value, 2) for name, value in speedup.items() if value <= 1.0}
    if slow:
        raise AssertionError(f"not faster than the prototype under ONNX Runtime: {slow} (speed-up)")


def _verdict(check: str) -> Column:
    return Column(check, lambda row: {"pass": "ok", "fail": "FAIL", "skipped": "-"}[row["checks"][check]])


def _member(name: str, field: str, fmt: str, header: str) -> Column:
    return Column(header, lambda row: row[name][field] / row[field] if name in row else None, fmt)


ZOO_COLUMNS = [
    key("model"), Column("input", lambda row: "x".join(map(str, row["input"][1:]))), key("groups"),
    Column("MACs", lambda row: f"{row['macs'] / 1e6:.1f}M"), _member("half", "macs", "{:.2f}", "1/2 MACs"),
    _member("quarter", "macs", "{:.2f}", "1/4 MACs"), Column("params", lambda row: f"{row['params'] / 1e6:.2f}M"),
    _member("half", "params", "{:.2f}", "1/2 params"), _member("quarter", "params", "{:.2f}", "1/4 params"),
    *(_verdict(check) for check in CHECKS[:-1]),
    Column("ORT ms", lambda row: row.get("ort_ms", {}).get("prototype"), "{:.2f}"),
    Column("1/2 x", lambda row: row.get("speedup", {}).get("half"), "{:.2f}"),
    Column("1/4 x", lambda row: row.get("speedup", {}).get("quarter"), "{:.2f}"),
    _verdict("faster"),
]


def summarize(rows: list[dict]) -> str:
    """The table, the share of models passing every check and each failure's cause."""
    passed = sum(row["passed"] for row in rows)
    lines = [format_table(rows, ZOO_COLUMNS), f"{passed}/{len(rows)} models pass every check"]
    for row in rows:
        for check, cause in row["causes"].items():
            lines.append(f"  {row['model']} {check}: {cause}")
        for layer, reason in row.get("kept_whole", {}).items():
            lines.append(f"  {row['model']}: group '{layer}' kept whole: {reason}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    names = [m.name for m in MODELS]
    p.add_argument("--models", nargs="+", choices=names, default=names, metavar="MODEL", help=f"some of: {', '.join(names)}")
    p.add_argument("--output", type=Path, default=OUTPUT)
    p.add_argument("--repeats", type=int, default=20, help="timed runs per latency measurement (median)")
    p.add_argument("--rounds", type=int, default=3, help="round-robin latency passes over a model's three networks")
    args = p.parse_args(argv)
    result = {"machine": machine(), "settings": {"repeats": args.repeats, "rounds": args.rounds, "targets": TARGETS,
              "channel_multiple": 8, "ort": "batch 1, 1 thread"}, "rows": []}
    chosen = [m for m in MODELS if m.name in args.models]
    for model in chosen:
        print(f"[zoo] {model.name} ...", flush=True)
        with tempfile.TemporaryDirectory() as work_dir:
            row = check_model(model, Path(work_dir), args.repeats, args.rounds)
        result["rows"].append(row)
        write_json(args.output, result)
        print(f"[zoo] {model.name}: {'passes every check' if row['passed'] else row['causes']} ({row['seconds']} s)", flush=True)
    result["machine_end"] = machine()
    result["table"] = summarize(result["rows"])
    return publish(args.output, result)


if __name__ == "__main__":
    main()
