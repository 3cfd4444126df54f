"""Semantic segmentation (issue #3): prototypes, task, data, configs and a tiny synthesis run."""
import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torch_pruning as tp
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from PIL import Image
from torch import nn

from gensynth_pl import Architecture, NetworkGraph, count_macs, load_network, save_network
from gensynth_pl.data import CamVidDataModule, SyntheticSegmentationDataModule
from gensynth_pl.models import smp_segmenter
from gensynth_pl.pipeline import synthesize
from gensynth_pl.tasks import SegmentationTask

CONF = Path(__file__).resolve().parents[1] / "conf"
SHAPE = (3, 32, 32)
SMP = "gensynth_pl.models.smp_segmenter"
PROTOTYPES = {  # small widths, resnet18 encoders
    "unet": dict(_target_=SMP, arch="Unet", encoder_depth=3, num_classes=5, decoder_channels=[16, 8, 8]),
    "fpn": dict(_target_=SMP, arch="FPN", encoder_depth=5, num_classes=5, decoder_pyramid_channels=32, decoder_segmentation_channels=32),
    "deeplabv3plus": dict(_target_=SMP, arch="DeepLabV3Plus", encoder_depth=5, num_classes=5, decoder_channels=16),
    "refinenet": dict(_target_="gensynth_pl.models.light_refinenet", encoder_depth=4, num_classes=5, channels=16, crp_stages=2),
}


