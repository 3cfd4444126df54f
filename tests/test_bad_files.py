"""Bad files end in one clear error that names the file and the fix, and writes never lose what was written."""
import json
import math
import os
from pathlib import Path

import pytest
import torch

from gensynth_pl import rundir
from gensynth_pl.data.coco import load_coco
from gensynth_pl.export import export_onnx, load_network, save_network
from gensynth_pl.generator import FILE_FORMAT, Generator
from gensynth_pl.models import cifar_resnet
from gensynth_pl.pipeline import load_weights
from gensynth_pl.rundir import ONNX_FILE, SPEC_FILE, WEIGHTS_FILE, RunDirectory, write_text_atomic
from gensynth_pl.tensorfile import load_tensor_file, save_state_dict, save_tensor_file
from gensynth_pl.torch_utils import cpu_state_dict

from conftest import TINY_SHAPE
from test_detection import write_coco
from test_trust import RECIPE, save_best, save_generator, tiny_generator


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ('{"format": "gensynth-network/1", "prototype": {', r"is not valid JSON .*copy the folder again"),
        ("[1, 2]", r"holds a JSON list, not an object"),
        ('{"format": "gensynth-network/1"}', r"lacks the key\(s\) \['architecture', 'input_shape', .*save the network again"),
        (None, r"has format 'gensynth-network/0', not 'gensynth-network/1'.*save the network again"),
        ("shape", r"\['input_shape'\] have the wrong type"),
    ],
)
def test_a_bad_architecture_json_names_the_file_and_the_fix(tmp_path, content, match):
    save_best(tmp_path / "best")
    spec_path = tmp_path / "best" / SPEC_FILE
    spec = json.loads(spec_path.read_text())
    if content is None:
        content = json.dumps({**spec, "format": "gensynth-network/0"})
    elif content == "shape":
        content = json.dumps({**spec, "input_shape": [3, "16", 16]})
    spec_path.write_text(content)
    with pytest.raises(ValueError, match=match) as error:
        load_network(tmp_path / "best")
    assert str(spec_path) in str(error.value)


def test_missing_truncated_or_mismatched_weights_name_the_file_and_the_fix(tmp_path):
    save_best(tmp_path / "best")
    weights = tmp_path / "best" / WEIGHTS_FILE
    truncate(weights)
    with pytest.raises(ValueError, match=r"weights.safetensors is damaged or truncated .*copy it again"):
        load_network(tmp_path / "best")
    weights.unlink()
    with pytest.raises(FileNotFoundError, match=r"weights.safetensors does not exist; the folder is incomplete"):
        load_network(tmp_path / "best")
    save_state_dict(weights, cpu_state_dict(cifar_resnet(depth=8, width=16, num_classes=4)))  # another network's
    with pytest.raises(ValueError, match=r"weights.safetensors does not fit the architecture in .*architecture.json "
                                         r"\(RuntimeError: .*size mismatch.*save it again"):
        load_network(tmp_path / "best")


def test_a_bad_generator_file_names_the_file_and_the_fix(tmp_path):
    path = tmp_path / RunDirectory.GENERATOR
    save_generator(path)
    fix = "copy it again, or save the generator again"
    data = load_tensor_file(path, FILE_FORMAT, fix)
    del data["state"]["lineage"], data["input_shape"]
    save_tensor_file(tmp_path / "incomplete.safetensors", data, FILE_FORMAT)
    with pytest.raises(ValueError, match=rf"incomplete.safetensors lacks \['input_shape', 'state.lineage'\]: .*{fix}"):
        Generator.load(tmp_path / "incomplete.safetensors")
    save_best(tmp_path / "best")
    with pytest.raises(ValueError, match=rf"weights.safetensors has format 'pt', not '{FILE_FORMAT}'.*{fix}"):
        Generator.load(tmp_path / "best" / WEIGHTS_FILE)
    truncate(path)
    with pytest.raises(ValueError, match=rf"generator.safetensors is damaged or truncated .*{fix}"):
        Generator.load(path)


def test_a_generator_whose_networks_do_not_fit_its_recipe_is_refused(tmp_path):
    path = tmp_path / RunDirectory.GENERATOR
    save_generator(path, {**RECIPE, "width": 16})  # the recipe says width 16, the networks are width 8
    with pytest.raises(ValueError, match="generator.safetensors: its networks do not fit its prototype"):
        Generator.load(path)


