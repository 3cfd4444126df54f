"""The proposer and the referee on their own, without a Trainer or a loop: aimed proposals, typed decisions, and the
family judged by every condition of its run."""
import pytest
import torch

from gensynth_pl import Gate, Inquisitor, Schedule, SynthesisLoop, SynthesisSettings, count_macs, count_params
from gensynth_pl.collective import SingleProcess
from gensynth_pl.costs import CostContext
from gensynth_pl.family import FamilySettings, build_family
from gensynth_pl.gates import Requirements
from gensynth_pl.graph import NetworkGraph
from gensynth_pl.latency import LatencyMeter
from gensynth_pl.models import cifar_resnet
from gensynth_pl.proposer import AIM_TOLERANCE, Proposer, aim_cut
from gensynth_pl.referee import Choice, Reason, Referee
from gensynth_pl.tasks import ClassificationTask

from conftest import TINY_SHAPE


@pytest.fixture
def prototype():
    torch.manual_seed(0)
    return cifar_resnet(depth=14, width=8, num_classes=4)


def test_aiming_corrects_the_aim_until_the_cut_is_on_target_and_keeps_the_closest():
    calls = []

    def attempt(aim):  # a proposal that cuts only 40% of what it is asked for
        calls.append(aim)
        return 0.4 * 0.3 * aim, aim

    result, aim = aim_cut(attempt, lambda: 0.3, 1.0, 0.05, attempts=4)
    assert calls[0] == 1.0 and abs(0.4 * 0.3 * aim - 0.3) <= 0.05 * 0.3 and result == aim == pytest.approx(2.5)
    saturating = lambda aim: (min(0.9, aim), aim)  # noqa: E731  nothing cuts more than 0.9
    result, aim = aim_cut(saturating, lambda: 0.95, 1.0, 0.01, attempts=3)
    assert result == 1.0 and 1.0 < aim <= 4.0  # the first attempt came as close as any; the aim grew within its range
    overshooting = lambda aim: (0.5 if aim > 1.2 else 0.1, aim)  # noqa: E731  a step change: bisect the bracket
    result, aim = aim_cut(overshooting, lambda: 0.3, 1.0, 0.01, attempts=4)
    assert 1.0 < aim < 3.0  # 3.0 = 1.0 * 0.3 / 0.1 cut too much; the next aims stay inside (1.0, 3.0)


def make_proposer(prototype, requirements=None, step=0.3):
    graph = NetworkGraph.trace(prototype, TINY_SHAPE)
    requirements = requirements or Requirements.of(Gate("val/acc", 0.05))
    proposer = Proposer(SynthesisSettings(channel_multiple=1), Inquisitor(step=step), requirements,
                        Schedule(1, 3, 1, 0.2), SingleProcess())
    proposer.price(prototype, CostContext(TINY_SHAPE, LatencyMeter()))
    proposer.start(prototype, graph, None, {})
    return proposer


def test_a_proposal_is_a_smaller_network_aimed_at_the_step_and_reproducible_from_its_state(prototype):
    proposer = make_proposer(prototype)
    proposal = proposer.propose(cycle=1)
    parent_macs = count_macs(prototype, TINY_SHAPE)
    assert count_macs(proposal.network, TINY_SHAPE) == pytest.approx((1 - proposal.cut) * parent_macs, rel=1e-6)
    assert abs(proposal.cut - proposer.step()) <= AIM_TOLERANCE * proposer.step() and proposal.redraws == 0
    again = make_proposer(prototype)
    again.load_state_dict(proposer.state_dict(), prototype, proposer.generator.graph, None)
    assert again.aim == proposer.aim and again.propose(cycle=2).arch == proposer.propose(cycle=2).arch


def test_a_rejection_rolls_the_generator_back_and_its_halved_step_stands_against_an_unmet_budget(prototype):
    requirements = Requirements("val/acc", 0.05, max_macs=0.05)
    requirements.resolve_budgets(count_macs(prototype, TINY_SHAPE), 0)
    proposer = make_proposer(prototype, requirements, step=0.1)
    proposer.parent_budgets = {"macs": float(count_macs(prototype, TINY_SHAPE))}
    assert proposer.step() > proposer.inquisitor.step  # an unmet budget asks for a deeper cut
    before = {g: t.clone() for g, t in proposer.generator.channel_logits.items()}
    proposer.propose(cycle=1)
    proposer.reject()
    assert all(torch.equal(t, before[g]) for g, t in proposer.generator.channel_logits.items())
    assert proposer.step() == proposer.inquisitor.step