def thinned(graph: NetworkGraph, seed: int) -> Architecture:
    """Keep a random (not prefix) half of every channel group: exercises the index bookkeeping of concats."""
    rng = torch.Generator().manual_seed(seed)
    return Architecture(
        {g: sorted(torch.randperm(grp.size, generator=rng)[: max(1, grp.size // 2)].tolist()) for g, grp in graph.groups.items()}
    )


def with_channels_zeroed(network: nn.Module, graph: NetworkGraph, arch: Architecture) -> nn.Module:
    """The prototype with every dropped channel silenced (weight and bias 0) at each layer that produces it,
    as Torch-Pruning's dependency graph maps the drop through skips and concats: what the physically thinned
    network must compute, if the consumers' input channels were sliced consistently with the producers'."""
    zeroed = copy.deepcopy(network)
    dependencies = tp.DependencyGraph().build_dependency(zeroed, example_inputs=torch.zeros(1, *SHAPE))
    modules = dict(zeroed.named_modules())
    with torch.no_grad():
        for group in graph.groups.values():
            dropped = sorted(set(range(group.size)) - set(arch.channels[group.id]))
            root = modules[group.id]
            prune_out = dependencies.get_pruner_of_module(root).prune_out_channels
            for dep, idxs in dependencies.get_pruning_group(root, prune_out, dropped):
                module = dep.target.module
                if dependencies.is_out_channel_pruning_fn(dep.handler) and isinstance(module, (nn.Conv2d, nn.BatchNorm2d)):
                    for tensor in (module.weight, module.bias):
                        if tensor is not None:
                            tensor[idxs] = 0
    return zeroed


@pytest.mark.parametrize("name", PROTOTYPES)
def test_prototypes_thin_through_skips_and_concats_and_keep_mask_size(name):
    torch.manual_seed(0)
    prototype = instantiate(PROTOTYPES[name]).eval()
    graph = NetworkGraph.trace(prototype, SHAPE)
    head = graph.output_layers[0]
    assert head.endswith(("segmentation_head.0", "network.head"))
    assert all(head not in group.producers for group in graph.groups.values())  # the classes are never pruned
    arch = thinned(graph, seed=1)
    small = graph.materialize(prototype, graph.full_architecture(), arch).eval()
    assert count_macs(small, SHAPE) < 0.5 * count_macs(prototype, SHAPE)
    assert small.get_submodule(head).out_channels == 5
    reference = with_channels_zeroed(prototype, graph, arch)
    x = torch.randn(2, 3, 36, 44)  # not a multiple of the encoder stride: padded, then cropped back
    with torch.no_grad():
        out = small(x)
        assert out.shape == (2, 5, 36, 44)
        torch.testing.assert_close(out, reference(x), atol=1e-4, rtol=1e-4)


def test_encoder_blocks_are_removable_and_unused_stages_cost_nothing():
    unet = smp_segmenter("Unet", "resnet18", encoder_depth=3, num_classes=5, decoder_channels=[16, 8, 8])
    assert unet.removable_blocks() == ["network.encoder.layer1.0", "network.encoder.layer1.1", "network.encoder.layer2.1"]
    assert isinstance(unet.network.encoder.layer3, nn.Identity)  # smp keeps stages a depth-3 encoder never runs
    graph = NetworkGraph.trace(unet, SHAPE)
    full = graph.full_architecture()
    without_block = graph.materialize(unet, full, Architecture(full.channels, ["network.encoder.layer1.1"]))
    assert count_macs(without_block, SHAPE) < count_macs(unet, SHAPE)
    assert without_block(torch.randn(1, *SHAPE)).shape == (1, 5, 32, 32)


def test_architectures_that_do_not_return_input_sized_masks_fail_at_construction():
    with pytest.raises(ValueError, match="FPN maps a .* expected .* encoder_depth=5"):
        smp_segmenter("FPN", "resnet18", encoder_depth=3, num_classes=5)
    with pytest.raises(ValueError, match="cannot build smp Unett"):
        smp_segmenter("Unett", num_classes=5)


@pytest.mark.parametrize("name", ["unet", "refinenet"])
def test_saved_networks_reload_with_identical_outputs(name, tmp_path):
    torch.manual_seed(0)
    prototype = instantiate(PROTOTYPES[name])
    graph = NetworkGraph.trace(prototype, SHAPE)
    arch = thinned(graph, seed=2)
    network = graph.materialize(prototype, graph.full_architecture(), arch).eval()
    save_network(tmp_path, network, arch, graph, PROTOTYPES[name])
    x = torch.randn(2, *SHAPE)
    assert torch.equal(load_network(tmp_path)(x), network(x))


def test_void_pixels_count_in_neither_the_loss_nor_the_metrics():
    task = SegmentationTask(num_classes=3, ignore_index=3)
    target = torch.tensor([[[0, 1, 3], [2, 3, 1]]])  # two void pixels
    predicted = torch.tensor([[[0, 2, 0], [2, 1, 1]]])
    logits = 4.0 * F.one_hot(predicted, 3).permute(0, 3, 1, 2).float()
    metrics = task.metrics()
    metrics.update(*task.metric_inputs(logits, target))
    values = metrics.compute()
    assert values["acc"].item() == pytest.approx(3 / 4)  # 3 of the 4 labelled pixels right
    assert values["miou"].item() == pytest.approx((1 + 1 / 2 + 1 / 2) / 3)  # IoU 1, 1/2, 1/2
    labelled = target != 3
    expected = F.cross_entropy(logits.permute(0, 2, 3, 1)[labelled], target[labelled])
    assert task.loss(logits, target).item() == pytest.approx(expected.item())
    other_void_guess = logits.clone()
    other_void_guess[:, :, ~labelled[0]] = torch.tensor([-9.0, 9.0, 0.0])[:, None]
    assert task.loss(other_void_guess, target).item() == pytest.approx(expected.item())
    metrics.reset()
    metrics.update(other_void_guess, target)
    assert metrics.compute()["miou"].item() == pytest.approx(values["miou"].item())
    with pytest.raises(ValueError, match="ignore_index=1 is one of the 3 classes"):
        SegmentationTask(3, ignore_index=1)


def test_synthetic_segmentation_is_deterministic_with_void_boundaries():
    def generate() -> SyntheticSegmentationDataModule:
        data = SyntheticSegmentationDataModule(num_classes=4, image_size=24, train_size=16, val_size=8, seed=3)
        data.setup("fit")
        return data

    first, second = generate(), generate()
    images, masks = first.train_set.tensors
    assert torch.equal(images, second.train_set.tensors[0]) and torch.equal(masks, second.train_set.tensors[1])
    assert images.shape == (16, 3, 24, 24) and first.input_shape == (3, 24, 24)
    assert set(masks.unique().tolist()) == {0, 1, 2, 3, 255}
    assert 0.01 < (masks == 255).float().mean() < 0.3
    assert not torch.equal(first.val_set.tensors[1], masks[:8])  # the splits differ


def write_camvid(root: Path, splits: tuple[str, ...] = ("train", "val"), frames: int = 3, size: tuple = (48, 36)) -> None:
    """A SegNet-layout CamVid: left half red = class 1, right half blue = class 2, one void column."""
    for split in splits:
        (root / split).mkdir(parents=True)
        (root / f"{split}annot").mkdir()
        for i in range(frames):
            image = np.zeros((size[1], size[0], 3), np.uint8)
            image[:, : size[0] // 2, 0] = 255
            image[:, size[0] // 2 :, 2] = 255
            labels = np.full((size[1], size[0]), 2, np.uint8)
            labels[:, : size[0] // 2] = 1
            labels[:, -1] = 11
            Image.fromarray(image).save(root / split / f"frame{i}.jpg", quality=95)
            Image.fromarray(labels).save(root / f"{split}annot" / f"frame{i}.png")


def test_camvid_augments_image_and_mask_together(tmp_path):
    write_camvid(tmp_path, splits=("train", "val", "test"))
    data = CamVidDataModule(str(tmp_path), image_size=(24, 32), crop_size=(16, 16), hflip=True, batch_size=3, num_workers=0)
    data.setup("fit")
    assert data.input_shape == (3, 24, 32) and data.num_classes == 11 and len(data.test_dataloader().dataset) == 3
    torch.manual_seed(0)
    for _ in range(4):
        images, masks = next(iter(data.train_dataloader()))
        assert images.shape == (3, 3, 16, 16) and masks.shape == (3, 16, 16) and masks.dtype == torch.long
        assert set(masks.unique().tolist()) <= {1, 2, 11}  # nearest-neighbour: no blended ids
        red = images[:, 0] > images[:, 2]
        assert torch.equal(red[masks == 1], torch.ones_like(red[masks == 1]))
        assert not red[masks == 2].any()
    images, masks = next(iter(data.val_dataloader()))
    assert images.shape == (3, 3, 24, 32) and (masks[:, :, :16] == 1).all()


def test_camvid_errors_name_the_file_and_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"data.root: CamVid root .*nowhere.*; set data.root to"):
        CamVidDataModule(str(tmp_path / "nowhere")).setup("fit")
    write_camvid(tmp_path)
    small = tmp_path / "valannot" / "frame1.png"
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(small)
    data = CamVidDataModule(str(tmp_path), image_size=(24, 32), num_workers=0)
    data.setup("fit")
    with pytest.raises(FileNotFoundError, match="no test/ and testannot/"):
        data.test_dataloader()
    with pytest.raises(ValueError, match=r"frame1.png' is 12x10 but its image .*frame1.jpg' is 48x36"):
        data.val_set[1]
    Image.fromarray(np.full((36, 48), 12, np.uint8)).save(small)
    with pytest.raises(ValueError, match=r"frame1.png' holds class ids \[12\]"):
        data.val_set[1]
    (tmp_path / "trainannot" / "frame2.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"annotation .*trainannot/frame2.png' for image .*train/frame2.jpg' is missing"):
        CamVidDataModule(str(tmp_path)).setup("fit")


def test_segmentation_configs_compose():
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=["task=segmentation"])
        assert cfg.gate.monitor == "val/miou" and cfg.model.encoder_weights is None
        assert cfg.data._target_.endswith("SyntheticSegmentationDataModule")
        assert cfg.task.ignore_index == cfg.data.ignore_index == 255
        for experiment, size in (("camvid_cpu", [120, 160]), ("camvid_gpu", [360, 480])):
            cfg = compose("train", overrides=[f"experiment={experiment}", "data.root=/x"])
            assert cfg.task._target_.endswith("SegmentationTask") and list(cfg.data.image_size) == size
            assert cfg.task.ignore_index == 11 and cfg.model.encoder_weights is None
            assert instantiate(cfg.data).input_shape == (3, *size)
        cfg = compose("train", overrides=["task=segmentation", "model=refinenet", "gate.monitor=val/acc"])
        assert instantiate(cfg.model).output_layers() == ["network.head"]


def test_tiny_synthesis_run_on_generated_segmentation_data(tmp_path):
    overrides = [
        "task=segmentation", "logger=none", f"output_dir={tmp_path}", "trainer.enable_progress_bar=false",
        "data.train_size=32", "data.val_size=16", "data.image_size=32", "data.batch_size=16",
        "model.decoder_channels=[16,8,8]", "synthesis.prototype_epochs=1", "synthesis.cycles=2",
        "synthesis.epochs_per_cycle=1", "synthesis.probe_batches=2", "synthesis.inquisitor.step=0.4", "gate.threshold=1.0",
        "synthesis.polish_epochs=1", "synthesis.family.targets=[]",
    ]
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    record, callback = synthesize(cfg)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["task"] == "segmentation" and summary["gate"]["metric"] == "val/miou"
    assert [c["cycle"] for c in summary["cycles"]] == [1, 2] and all(c["accepted"] for c in summary["cycles"])
    assert summary["best"]["macs"] < summary["prototype"]["macs"] and 0.0 <= summary["best"]["metric"] <= 1.0
    best = load_network(tmp_path / "best")
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(best(x), callback.loop.best.network.eval()(x)) and best(x).shape == (2, 4, 32, 32)
    assert (tmp_path / "best" / "network.onnx").is_file()
