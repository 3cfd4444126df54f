"""Operational requirements as users state them: metric gates and MAC/param/latency budgets, all of which the
answer must meet, and latency-aware channel costs."""
import pytest
import torch
from torch import nn

from gensynth_pl import Inquisitor, Schedule, SynthesisLoop
from gensynth_pl.costs import LatencyCosts
from gensynth_pl.gates import Requirements
from gensynth_pl.latency import LatencyMeter, LatencyModel
from gensynth_pl.models import cifar_resnet
from gensynth_pl.report import final_summary, polish_line

from conftest import TINY_SHAPE

FAST = LatencyMeter(batch=4, repeats=3, warmup=1)


def make_loop(requirements: Requirements, cycles: int = 2, **kwargs) -> SynthesisLoop:
    settings = dict(inquisitor=Inquisitor(step=0.2), channel_multiple=1, log=lambda text: None, distill_weight=0.0)
    settings.update(kwargs)
    return SynthesisLoop(requirements, Schedule(1, cycles, 1, 0.2), **settings)


@pytest.fixture
def prototype():
    torch.manual_seed(0)
    return cifar_resnet(depth=8, width=8, num_classes=4)


def run(loop: SynthesisLoop, network, metrics: list[dict]):
    for epoch, values in enumerate(metrics):
        network = loop.end_epoch(epoch, network, values) or network
    return network


def test_a_candidate_that_meets_the_metrics_but_not_a_budget_is_kept_going_and_named(prototype):
    requirements = Requirements("val/acc", 0.05, metrics=({"monitor": "val/acc_macro", "threshold": 0.05},), max_macs=0.2)
    loop = make_loop(requirements)
    loop.trace(prototype, TINY_SHAPE)
    scores = {"val/acc": 0.80, "val/acc_macro": 0.78}
    run(loop, prototype, [scores, scores, scores])
    first = loop.record.cycles[0]
    assert first.accepted and not first.report.gate_passed  # the metrics hold, the MAC budget does not (yet)
    assert first.report.conditions["val/acc_macro"].passed and not first.report.conditions["macs"].passed
    assert not loop.record.best.gate_passed and loop.record.best_cycle > 0  # the closest network so far is kept
    assert "macs" in final_summary(loop.record) and "unmet" in final_summary(loop.record)
    failing = dict(scores, **{"val/acc_macro": 0.60})  # the second metric gate fails: rejected
    loop = make_loop(Requirements("val/acc", 0.05, metrics=({"monitor": "val/acc_macro", "threshold": 0.05},)))
    loop.trace(prototype, TINY_SHAPE)
    run(loop, prototype, [scores, failing])
    assert not loop.record.cycles[0].accepted and loop.record.cycles[0].report.conditions["val/acc_macro"].passed is False


def test_when_no_network_meets_a_budget_the_polished_leader_is_kept_as_the_closest(prototype):
    loop = SynthesisLoop(Requirements("val/acc", 0.05, max_macs=0.15), Schedule(1, 1, 1, 0.2, polish_epochs=1),
                         inquisitor=Inquisitor(step=0.2, max_step=0.3), channel_multiple=1, log=lambda text: None,
                         distill_weight=0.0)
    loop.trace(prototype, TINY_SHAPE)
    run(loop, prototype, [{"val/acc": 0.80}, {"val/acc": 0.78}, {"val/acc": 0.84}])
    polish, best = loop.record.polish, loop.record.best
    assert not best.gate_passed and best.conditions["macs"].passed is False  # one cycle cannot reach 15% of φ
    assert polish.accepted and best.metric == pytest.approx(0.84) and best.macs == polish.before.macs
    assert "comes closest: kept as the answer" in polish_line(polish, "", loop.record.best_cycle, best)


