"""Detection: grid encoding/decoding, the mAP gate metric, data (synthetic and COCO files), synthesis end to end."""
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from PIL import Image

from gensynth_pl import (
    Gate, GenerativeSynthesis, Generator, Inquisitor, SynthesisModule, count_macs, export_onnx, load_network, save_network,
)
from gensynth_pl.data import CocoDetectionDataModule, SyntheticDetectionDataModule, collate_detection
from gensynth_pl.data.detection import detection_transforms, transform_sample
from gensynth_pl.models import DetectNet
from gensynth_pl.family import FamilySettings, build_family
from gensynth_pl.rundir import RunDirectory
from gensynth_pl.tasks import DetectionTask

from conftest import quiet_trainer

ROOT = Path(__file__).resolve().parents[1]
SHAPE = (3, 32, 32)


def target(boxes: list[list[float]], labels: list[int]) -> dict[str, torch.Tensor]:
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), "labels": torch.tensor(labels, dtype=torch.int64)}


TARGETS = [
    target([[4, 6, 30, 40], [40, 40, 60, 50], [33, 2, 36, 5]], [0, 1, 1]),  # the last box is smaller than a cell
    target([], []),
    target([[0, 0, 64, 64], [16, 16, 24, 24]], [1, 0]),  # a small box inside a large one: it claims its cells
]


def encoded_outputs(task: DetectionTask, targets: list[dict], grid: tuple[int, int] = (8, 8)) -> torch.Tensor:
    """Network outputs that say exactly what the encoded targets say (coverage as confident logits)."""
    coverage, distances, _ = task.encode(targets, grid)
    return torch.cat([(coverage * 2 - 1) * 10, distances], dim=1)


def test_decoding_recovers_the_boxes_an_encoded_target_holds():
    task = DetectionTask(num_classes=2, stride=8)
    detections = task.decode(encoded_outputs(task, TARGETS))
    for detected, expected in zip(detections, TARGETS):
        order = torch.argsort(detected["boxes"][:, 0] * 1000 + detected["boxes"][:, 1])
        expected_order = torch.argsort(expected["boxes"][:, 0] * 1000 + expected["boxes"][:, 1])
        torch.testing.assert_close(detected["boxes"][order], expected["boxes"][expected_order])
        assert detected["labels"][order].tolist() == expected["labels"][expected_order].tolist()
        assert torch.all(detected["scores"] > 0.99)


def test_encoding_marks_covering_cells_per_class():
    task = DetectionTask(num_classes=2, stride=8, center_fraction=0.5)
    coverage, distances, positive = task.encode(TARGETS, (8, 8))
    assert coverage.shape == (3, 2, 8, 8) and distances.shape == (3, 4, 8, 8) and positive.shape == (3, 8, 8)
    assert positive[1].sum() == 0 and coverage[1].sum() == 0  # the empty image
    assert coverage[0, 1, 0, 4] == 1  # the 3x3 box's centre (34.5, 3.5) lies in cell (row 0, col 4)
    assert coverage[0, 0, 0, 0] == 0 and coverage[0, 0, 2, 2] == 1  # box 0: centre region only
    # cell (row 2, col 2), centre (20, 20): both boxes of image 2 cover it; the small one claims it, class and box
    assert coverage[2, 0, 2, 2] == 1 and coverage[2, 1, 2, 2] == 0 and coverage[2, 1, 2, 3] == 1
    torch.testing.assert_close(distances[2, :, 2, 2], torch.tensor([0.5, 0.5, 0.5, 0.5]))
    with pytest.raises(ValueError, match="outside 0..1"):
        task.encode([target([[0, 0, 8, 8]], [2])], (8, 8))


def test_map_is_one_for_perfect_predictions_and_lower_for_shifted_ones():
    task = DetectionTask(num_classes=2, stride=8)

    def score(outputs: torch.Tensor) -> dict[str, float]:
        metrics = task.metrics()
        metrics.update(*task.metric_inputs(outputs, TARGETS))
        return {k: float(v) for k, v in metrics.compute().items() if v.numel() == 1}

    perfect = encoded_outputs(task, TARGETS)
    assert score(perfect)["map"] == pytest.approx(1.0) and score(perfect)["map_50"] == pytest.approx(1.0)
    shifted = perfect.clone()
    shifted[:, 2:] += 0.4  # every box grows by 0.4 cells on each side
    shifted_scores = score(shifted)
    assert shifted_scores["map"] < 0.9
    far = perfect.clone()
    far[:, 2:4] -= 3.0  # boxes move 3 cells right and down: no IoU left with the truth
    far[:, 4:] += 3.0
    assert score(far)["map_50"] < 0.2


