"""What makes each training epoch count: distillation from φ, judging candidates by what they will reach,
early rejection that frees epochs, and the final polish with its fallback."""
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gensynth_pl import Gate, Inquisitor, Schedule, SynthesisLoop
from gensynth_pl.distillation import Distiller, soft_target_loss
from gensynth_pl.models import cifar_resnet
from gensynth_pl.report import final_summary
from gensynth_pl.schedule import CYCLE, POLISH

from conftest import TINY_SHAPE


def make_loop(schedule: Schedule, gate: Gate | None = None, **kwargs) -> SynthesisLoop:
    settings = dict(inquisitor=Inquisitor(step=0.3), channel_multiple=1, log=lambda text: None, distill_weight=0.0)
    settings.update(kwargs)
    return SynthesisLoop(gate or Gate("val/acc", 0.02, relative=True), schedule, **settings)


@pytest.fixture
def prototype():
    torch.manual_seed(0)
    return cifar_resnet(depth=8, width=8, num_classes=4)


def run_epochs(loop: SynthesisLoop, network, metrics: list[float], start: int = 0):
    """Feed ``metrics`` as the validation results of consecutive epochs; returns the network in training."""
    for epoch, metric in enumerate(metrics, start=start):
        network = loop.end_epoch(epoch, network, metric) or network
    return network


def test_early_rejection_frees_the_rest_of_the_candidates_epochs_for_the_polish(prototype):
    loop = make_loop(Schedule(1, 3, 2, 0.2, polish_epochs=2), early_reject_margin=0.0)
    loop.trace(prototype, TINY_SHAPE)
    budget = loop.schedule.total_epochs
    network = run_epochs(loop, prototype, [0.80, 0.70, 0.79])  # φ, then cycle 1 recovers 0.09 in its second epoch
    assert loop.record.cycles[0].accepted and loop.referee.measured_recovery() == pytest.approx(0.09)
    run_epochs(loop, network, [0.55], start=3)  # cycle 2's first epoch: even +0.09 and the allowance fall short
    entry = loop.record.cycles[-1]
    assert entry.early_rejected and not entry.accepted and entry.epochs == 1
    assert loop.schedule.phase.kind == CYCLE and loop.schedule.phase.start == 4  # cycle 3 starts at once
    run_epochs(loop, network, [0.75, 0.79], start=4)
    polish = loop.schedule.phase
    assert polish.kind == POLISH and polish.epochs == 2 + 1 and polish.last_epoch == budget - 1  # the freed epoch
    assert loop.schedule.total_epochs == budget


def test_candidates_within_the_measured_recovery_are_accepted_and_the_polished_answer_must_pass(prototype):
    loop = make_loop(Schedule(1, 2, 2, 0.2, polish_epochs=2), recovery_allowance=0.5)
    loop.trace(prototype, TINY_SHAPE)
    network = run_epochs(loop, prototype, [0.80, 0.70, 0.79])  # bound 0.78; cycle 1 passes and recovers 0.09
    assert loop.referee.allowance() == pytest.approx(0.045)
    network = run_epochs(loop, network, [0.70, 0.75], start=3)  # 0.75: below the bound, within the allowance
    second = loop.record.cycles[-1]
    assert second.accepted and not second.report.gate_passed and second.allowance == pytest.approx(0.045)
    assert loop.referee.leader.cycle == 2 and loop.best.cycle == 1  # the answer so far still passes the real gate
    assert loop.schedule.phase.kind == POLISH
    run_epochs(loop, network, [0.77, 0.785], start=5)
    assert loop.record.polish.accepted and loop.record.polish.before.metric == pytest.approx(0.75)
    assert loop.best.cycle == 2 and loop.record.best.metric == pytest.approx(0.785) and loop.record.best.gate_passed


def test_a_polish_that_fails_the_gate_falls_back_to_the_best_network_that_passed(prototype):
    loop = make_loop(Schedule(1, 2, 2, 0.2, polish_epochs=1), recovery_allowance=1.0)
    loop.trace(prototype, TINY_SHAPE)
    network = run_epochs(loop, prototype, [0.80, 0.70, 0.79, 0.70, 0.75])
    assert loop.referee.leader.cycle == 2 and loop.best.cycle == 1
    run_epochs(loop, network, [0.76], start=5)
    polish = loop.record.polish
    assert not polish.accepted and not polish.after.gate_passed
    assert loop.record.best_cycle == 1 and loop.record.best.metric == pytest.approx(0.79)