def test_prototype_weights_missing_or_not_fitting_give_the_fix(tmp_path):
    network = cifar_resnet(depth=8, width=8, num_classes=4)
    with pytest.raises(FileNotFoundError, match=r"nothing.pt does not exist; prototype_weights: point"):
        load_weights(network, str(tmp_path / "nothing.pt"))
    torch.save(cpu_state_dict(cifar_resnet(depth=8, width=16, num_classes=4)), tmp_path / "wider.pt")
    with pytest.raises(ValueError, match=r"prototype_weights: '.*wider.pt' does not fit the CifarResNet .*size mismatch"):
        load_weights(network, str(tmp_path / "wider.pt"))
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(ValueError, match=r"list.pt holds a list, not a state dict"):
        load_weights(network, str(tmp_path / "list.pt"))
    other = cifar_resnet(depth=8, width=8, num_classes=4)
    save_state_dict(tmp_path / "weights.safetensors", cpu_state_dict(other))  # e.g. a run's best/ of φ itself
    load_weights(network, str(tmp_path / "weights.safetensors"))
    x = torch.randn(2, *TINY_SHAPE)
    assert torch.equal(network.eval()(x), other.eval()(x))


@pytest.mark.parametrize(
    ("bbox", "file_name", "match"),
    [
        ([4, 2, math.nan, 8], "a.png", r"annotations\[0\] \(id=10\): bbox must be .*finite numbers, got \[4, 2, nan, 8\]"),
        ([4, math.inf, 10, 8], "a.png", r"annotations\[0\] \(id=10\): bbox must be .*finite numbers"),
        ([4, 2, 10, 8], "/etc/passwd", r"images\[0\] \(id=1\): file_name '/etc/passwd' must be a path inside the images"),
        ([4, 2, 10, 8], "../annotations.json", r"images\[0\] \(id=1\): file_name '../annotations.json' must be a path inside"),
        ([4, 2, 10, 8], "sub\\..\\..\\a.png", r"file_name .* must be a path inside the images folder"),
        ([4, 2, 10, 8], 7, r"images\[0\] \(id=1\): file_name 7 must be a path inside"),
    ],
)
def test_coco_entries_with_non_finite_boxes_or_paths_leaving_the_images_folder(tmp_path, bbox, file_name, match):
    root = write_coco(tmp_path, [{"id": 10, "image_id": 1, "category_id": 7, "bbox": bbox}])
    data = json.loads((root / "annotations.json").read_text())
    data["images"][0]["file_name"] = file_name
    (root / "annotations.json").write_text(json.dumps(data))  # json writes NaN and Infinity as Python reads them
    with pytest.raises(ValueError, match=match):
        load_coco(root / "annotations.json", root / "images")


def test_best_is_replaced_as_one_folder_and_a_failed_save_keeps_the_old_one(tmp_path, monkeypatch):
    best = tmp_path / "best"
    first = save_best(best)
    export_onnx(first, TINY_SHAPE, best / ONNX_FILE)
    generator = tiny_generator()
    for logits in generator.channel_logits.values():
        logits[: len(logits) // 2] = -20.0  # the next network keeps half of every group
    arch = generator.sample(1)
    smaller = generator.build(arch)
    save_network(best, first, generator.parent_arch, generator.graph, RECIPE, report={"test": {"acc": 0.5}})
    assert (best / ONNX_FILE).is_file()  # the same network with a new report keeps its export
    save_network(best, smaller, arch, generator.graph, RECIPE)
    assert not (best / ONNX_FILE).exists()  # the older network's export does not sit beside the new spec
    x = torch.randn(2, *TINY_SHAPE)
    assert torch.equal(load_network(best)(x), smaller.eval()(x))

    def killed_after_the_weights(path, weights):
        save_state_dict(path, weights)
        raise KeyboardInterrupt

    monkeypatch.setattr("gensynth_pl.export.save_state_dict", killed_after_the_weights)
    with pytest.raises(KeyboardInterrupt):
        save_network(best, first, generator.parent_arch, generator.graph, RECIPE)
    monkeypatch.undo()
    assert torch.equal(load_network(best)(x), smaller.eval()(x))  # the old folder, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]

    (tmp_path / ".best.999.tmp").mkdir()  # a kill between the two renames: the next save clears both
    os.rename(best, tmp_path / ".best.999.old")
    save_network(best, first, generator.parent_arch, generator.graph, RECIPE)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"] and torch.equal(load_network(best)(x), first.eval()(x))
    (best / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=r"holds files save_network did not write \(\['notes.txt'\]\)"):
        save_network(best, first, generator.parent_arch, generator.graph, RECIPE)


def test_files_are_flushed_to_disk_before_they_replace_the_old_ones(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = rundir._fsync, os.replace
    monkeypatch.setattr(rundir, "_fsync", lambda path: events.append(("fsync", str(path))) or real_fsync(path))
    monkeypatch.setattr(os, "replace", lambda a, b: events.append(("replace", str(a))) or real_replace(a, b))
    write_text_atomic(tmp_path / "summary.json", "{}")
    temporary = next(path for kind, path in events if kind == "replace")
    assert events.index(("fsync", temporary)) < events.index(("replace", temporary))
    assert events[-1] == ("fsync", str(tmp_path))  # and the rename itself
    assert (tmp_path / "summary.json").read_text() == "{}"