def test_images_without_boxes_in_loss_metrics_and_collate():
    task = DetectionTask(num_classes=2, stride=8)
    images, targets = collate_detection([(torch.zeros(3, 64, 64), TARGETS[1]), (torch.ones(3, 64, 64), TARGETS[1])])
    assert images.shape == (2, 3, 64, 64) and [len(t["boxes"]) for t in targets] == [0, 0]
    outputs = torch.randn(2, 6, 8, 8, requires_grad=True)
    loss = task.loss(outputs, targets)
    loss.backward()
    assert torch.isfinite(loss) and outputs.grad[:, :2].abs().sum() > 0 and outputs.grad[:, 2:].abs().sum() == 0
    metrics = task.metrics()
    silent = torch.cat([torch.full((1, 2, 8, 8), -10.0), torch.zeros(1, 4, 8, 8)], 1)
    metrics.update(*task.metric_inputs(torch.cat([encoded_outputs(task, TARGETS[:1]), silent]), [TARGETS[0], TARGETS[1]]))
    assert float(metrics.compute()["map"]) == pytest.approx(1.0)  # an empty image with no detection costs nothing
    metrics.reset()
    false_alarm = encoded_outputs(task, [target([[8, 8, 24, 24]], [0])])
    false_alarm[:, :2] += 5.0  # more confident than the true detection, so it ranks first
    metrics.update(*task.metric_inputs(torch.cat([encoded_outputs(task, TARGETS[:1]), false_alarm]), [TARGETS[0], TARGETS[1]]))
    assert float(metrics.compute()["map"]) < 1.0  # a detection on an empty image is a false positive
    with pytest.raises(ValueError, match="one dict per image"):
        task.loss(outputs, targets[:1])


def test_synthetic_detection_data_is_deterministic_and_has_empty_images():
    make = lambda: SyntheticDetectionDataModule(num_classes=3, image_size=32, train_size=40, val_size=8, batch_size=8)
    first, second = make(), make()
    first.setup(), second.setup()
    assert torch.equal(first.train_set.images, second.train_set.images)
    targets = first.train_set.targets
    assert all(torch.equal(a["boxes"], b["boxes"]) for a, b in zip(targets, second.train_set.targets))
    assert any(len(t["boxes"]) == 0 for t in targets) and any(len(t["boxes"]) > 1 for t in targets)
    boxes = torch.cat([t["boxes"] for t in targets])
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2:] <= 32).all() and (boxes[:, 2:] > boxes[:, :2]).all()
    assert set(torch.cat([t["labels"] for t in targets]).tolist()) == {0, 1, 2}
    images, batch_targets = next(iter(first.train_dataloader()))
    assert images.shape == (8, *first.input_shape) and len(batch_targets) == 8 and first.input_shape == (3, 32, 32)


def write_coco(root: Path, annotations: list[dict] | None = None, categories: list[dict] | None = None) -> Path:
    """Two 40x20 images (one without boxes) and a COCO annotations file with category ids 3 and 7."""
    (root / "images").mkdir(parents=True)
    for name in ("a.png", "b.png"):
        Image.new("RGB", (40, 20), (120, 30, 200)).save(root / "images" / name)
    data = {
        "images": [{"id": 1, "file_name": "a.png", "width": 40, "height": 20}, {"id": 2, "file_name": "b.png", "width": 40, "height": 20}],
        "annotations": annotations
        if annotations is not None
        else [{"id": 10, "image_id": 1, "category_id": 7, "bbox": [4, 2, 10, 8]}, {"id": 11, "image_id": 1, "category_id": 3, "bbox": [20, 0, 20, 20]}],
        "categories": categories or [{"id": 7, "name": "cat"}, {"id": 3, "name": "dog"}],
    }
    (root / "annotations.json").write_text(json.dumps(data))
    return root


def coco(root: Path, **kwargs) -> CocoDetectionDataModule:
    settings = dict(num_classes=2, val_size=1, image_size=16, augment=False, batch_size=2, num_workers=0)
    settings.update(kwargs)
    return CocoDetectionDataModule(str(root), **settings)


