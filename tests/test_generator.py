import pytest
import torch

from gensynth_pl.generator import DROP_LOGIT, Generator
from gensynth_pl.graph import Architecture, NetworkGraph
from gensynth_pl.inquisitor import Inquisitor
from gensynth_pl.metrics import count_macs, macs_per_module
from gensynth_pl.models import cifar_resnet
from gensynth_pl.rundir import RunDirectory
from gensynth_pl.tensorfile import is_safetensors

from conftest import TINY_SHAPE


def learned_generator(prototype, step: float = 0.4, channel_multiple: int = 1) -> Generator:
    """A generator after one Δθ_G from an inquisitor with (seeded) random insights."""
    generator = Generator.from_prototype(prototype, TINY_SHAPE, channel_multiple=channel_multiple)
    inquisitor = Inquisitor(step=step)
    torch.manual_seed(1)
    for group_id, group in generator.graph.groups.items():
        inquisitor.insights[group_id] = {k: torch.rand(group.size) for k in ("taylor", "entropy", "mutual_info", "redundancy")}
        inquisitor.insights[group_id]["seen"] = torch.ones(group.size)
    macs = macs_per_module(generator.parent, TINY_SHAPE)
    generator.update(inquisitor.propose(generator, macs, macs[""]))
    return generator


def test_graph_finds_coupled_groups_and_removable_blocks(tiny_resnet):
    graph = NetworkGraph.trace(tiny_resnet, TINY_SHAPE)
    assert graph.output_layers == ["fc"]
    assert graph.removable_blocks == ["layer1.0"]  # only identity-shortcut blocks can be dropped whole
    stem = graph.groups["conv1"]  # the stage-1 residual stream couples the stem and the block's conv2
    assert {"conv1", "layer1.0.conv2"} <= set(stem.producers) and "layer1.0.conv1" in stem.consumers
    deeper = NetworkGraph.trace(cifar_resnet(depth=14, width=8), TINY_SHAPE)
    assert deeper.removable_blocks == ["layer1.0", "layer1.1", "layer2.1", "layer3.1"]
    assert deeper.groups["layer2.1.conv1"].block == "layer2.1"


def test_initial_generator_reproduces_the_prototype(tiny_resnet):
    generator = Generator.from_prototype(tiny_resnet, TINY_SHAPE)
    arch = generator.sample(seed=123)
    assert arch == generator.graph.full_architecture()
    x = torch.randn(2, *TINY_SHAPE)
    tiny_resnet.eval()
    assert torch.equal(generator.build(arch).eval()(x), tiny_resnet(x))


def test_build_of_sample_is_deterministic_per_seed():
    generator = learned_generator(cifar_resnet(depth=14, width=8))
    a, b = generator.sample(7), generator.sample(7)
    assert a == b
    first, second = generator.build(a), generator.build(b)
    assert all(torch.equal(x, y) for x, y in zip(first.state_dict().values(), second.state_dict().values()))
    archs = {str(generator.sample(seed).to_dict()) for seed in range(6)}
    assert len(archs) > 1  # different seeds, different networks
    assert count_macs(first, TINY_SHAPE) < count_macs(generator.prototype, TINY_SHAPE)