def make_referee(prototype, allowance=1.0, **requirements):
    referee = Referee(Requirements("val/acc", 0.05, **requirements), recovery_allowance=allowance)
    graph = NetworkGraph.trace(prototype, TINY_SHAPE)
    referee.requirements.resolve_budgets(count_macs(prototype, TINY_SHAPE), count_params(prototype))
    referee.judge_prototype(prototype, graph.full_architecture(), TINY_SHAPE, {"val/acc": 0.80}, diverged=False)
    return referee, graph.full_architecture()


def test_every_decision_carries_its_reason(prototype):
    referee, arch = make_referee(prototype)
    assert referee.best.cycle == 0 and referee.gate.bound == pytest.approx(0.75)
    smaller = cifar_resnet(depth=8, width=8, num_classes=4)
    judge = lambda metric, cycle, epochs=(0.6,), early=False, diverged=False: referee.judge_candidate(  # noqa: E731
        smaller, arch, cycle, TINY_SHAPE, {"val/acc": metric}, [*epochs, metric], early, diverged)
    passed = judge(0.78, 1, epochs=(0.70,))  # recovered 0.08 from its first epoch
    assert passed.reason is Reason.PASSED and passed.accepted and referee.measured_recovery() == pytest.approx(0.08)
    assert referee.leader.cycle == 1 and referee.allowance() == pytest.approx(0.08)
    allowed = judge(0.70, 2)  # 0.05 below the bound, within the 0.08 allowance
    assert allowed.reason is Reason.ALLOWED and allowed.accepted and not allowed.report.gate_passed
    assert judge(0.60, 3).reason is Reason.ROLLED_BACK and judge(0.60, 4, early=True).reason is Reason.REJECTED_EARLY
    diverged = judge(float("nan"), 5, diverged=True)
    assert diverged.reason is Reason.DIVERGED and not diverged.accepted and diverged.margin == -1.0
    assert referee.rejects_early(1, 0.40) and not referee.rejects_early(1, 0.74) and not referee.rejects_early(2, 0.4)
    assert referee.best.cycle == referee.leader.cycle == 1  # the smaller network that met the gate, with the best NetScore


def test_the_polish_is_the_answer_only_when_it_ranks_at_least_as_high(prototype):
    referee, arch = make_referee(prototype)
    referee.leader = Choice(arch, prototype, referee.best.report, 1)
    kept = referee.judge_polish(prototype, TINY_SHAPE, {"val/acc": 0.70})
    assert kept.reason is Reason.ROLLED_BACK and referee.best.cycle == 0
    taken = referee.judge_polish(prototype, TINY_SHAPE, {"val/acc": 0.81})
    assert taken.reason is Reason.PASSED and referee.best.cycle == 1 and referee.best.report.metric == 0.81
    referee, arch = make_referee(prototype, max_macs=0.01)  # no network meets the budget: the closest is kept
    referee.leader = Choice(arch, prototype, referee.best.report, 1)
    closest = referee.judge_polish(prototype, TINY_SHAPE, {"val/acc": 0.81})
    assert closest.reason is Reason.CLOSEST and not closest.report.gate_passed and referee.best.cycle == 1


@pytest.mark.parametrize("condition", ["secondary gate", "budget"])
def test_a_family_member_must_meet_every_condition_of_the_run(prototype, tiny_data, tmp_path, condition):
    """Members are judged by the run's referee: a secondary metric gate or a budget they miss fails them."""
    requirements = (Requirements("val/acc", 0.0, relative=False, metrics=(
        {"monitor": "val/acc_macro", "threshold": 1.01, "relative": False},)) if condition == "secondary gate"
        else Requirements("val/acc", 0.0, relative=False, max_macs=0.3))
    loop = SynthesisLoop(requirements, Schedule(1, 2, 1, 0.2), output_dir=tmp_path, channel_multiple=1,
                         log=lambda text: None, distill_weight=0.0)
    loop.trace(prototype, TINY_SHAPE)
    loop.end_epoch(0, prototype, {"val/acc": 0.5, "val/acc_macro": 0.5})  # φ concluded: the generator file is written
    result = build_family(tmp_path / "generator.safetensors", tiny_data, ClassificationTask(4),
                          FamilySettings(targets=(0.5,), finetune_epochs=0), prototype=prototype)
    (row,) = result["rows"]
    unmet = "val/acc_macro" if condition == "secondary gate" else "macs"
    assert row["reached"] and not row["gate_passed"] and row["unmet"] == [unmet]
    assert row["conditions"]["val/acc"]["passed"]  # the primary gate alone would have passed it