def test_coco_data_maps_categories_and_resizes_boxes(tmp_path):
    data = coco(write_coco(tmp_path), seed=1)
    data.setup("fit")
    assert data.category_names == ["dog", "cat"] and data.input_shape == (3, 16, 16)
    dataset = data.train_set.dataset
    image, annotated = dataset[0]
    assert image.shape == (3, 16, 16)
    assert annotated["labels"].tolist() == [1, 0]  # ids 7, 3 -> labels 1, 0 (contiguous, in id order)
    torch.testing.assert_close(annotated["boxes"], torch.tensor([[1.6, 1.6, 5.6, 8.0], [8.0, 0.0, 16.0, 16.0]]))
    assert len(dataset[1][1]["boxes"]) == 0  # the image without annotations is a negative
    images, targets = collate_detection([dataset[0], dataset[1]])
    assert images.shape == (2, 3, 16, 16) and len(targets) == 2
    with pytest.raises(ValueError, match=r"data.num_classes=3 .* set data.num_classes=2"):
        coco(tmp_path, num_classes=3).setup("fit")


def test_flip_augmentation_moves_boxes_with_the_image():
    image = torch.zeros(3, 20, 40, dtype=torch.uint8)
    image[:, 2:10, 4:14] = 255  # the object, where its box says
    torch.manual_seed(0)
    seen = set()
    for _ in range(16):
        out, moved = transform_sample(detection_transforms(16, augment=True), image, torch.tensor([[4.0, 2.0, 14.0, 10.0]]), torch.tensor([0]))
        x1, y1, x2, y2 = moved["boxes"][0].round().int().tolist()
        seen.add(x1)
        assert out[0, y1:y2, x1:x2].mean() > out[0].mean() + 1.0  # the box still frames the bright object
    assert seen == {2, 10}  # both the original (x 1.6) and the mirrored (x 16 - 5.6 = 10.4) placement occur


@pytest.mark.parametrize(
    ("annotations", "match"),
    [
        ([{"id": 12, "image_id": 1, "category_id": 7, "bbox": [30, 2, 20, 8]}], r"annotations\[0\] \(id=12\).*outside its 40x20 image 'a.png'"),
        ([{"id": 13, "image_id": 1, "category_id": 7}], r"annotations\[0\] \(id=13\) lacks the key\(s\) \['bbox'\]"),
        ([{"id": 14, "image_id": 1, "category_id": 7, "bbox": [1, 2, 3]}], r"annotations\[0\] \(id=14\): bbox must be"),
        ([{"id": 15, "image_id": 9, "category_id": 7, "bbox": [1, 2, 3, 4]}], r"id=15\): image_id 9 is not in 'images'"),
        ([{"id": 16, "image_id": 1, "category_id": 5, "bbox": [1, 2, 3, 4]}], r"id=16\): category_id 5 is not in"),
    ],
)
def test_bad_annotation_names_the_entry(tmp_path, annotations, match):
    with pytest.raises(ValueError, match=match):
        coco(write_coco(tmp_path, annotations)).setup("fit")