def test_an_unmet_budget_keeps_the_compression_going_until_it_holds(prototype):
    loop = make_loop(Requirements("val/acc", 0.5, max_macs=0.15), cycles=3)
    loop.trace(prototype, TINY_SHAPE)
    run(loop, prototype, [{"val/acc": 0.8}] * 4)
    macs = [c.report.macs for c in loop.record.cycles]
    assert macs == sorted(macs, reverse=True) and loop.record.best.gate_passed  # every cycle cut, the last meets it
    assert loop.record.best.macs <= 0.15 * loop.record.prototype.macs
    loop = make_loop(Requirements("val/acc", 0.05, max_macs=0.15), cycles=3)
    loop.trace(prototype, TINY_SHAPE)
    run(loop, prototype, [{"val/acc": 0.8}, {"val/acc": 0.5}])  # the first candidate fails the gate
    assert not loop.record.cycles[0].accepted and loop.proposer.step() == loop.inquisitor.step  # no forced cut after a failure
    loop.proposer.after_rejection = False  # as after a pass
    assert loop.proposer.step() > loop.inquisitor.step  # after a pass the unmet budget forces a deeper cut


def test_budgets_no_network_can_meet_and_unknown_runtimes_fail_before_training(prototype):
    loop = make_loop(Requirements("val/acc", 0.05, max_macs=1000))
    with pytest.raises(ValueError, match=r"gate.max_macs: no network can meet macs <= 1000.*min_channels"):
        loop.trace(prototype, TINY_SHAPE)
    with pytest.raises(ValueError, match="latency runtime 'tensorrt' is unknown"):
        LatencyMeter(runtime="tensorrt")
    with pytest.raises(ValueError, match="gate.max_latency_ms=0"):
        Requirements(max_latency_ms=0)
    with pytest.raises(ValueError, match="synthesis.cost='flops' is unknown"):
        make_loop(Requirements(), cost="flops")


def test_latency_model_grows_with_width_and_is_reused_from_the_run_directory(tmp_path):
    torch.manual_seed(0)
    network = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1),
                            nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 4))
    model = LatencyModel.build(network.train(), (3, 64, 64), LatencyMeter(batch=8, repeats=9), log=lambda text: None)
    assert network.training  # the run's prototype trains on after its layers were timed
    for side in ("out", "in"):
        curve = model.curves["3"][side]
        assert [w for w, _ in curve] == [16, 32, 48, 64]
        assert all(a[1] <= b[1] for a, b in zip(curve, curve[1:])) and curve[-1][1] > 1.5 * curve[0][1]  # 4x the work
    assert model.slope("3", 64, 64, "out") > 0 and model.total(network) == pytest.approx(sum(
        model.layer_ms(name, *widths) for name, widths in (("0", (3, 64)), ("3", (64, 64)), ("7", (64, 4)))))
    loop = make_loop(Requirements(latency=FAST), cost="latency", output_dir=tmp_path)
    loop.trace(cifar_resnet(depth=8, width=8, num_classes=4), TINY_SHAPE)
    assert isinstance(loop.proposer.costs, LatencyCosts) and (tmp_path / "latency_model.json").is_file()
    built = (tmp_path / "latency_model.json").stat().st_mtime_ns
    again = make_loop(Requirements(latency=FAST), cost="latency", output_dir=tmp_path)
    again.trace(cifar_resnet(depth=8, width=8, num_classes=4), TINY_SHAPE)
    assert again.proposer.costs.model.curves == loop.proposer.costs.model.curves  # read back, not measured again
    assert (tmp_path / "latency_model.json").stat().st_mtime_ns == built
    assert LatencyModel.load(tmp_path / "latency_model.json", LatencyMeter(batch=64)) is None  # other settings: rebuilt


def test_latency_costs_drive_a_synthesis_and_a_latency_budget_is_measured(prototype, tmp_path):
    loop = make_loop(Requirements("val/acc", 0.5, max_latency_ms=1e4, latency=FAST), cost="latency", output_dir=tmp_path)
    loop.trace(prototype, TINY_SHAPE)
    candidate = run(loop, prototype, [{"val/acc": 0.8}] * 2)
    entry = loop.record.cycles[0]
    assert entry.accepted and entry.report.gate_passed and 0 < entry.report.conditions["latency_ms"].value < 1e4
    assert entry.cut > 0 and candidate is not None