def test_lineage_inheritance_equals_direct_materialisation():
    generator = learned_generator(cifar_resnet(depth=14, width=8), step=0.3)
    parent_arch = generator.sample(0)
    generator.accept(parent_arch, generator.build(parent_arch))
    child_arch = Architecture(
        {g: kept[: max(1, len(kept) // 2)] for g, kept in parent_arch.channels.items()},
        sorted({*parent_arch.removed_blocks, "layer3.1"}),
    )
    via_parent = generator.build(child_arch)
    direct = generator.graph.materialize(generator.prototype, generator.graph.full_architecture(), child_arch)
    assert via_parent.state_dict().keys() == direct.state_dict().keys()
    assert all(torch.equal(via_parent.state_dict()[k], direct.state_dict()[k]) for k in direct.state_dict())


def test_generator_file_round_trip_and_wrong_prototype(tmp_path):
    generator = learned_generator(cifar_resnet(depth=14, width=8))
    generator.accept(generator.sample(3), generator.build(generator.sample(3)))
    path = tmp_path / RunDirectory.GENERATOR
    generator.save(path, extra={"note": "x"})
    with pytest.raises(ValueError, match="no prototype recipe; pass the prototype"):
        Generator.load(path)
    loaded, extra = Generator.load(path, cifar_resnet(depth=14, width=8))
    assert extra == {"note": "x"} and loaded.sample(11) == generator.sample(11)
    assert loaded.parent_arch == generator.parent_arch
    x = torch.randn(2, *TINY_SHAPE)
    assert torch.equal(loaded.parent.eval()(x), generator.parent.eval()(x))  # weights, not the prototype's recipe

    generator.prototype_config = {"_target_": "gensynth_pl.models.cifar_resnet", "depth": 14, "width": 8}
    generator.save(tmp_path / "with_recipe.safetensors")
    assert is_safetensors(tmp_path / "with_recipe.safetensors")  # tensors, and plain data as JSON: nothing to unpickle
    from_recipe, _ = Generator.load(tmp_path / "with_recipe.safetensors")
    assert torch.equal(from_recipe.parent.eval()(x), generator.parent.eval()(x))
    (tmp_path / "pickled.pt").write_bytes(b"not a generator")
    with pytest.raises(ValueError, match="not a gensynth-pl generator file"):
        Generator.load(tmp_path / "pickled.pt")

    other = Generator.from_prototype(cifar_resnet(depth=14, width=4), TINY_SHAPE)
    with pytest.raises(ValueError, match="another prototype|different prototype|outside"):
        other.load_state_dict(generator.state_dict())
    with pytest.raises(ValueError, match="do not fit its prototype.*different prototype"):
        Generator.load(path, cifar_resnet(depth=14, width=4))
    with pytest.raises(FileNotFoundError, match="generator.safetensors"):
        Generator.load(tmp_path / "missing" / RunDirectory.GENERATOR)


def test_channel_multiple_rounds_every_sampled_width_and_keeps_the_most_likely_channels():
    """Rounding to multiples of 8 (at most a quarter of a group's width) keeps widths within one multiple of the
    draw, and is unbiased on average."""
    exact = learned_generator(cifar_resnet(depth=14, width=16), step=0.5)
    rounded = learned_generator(cifar_resnet(depth=14, width=16), step=0.5, channel_multiple=8)
    multiples = {rounded.graph.groups[g].size: rounded.multiple(g) for g in rounded.graph.groups}
    assert multiples == {16: 4, 32: 8, 64: 8}  # a 16-channel group rounds to 4: it can be 4, 8, 12 or 16 wide
    for seed in range(4):
        free, arch = exact.sample(seed), rounded.sample(seed)
        assert any(len(kept) % 8 for kept in free.channels.values())  # without rounding widths fall anywhere
        for group_id, kept in arch.channels.items():
            multiple = rounded.multiple(group_id)
            assert len(kept) % multiple == 0 and abs(len(kept) - len(free.channels[group_id])) < multiple
            drawn, logits = set(free.channels[group_id]), rounded.channel_logits[group_id]
            if len(kept) <= len(drawn):  # rounded down: a subset of the drawn channels, the most likely ones
                assert set(kept) <= drawn and min(logits[kept]) >= max(logits[sorted(drawn - set(kept))], default=-1e9)
            else:  # rounded up: every drawn channel plus the most likely of the others
                assert drawn <= set(kept)
        network = rounded.build(arch)
        assert count_macs(network, TINY_SHAPE) < count_macs(rounded.prototype, TINY_SHAPE)
    drawn = [sum(map(len, exact.sample(seed).channels.values())) for seed in range(40)]
    kept = [sum(map(len, rounded.sample(seed).channels.values())) for seed in range(40)]
    assert abs(sum(kept) - sum(drawn)) / sum(drawn) < 0.05  # nearest-rounding would snap small cuts back up
    with pytest.raises(ValueError, match="channel_multiple"):
        Generator.from_prototype(cifar_resnet(depth=8, width=8), TINY_SHAPE, channel_multiple=0)


def test_rounding_up_never_revives_channels_the_parent_dropped():
    generator = learned_generator(cifar_resnet(depth=14, width=16), step=0.5, channel_multiple=8)
    parent = generator.sample(0)
    generator.accept(parent, generator.build(parent))
    assert any(len(kept) < generator.graph.groups[g].size for g, kept in parent.channels.items())
    for logits in generator.channel_logits.values():  # every logit tied: the floor is filled by choice alone
        logits.fill_(DROP_LOGIT)
    for seed in range(10):
        arch = generator.sample(seed)
        assert all(set(arch.channels[g]) <= set(parent.channels[g]) for g in arch.channels)
        assert all(len(kept) % generator.multiple(g) == 0 for g, kept in arch.channels.items())