def test_candidates_beating_the_prototype_by_more_than_the_drop_flag_an_under_trained_prototype(prototype):
    loop = make_loop(Schedule(1, 1, 1, 0.2), recovery_allowance=0.0)
    loop.trace(prototype, TINY_SHAPE)
    with pytest.warns(UserWarning, match="under-trained"):
        run_epochs(loop, prototype, [0.32, 0.60])
    assert loop.record.prototype_undertrained and loop.record.to_dict()["prototype_undertrained"]


def test_candidates_whose_metric_falls_with_fine_tuning_flag_a_gate_that_judges_noise(prototype):
    loop = make_loop(Schedule(1, 3, 2, 0.2), early_reject_margin=None)
    loop.trace(prototype, TINY_SHAPE)
    network = run_epochs(loop, prototype, [0.80, 0.79, 0.78])  # φ, then cycle 1 falls from its first epoch to its last
    assert not loop.record.noisy_metric  # one candidate measures nothing yet
    with pytest.warns(UserWarning, match="none of 2 candidates' val/acc improved with fine-tuning"):
        network = run_epochs(loop, network, [0.77, 0.75], start=3)
    assert loop.record.noisy_metric and loop.record.to_dict()["noisy_metric"]
    assert "judged epoch-to-epoch noise" in final_summary(loop.record)
    assert len(loop.record.cycles) == 2 and loop.referee.measured_recovery() == pytest.approx(-0.015)


@pytest.mark.parametrize("metrics", [
    [0.80, 0.70, 0.71, 0.79, 0.76, 0.77, 0.75],  # one candidate improves (+0.01), then two fall
    [1.00, 0.95, 0.95, 0.95, 0.95, 0.95, 0.94],  # mostly flat: a saturated metric barely moves, it is not noise
], ids=["one improves", "mostly flat"])
def test_the_noise_warning_stays_silent_unless_fine_tuning_only_lowers_the_metric(prototype, metrics):
    loop = make_loop(Schedule(1, 3, 2, 0.2), early_reject_margin=None)
    loop.trace(prototype, TINY_SHAPE)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning fails the test
        run_epochs(loop, prototype, metrics)
    assert len(loop.record.cycles) == 3 and not loop.record.noisy_metric


def test_a_lower_is_better_gate_measures_recovery_toward_its_bound(prototype):
    loop = make_loop(Schedule(1, 1, 2, 0.2), Gate("val/loss", 0.02, relative=True, higher_is_better=False))
    loop.trace(prototype, TINY_SHAPE)
    run_epochs(loop, prototype, [0.50, 0.70, 0.52])  # φ's loss 0.50 (bound 0.52), cycle 1: 0.70 then 0.52
    assert loop.referee.measured_recovery() == pytest.approx(0.18) and not loop.record.noisy_metric


def test_distillation_adds_exactly_the_gradient_of_the_weighted_soft_target_loss(prototype):
    teacher = cifar_resnet(depth=8, width=8, num_classes=4).eval()
    student = cifar_resnet(depth=8, width=8, num_classes=4).train()
    x, y = torch.randn(8, *TINY_SHAPE), torch.randint(0, 4, (8,))
    handle = Distiller(teacher, soft_target_loss, weight=0.7, temperature=3.0).attach(student)
    F.cross_entropy(student(x), y).backward()
    hooked = [p.grad.clone() for p in student.parameters()]
    handle.remove()
    student.zero_grad()
    with torch.no_grad():
        target = teacher(x)
    outputs = student(x)
    (F.cross_entropy(outputs, y) + 0.7 * soft_target_loss(outputs, target, 3.0)).backward()
    assert all(torch.allclose(a, p.grad, atol=1e-6) for a, p in zip(hooked, student.parameters()))
    student.eval()
    assert torch.equal(student(x), student(x))  # evaluation runs no teacher and adds nothing


