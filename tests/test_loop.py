"""The synthesis loop's decisions, driven without any Trainer: the caller trains (here: a few SGD steps)."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gensynth_pl import Gate, Inquisitor, Schedule, SynthesisLoop, count_macs
from gensynth_pl.models import cifar_resnet
from gensynth_pl.rundir import WEIGHTS_FILE
from gensynth_pl.schedule import CYCLE, PROTOTYPE

from conftest import TINY_SHAPE


def make_loop(tmp_path=None, **kwargs) -> SynthesisLoop:
    settings = dict(inquisitor=Inquisitor(step=0.4), channel_multiple=1, probe_batches=2, log=lambda text: None)
    settings.update(kwargs)
    return SynthesisLoop(Gate("val/acc", 0.05, relative=True), Schedule(1, 3, 1, 0.2), output_dir=tmp_path, **settings)


def train_and_probe(loop: SynthesisLoop, network: nn.Module, epoch: int) -> None:
    """One 'epoch' of two SGD steps on random data, probed where the loop asks for it."""
    optimizer = torch.optim.SGD(network.parameters(), lr=0.01)
    probe = None
    torch.manual_seed(epoch)
    for batch in range(2):
        x, y = torch.randn(8, *TINY_SHAPE), torch.randint(0, 4, (8,))
        if loop.probes(epoch, batch):
            probe = probe or loop.attach_probe(network)
            probe.record_targets((x, y))
        loss = F.cross_entropy(network(x), y)
        loop.check_loss(loss.detach())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    if probe is not None:
        loop.observe(probe.detach())


@pytest.fixture
def prototype() -> nn.Module:
    torch.manual_seed(0)
    return cifar_resnet(depth=14, width=8, num_classes=4)


def test_loop_concludes_the_prototype_and_proposes_a_smaller_candidate(prototype):
    loop = make_loop()
    loop.trace(prototype, TINY_SHAPE)
    assert loop.schedule.phase.kind == PROTOTYPE
    train_and_probe(loop, prototype, 0)
    candidate = loop.end_epoch(0, prototype, 0.80)
    assert loop.gate.bound == pytest.approx(0.75) and loop.record.prototype.metric == pytest.approx(0.80)
    assert loop.schedule.phase.kind == CYCLE and loop.schedule.phase.index == 1 and loop.schedule.phase.lr_scale == 0.2
    assert count_macs(candidate, TINY_SHAPE) < loop.record.prototype.macs
    assert loop.inquisitor.insights  # the prototype's probe was folded into θ_I
    assert loop.record.best_cycle == 0 and loop.best.network is not prototype


def test_a_passing_cycle_is_accepted_and_a_failing_one_rolls_back(prototype):
    loop = make_loop()
    loop.trace(prototype, TINY_SHAPE)
    candidate = loop.end_epoch(0, prototype, 0.80)
    first_arch = loop.proposal.arch
    train_and_probe(loop, candidate, 1)
    second = loop.end_epoch(1, candidate, 0.79)  # passes the 0.75 bound
    entry = loop.record.cycles[-1]
    assert entry.accepted and entry.report.gate_passed and loop.record.best_cycle == 1
    assert len(loop.generator.lineage) == 2 and loop.generator.parent_arch == first_arch
    assert loop.inquisitor.step == pytest.approx(0.5)  # a pass with margin grows the step (capped at max_step)
    logits_before = {g: t.clone() for g, t in loop.generator.channel_logits.items()}
    train_and_probe(loop, second, 2)
    third = loop.end_epoch(2, second, 0.60)  # fails
    entry = loop.record.cycles[-1]
    assert not entry.accepted and len(loop.generator.lineage) == 2
    assert 0 < entry.cut and loop.inquisitor.step == pytest.approx(entry.cut / 2, abs=1e-4)  # halved from what the candidate cut
    assert third is not None and loop.schedule.phase.index == 3
    assert all(t.shape == logits_before[g].shape for g, t in loop.generator.channel_logits.items())
    assert loop.end_epoch(3, third, float("nan")) is None and loop.schedule.phase is None  # the run is over
    assert [c.cycle for c in loop.record.cycles] == [1, 2, 3] and not loop.record.cycles[-1].accepted


def test_a_non_finite_loss_rejects_the_candidate(prototype):
    loop = make_loop()
    loop.trace(prototype, TINY_SHAPE)
    candidate = loop.end_epoch(0, prototype, 0.80)
    loop.start_phase()
    loop.check_loss(torch.tensor(float("nan")))
    loop.end_epoch(1, candidate, 0.99)
    assert loop.record.cycles[0].diverged and not loop.record.cycles[0].accepted
    with pytest.raises(FloatingPointError, match="prototype's training diverged"):
        fresh = make_loop()
        fresh.trace(prototype, TINY_SHAPE)
        fresh.check_loss(torch.tensor(float("inf")))
        fresh.end_epoch(0, prototype, 0.8)


def test_loop_state_round_trip_proposes_the_same_next_candidate(prototype, tmp_path):
    loop = make_loop(tmp_path)
    loop.trace(prototype, TINY_SHAPE)
    candidate = loop.end_epoch(0, prototype, 0.80)
    state = loop.state_dict()  # as a checkpoint saved after the epoch holds it
    restored = make_loop()
    torch.manual_seed(1)  # a fresh prototype: its weights are replaced by the state's
    reshaped = restored.load_state_dict(state, cifar_resnet(depth=14, width=8, num_classes=4))
    assert count_macs(reshaped, TINY_SHAPE) == count_macs(candidate, TINY_SHAPE)
    reshaped.load_state_dict(candidate.state_dict())
    train_and_probe(loop, candidate, 1)
    train_and_probe(restored, reshaped, 1)
    a, b = loop.end_epoch(1, candidate, 0.79), restored.end_epoch(1, reshaped, 0.79)
    assert loop.proposal.arch == restored.proposal.arch and loop.record.to_dict()["cycles"][0]["widths"] == \
        restored.record.to_dict()["cycles"][0]["widths"]
    assert count_macs(a, TINY_SHAPE) == count_macs(b, TINY_SHAPE)
    assert (tmp_path / "summary.json").is_file() and (tmp_path / "best" / WEIGHTS_FILE).is_file()


def test_samples_that_rebuild_the_parent_are_redrawn_then_the_step_grows():
    """With every channel at its floor nothing can be cut: each draw rebuilds the parent, the step grows to
    its maximum, and only then is the parent trained again (the attempts are recorded)."""
    torch.manual_seed(0)
    network = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                            nn.Flatten(), nn.Linear(8, 4))
    loop = make_loop(min_channels=1.0, inquisitor=Inquisitor(step=0.3, max_step=0.5, growth=1.5))
    loop.trace(network, TINY_SHAPE)
    candidate = loop.end_epoch(0, network, 0.8)
    assert loop.graph.same_network(loop.proposal.arch, loop.generator.parent_arch)
    assert loop.inquisitor.step == pytest.approx(0.5) and loop.proposal.redraws == 3 * 8  # at 0.3, 0.45 and 0.5
    assert count_macs(candidate, TINY_SHAPE) == loop.record.prototype.macs


def test_a_drawn_duplicate_is_replaced_by_a_different_network(prototype):
    loop = make_loop(inquisitor=Inquisitor(step=0.02, min_step=0.02))
    loop.trace(prototype, TINY_SHAPE)
    network = loop.end_epoch(0, prototype, 0.80)
    redraws = 0
    for epoch in range(1, 4):
        assert not loop.graph.same_network(loop.proposal.arch, loop.generator.parent_arch)
        redraws += loop.proposal.redraws
        network = loop.end_epoch(epoch, network, 0.80) or network
    assert redraws > 0  # small steps draw the parent again often enough to be seen in three cycles
