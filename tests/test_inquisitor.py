import pytest
import torch
import torch.nn.functional as F

from gensynth_pl.generator import KEEP_LOGIT, Generator
from gensynth_pl.graph import Architecture
from gensynth_pl.inquisitor import CycleOutcome, Inquisitor, _redundancy
from gensynth_pl.metrics import count_macs, macs_per_module
from gensynth_pl.models import cifar_resnet

from conftest import TINY_SHAPE


def test_probe_observes_responses_and_loss_sensitivity(tiny_resnet):
    generator = Generator.from_prototype(tiny_resnet, TINY_SHAPE)
    inquisitor = Inquisitor()
    probe = inquisitor.attach(tiny_resnet, generator.graph, generator.parent_arch)
    for _ in range(2):
        x, y = torch.randn(8, *TINY_SHAPE), torch.randint(0, 4, (8,))
        probe.record_targets((x, y))
        F.cross_entropy(tiny_resnet(x), y).backward()
    result = probe.detach()
    assert result.batches == 2 and result.targets.shape == (16,)
    assert set(result.taylor) == set(generator.graph.groups)
    for group_id, group in generator.graph.groups.items():
        assert result.taylor[group_id].shape == (group.size,) and (result.taylor[group_id] >= 0).all()
        assert result.responses[group_id].shape == (16, group.size)
    assert sum(float(t.sum()) for t in result.taylor.values()) > 0
    tiny_resnet(torch.randn(2, *TINY_SHAPE)).sum().backward()  # detached: nothing more is recorded
    assert probe.detach().batches == 2


def test_information_measures_separate_informative_from_constant_channels():
    torch.manual_seed(0)
    labels = torch.arange(400) % 4
    responses = torch.stack([torch.full((400,), 3.0), labels.float(), torch.randn(400), labels.float() * 2 + 1], dim=1)
    entropy, mutual_info = Inquisitor()._information(responses, labels)
    assert entropy[0] == 0 and mutual_info[0] == 0  # a constant response carries nothing
    assert mutual_info[1] > 0.95 and mutual_info[2] < 0.2  # the label itself vs independent noise
    redundancy = _redundancy(responses)
    assert redundancy[1] == pytest.approx(1.0) and redundancy[3] == pytest.approx(1.0) and redundancy[2] < 0.3


def test_delta_drops_low_information_per_mac_channels_by_about_one_step():
    prototype = cifar_resnet(depth=14, width=8)
    generator = Generator.from_prototype(prototype, TINY_SHAPE)
    inquisitor = Inquisitor(step=0.3)
    torch.manual_seed(0)
    for group_id, group in generator.graph.groups.items():
        taylor = torch.rand(group.size) + 0.5
        taylor[0] = 0.0  # channel 0 of every group never affects the loss
        inquisitor.insights[group_id] = {"taylor": taylor, "entropy": torch.ones(group.size), "seen": torch.ones(group.size)}
        inquisitor.insights[group_id].update(mutual_info=torch.zeros(group.size), redundancy=torch.zeros(group.size))
    macs = macs_per_module(generator.parent, TINY_SHAPE)
    generator.update(inquisitor.propose(generator, macs, macs[""]))
    for logits in generator.channel_logits.values():
        assert logits[0] == logits.min() and logits.max() == KEEP_LOGIT
    ratios = [count_macs(generator.build(generator.sample(seed)), TINY_SHAPE) / macs[""] for seed in range(6)]
    assert abs(sum(ratios) / len(ratios) - 0.7) < 0.12


def test_failure_halves_the_step_and_protects_the_groups_cut_deepest():
    inquisitor = Inquisitor(step=0.2, max_step=0.4, comfortable_margin=0.01)
    parent = Architecture({"a": [0, 1, 2, 3], "b": [0, 1, 2, 3]})
    child = Architecture({"a": [0], "b": [0, 1, 2]})
    inquisitor.learn(CycleOutcome(passed=False, margin=-0.1), parent, child)
    assert inquisitor.step == pytest.approx(0.1)
    assert inquisitor.group_sensitivity["a"] > inquisitor.group_sensitivity["b"] > 1.0
    inquisitor.learn(CycleOutcome(passed=True, margin=0.05), child, child)
    assert inquisitor.step == pytest.approx(0.15)
    inquisitor.learn(CycleOutcome(passed=True, margin=0.001), child, child)
    assert inquisitor.step == pytest.approx(0.15)  # a narrow pass does not speed up compression


def test_invalid_inquisitor_settings_are_named():
    with pytest.raises(ValueError, match="inquisitor.step"):
        Inquisitor(step=1.5)
    with pytest.raises(ValueError, match="inquisitor.sharpness"):
        Inquisitor(sharpness=0)


def test_importance_rules_rank_channels_by_their_own_criterion():
    insights = {
        "taylor": torch.tensor([3.0, 1.5, 2.0]),
        "entropy": torch.tensor([0.1, 1.0, 1.0]),
        "mutual_info": torch.zeros(3),
        "redundancy": torch.tensor([0.0, 0.0, 1.0]),
        "magnitude": torch.tensor([0.2, 0.9, 0.5]),
        "seen": torch.ones(3),
    }
    ranks = {}
    for rule in ("information", "taylor", "magnitude"):
        inquisitor = Inquisitor(importance=rule)
        inquisitor.insights["g"] = insights
        ranks[rule] = inquisitor.channel_importance("g", [0, 1, 2]).argsort(descending=True).tolist()
    assert ranks == {"information": [0, 1, 2], "taylor": [0, 2, 1], "magnitude": [1, 2, 0]}
    with pytest.raises(ValueError, match="inquisitor.importance='l2'.*information"):
        Inquisitor(importance="l2")


def test_probe_measures_the_mean_absolute_weight_of_each_channel(tiny_resnet):
    generator = Generator.from_prototype(tiny_resnet, TINY_SHAPE)
    probe = Inquisitor().attach(tiny_resnet, generator.graph, generator.parent_arch)
    x, y = torch.randn(4, *TINY_SHAPE), torch.randint(0, 4, (4,))
    F.cross_entropy(tiny_resnet(x), y).backward()
    result = probe.detach()
    conv = tiny_resnet.layer1[0].conv1
    assert torch.allclose(result.magnitude["layer1.0.conv1"], conv.weight.detach().abs().mean((1, 2, 3)))