def test_distilling_every_second_batch_runs_the_teacher_half_as_often_at_twice_the_weight():
    teacher = cifar_resnet(depth=8, width=8, num_classes=4).eval()
    student = cifar_resnet(depth=8, width=8, num_classes=4).train()
    distiller = Distiller(teacher, soft_target_loss, weight=0.7, temperature=3.0, every=2)
    teacher_passes = []
    distiller.teacher.register_forward_hook(lambda *args: teacher_passes.append(1))
    handle = distiller.attach(student)
    x, y = torch.randn(8, *TINY_SHAPE), torch.randint(0, 4, (8,))
    gradients = []
    for _ in range(4):
        student.zero_grad()
        F.cross_entropy(student(x), y).backward()
        gradients.append([p.grad.clone() for p in student.parameters()])
    handle.remove()
    assert len(teacher_passes) == 2
    student.zero_grad()
    outputs = student(x)
    F.cross_entropy(outputs, y).backward()
    plain = [p.grad.clone() for p in student.parameters()]
    student.zero_grad()
    outputs = student(x)
    (F.cross_entropy(outputs, y) + 1.4 * soft_target_loss(outputs, distiller.teacher(x), 3.0)).backward()
    doubled = [p.grad.clone() for p in student.parameters()]
    for step, expected in enumerate([doubled, plain, doubled, plain]):
        assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(gradients[step], expected))
    with pytest.raises(ValueError, match="distill_every=0"):
        Distiller(teacher, soft_target_loss, every=0)
    with pytest.raises(ValueError, match="distill_every=0"):  # before φ trains, not after
        SynthesisLoop(Gate(), Schedule(1, 1, 1, 0.2), distill_every=0)


def _fit(network: nn.Module, data, lr: float, epochs: int) -> None:
    """Plain cross-entropy training (a distillation hook on ``network`` adds its gradient)."""
    optimizer = torch.optim.SGD(network.parameters(), lr=lr, momentum=0.9)
    for _ in range(epochs):
        for x, y in data.train_dataloader():
            optimizer.zero_grad()
            F.cross_entropy(network(x), y).backward()
            optimizer.step()


def test_distillation_narrows_the_gap_to_the_teacher_on_a_tiny_run(tiny_data):
    tiny_data.setup("fit")
    torch.manual_seed(0)
    teacher = cifar_resnet(depth=8, width=8, num_classes=4)
    _fit(teacher, tiny_data, lr=0.05, epochs=3)
    teacher.eval()
    inputs = torch.cat([x for x, _ in tiny_data.val_dataloader()])
    gaps = {}
    for weight in (0.0, 1.0):  # the same narrower student, from the same start, on the same batches
        torch.manual_seed(1)
        student = cifar_resnet(depth=8, width=4, num_classes=4)
        handle = Distiller(teacher, soft_target_loss, weight=weight, temperature=4.0).attach(student)
        torch.manual_seed(2)
        _fit(student, tiny_data, lr=0.02, epochs=2)
        handle.remove()
        with torch.no_grad():
            gaps[weight] = float(soft_target_loss(student.eval()(inputs), teacher(inputs), 1.0))
    assert gaps[1.0] < gaps[0.0] - 0.05  # measured: 1.02 against 1.15


def test_one_epoch_cycles_measure_the_recovery_in_a_longer_first_cycle(prototype):
    loop = make_loop(Schedule(1, 4, 1, 0.2, polish_epochs=1, first_cycle_epochs=2))
    loop.trace(prototype, TINY_SHAPE)
    network = run_epochs(loop, prototype, [0.80])
    assert loop.schedule.phase.epochs == 2  # the first cycle: two epochs
    network = run_epochs(loop, network, [0.70, 0.79], start=1)  # recovers 0.09 from its first epoch to its second
    assert loop.referee.allowance() == pytest.approx(0.75 * 0.09) and loop.schedule.phase.epochs == 1
    run_epochs(loop, network, [0.74], start=3)  # one epoch, 0.04 below the bound 0.78: within the measured recovery
    assert [c.epochs for c in loop.record.cycles] == [2, 1] and loop.record.cycles[-1].reason.value == "allowed"
    with pytest.raises(ValueError, match="first_cycle_epochs=0"):
        Schedule(1, 4, 1, 0.2, first_cycle_epochs=0)


def test_the_polish_trains_at_its_own_rate_and_cycles_at_the_fine_tuning_rate():
    schedule = Schedule(1, 1, 1, 0.5, polish_epochs=2, polish_lr_scale=1.0)
    cycle = schedule.advance(0)
    polish = schedule.advance(cycle.last_epoch)
    assert (cycle.kind.value, cycle.lr_scale) == ("cycle", 0.5)
    assert (polish.kind.value, polish.lr_scale, polish.epochs) == ("polish", 1.0, 2)
    assert Schedule(1, 1, 1, 0.5, polish_epochs=2).polish_lr_scale == 0.5  # unset: the fine-tuning rate
    with pytest.raises(ValueError, match="polish_lr_scale=1.5"):
        Schedule(1, 1, 1, 0.5, polish_lr_scale=1.5)
    with pytest.raises(ValueError, match="finetune_lr_scale=None"):  # unset is the polish's choice only
        Schedule(1, 1, 1, None)