def test_missing_files_and_malformed_json_name_the_culprit(tmp_path):
    root = write_coco(tmp_path / "missing_image")
    (root / "images" / "b.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"images\[1\] \(id=2\): image file '.*b.png' does not exist"):
        coco(root).setup("fit")
    root = write_coco(tmp_path / "bad_json")
    (root / "annotations.json").write_text('{"images": [')
    with pytest.raises(ValueError, match=r"annotations.json' is not valid JSON"):
        coco(root).setup("fit")
    (root / "annotations.json").write_text('{"images": [], "annotations": []}')
    with pytest.raises(ValueError, match=r"annotations.json' lacks the key\(s\) \['categories'\]"):
        coco(root).setup("fit")
    with pytest.raises(FileNotFoundError, match=r"data.root: .*'/no/such/coco' does not exist"):
        coco(Path("/no/such/coco")).setup("fit")
    with pytest.raises(FileNotFoundError, match=r"annotations file '.*other.json' does not exist"):
        coco(root, annotations="other.json").setup("fit")
    root = write_coco(tmp_path / "resized")
    Image.new("RGB", (20, 20)).save(root / "images" / "a.png")  # no longer the 40x20 its boxes refer to
    data = coco(root)
    data.setup("fit")
    with pytest.raises(ValueError, match=r"image '.*a.png' is 20x20 but its annotations say 40x20"):
        data.train_set.dataset[0]


def test_generator_materialises_a_smaller_detector_that_reloads_identically(tmp_path):
    torch.manual_seed(0)
    prototype = DetectNet(num_classes=2, width=8, stride=8, blocks_per_stage=2)
    generator = Generator.from_prototype(prototype, SHAPE, prototype_config={
        "_target_": "gensynth_pl.models.DetectNet", "num_classes": 2, "width": 8, "stride": 8, "blocks_per_stage": 2})
    assert generator.graph.output_layers == ["coverage", "bbox"] and generator.graph.removable_blocks == ["stages.0.1", "stages.1.1"]
    for group_id, logits in generator.channel_logits.items():
        logits[: len(logits) // 2] = -20.0  # the generator drops half of every group
    generator.block_logits["stages.1.1"] = -20.0
    arch = generator.sample(seed=0)
    assert arch.removed_blocks == ["stages.1.1"]
    child = generator.build(arch)
    assert count_macs(child, SHAPE) < 0.5 * count_macs(prototype, SHAPE)
    assert child.coverage.out_channels == 2 and child.bbox.out_channels == 4
    x = torch.randn(2, *SHAPE)
    assert child.eval()(x).shape == prototype.eval()(x).shape == (2, 6, 4, 4)
    save_network(tmp_path, child, arch, generator.graph, generator.prototype_config)
    torch.testing.assert_close(load_network(tmp_path)(x), child(x), rtol=0, atol=0)
    onnx = ort.InferenceSession(str(export_onnx(child, SHAPE, tmp_path / "net.onnx"))).run(None, {"input": x.numpy()})[0]
    np.testing.assert_allclose(onnx, child(x).detach().numpy(), atol=1e-4)  # both heads, batch 2 (dynamic)


def test_tiny_synthesis_run_shrinks_the_detector_and_logs_map(tmp_path):
    torch.manual_seed(0)
    data = SyntheticDetectionDataModule(num_classes=2, image_size=32, train_size=96, val_size=32, noise=0.1, batch_size=16)
    task = DetectionTask(num_classes=2, stride=8)
    module = SynthesisModule(DetectNet(num_classes=2, width=8, stride=8), task)
    callback = GenerativeSynthesis(
        Gate("val/map_50", 1.0, relative=True), cycles=2, epochs_per_cycle=1, prototype_epochs=1, probe_batches=2,
        inquisitor=Inquisitor(step=0.4), output_dir=tmp_path, task_name=task.name, export_onnx=False, channel_multiple=1, polish_epochs=0,
    )
    trainer = quiet_trainer(callback.total_epochs, [callback], num_sanity_val_steps=0)
    trainer.fit(module, datamodule=data)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["task"] == "detection" and summary["gate"]["metric"] == "val/map_50"
    assert [c["cycle"] for c in summary["cycles"]] == [1, 2] and all(c["accepted"] for c in summary["cycles"])
    assert summary["best"]["macs"] < summary["prototype"]["macs"]
    assert all(0.0 <= c["metric"] <= 1.0 for c in [summary["prototype"], *summary["cycles"]])
    assert {"val/map", "val/map_50", "val/mar_100"} <= set(trainer.callback_metrics)
    assert "val/classes" not in trainer.callback_metrics  # non-scalar / integer outputs of the metric are not logged
    assert module.net.coverage.out_channels == 2 and module.net.bbox.out_channels == 4
    prototype = DetectNet(num_classes=2, width=8, stride=8)  # no recipe in a Python-API run: the prototype is passed
    family = build_family(RunDirectory(tmp_path).generator, data, task, FamilySettings(targets=(0.5,), finetune_epochs=0),
                          prototype=prototype)
    assert family["rows"][0]["macs"] < summary["prototype"]["macs"] and 0.0 <= family["rows"][0]["metric"] <= 1.0


def test_detection_configs_compose_and_instantiate():
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["task=detection", "data.train_size=4", "data.val_size=2"])
        assert cfg.gate.monitor == "val/map_50" and cfg.task.stride == cfg.model.stride
        task, model, data = instantiate(cfg.task), instantiate(cfg.model), instantiate(cfg.data)
        assert isinstance(task, DetectionTask) and isinstance(data, SyntheticDetectionDataModule)
        assert model(torch.zeros(1, *data.input_shape)).shape[1] == data.num_classes + 4
        cfg = compose("train", overrides=["task=detection", "data=coco", "data.root=x", "data.num_classes=3", "gate.monitor=val/map"])
        assert cfg.data._target_.endswith("CocoDetectionDataModule") and cfg.task.num_classes == cfg.model.num_classes == 3
        for experiment in ("pennfudan_cpu", "pennfudan_gpu"):
            cfg = compose("train", overrides=[f"experiment={experiment}", "data.root=/data/pennfudan"])
            assert cfg.data._target_.endswith("CocoDetectionDataModule") and cfg.task._target_.endswith("DetectionTask")
            assert cfg.task.stride == cfg.model.stride and cfg.data.image_size % cfg.model.stride == 0
