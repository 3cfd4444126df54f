"""Files from someone else run no code: hostile recipes through every entry point (Python API and both CLIs).

Each payload creates a marker file if it runs (``test_the_payloads_run_when_the_whole_file_is_trusted`` shows that
they do); every entry point must refuse it before anything is instantiated, naming the target. Legitimate files of
this version, and of the previous one (torch pickles), still load and sample.
"""
import base64
import json
import pickle
import sys
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from gensynth_pl.cli import export, generate
from gensynth_pl.data import SyntheticDataModule
from gensynth_pl.export import load_network, save_network
from gensynth_pl.family import build_family
from gensynth_pl.gates import Gate
from gensynth_pl.generator import LEGACY_FORMAT, Generator
from gensynth_pl.inquisitor import Inquisitor
from gensynth_pl.metrics import NetworkReport
from gensynth_pl.models import cifar_resnet
from gensynth_pl.recipes import UntrustedRecipeError, check_recipe, instantiate_trusted
from gensynth_pl.rundir import LEGACY_WEIGHTS_FILE, WEIGHTS_FILE, RunDirectory
from gensynth_pl.tasks import ClassificationTask
from gensynth_pl.torch_utils import cpu_state_dict

from conftest import TINY_SHAPE
from test_train_cli import ROOT, TINY

RECIPE = {"_target_": "gensynth_pl.models.cifar_resnet", "depth": 8, "width": 8, "num_classes": 4}
CUSTOM = "test_trust.tiny_custom_resnet"


def tiny_custom_resnet(depth: int, width: int, num_classes: int) -> torch.nn.Module:
    """A builder outside the allow-list (this test module), for the trust settings."""
    return cifar_resnet(depth=depth, width=width, num_classes=num_classes)


class Touch:
    """Unpickling this creates the marker file: the code a pickle carries."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').close()",)


def _opener(marker: Path) -> dict:
    return {"_target_": "builtins.open", "_args_": [str(marker), "w"]}


def _pickled(marker: Path) -> Path:
    path = marker.with_name("payload.pkl")  # shipped beside the hostile file
    path.write_bytes(pickle.dumps(Touch(marker)))
    return path


# name -> (recipe for a marker path, the target the refusal names); each recipe creates the marker if instantiated
PAYLOADS: dict[str, tuple[Callable[[Path], object], str]] = {
    "torch.load of a base64 pickle": (lambda m: {"_target_": "torch.load", "weights_only": False, "f": {
        "_target_": "io.BytesIO", "_args_": [{"_target_": "base64.b64decode",
                                             "_args_": [base64.b64encode(pickle.dumps(Touch(m))).decode()]}]}},
        "torch.load"),
    "instantiate_class": (lambda m: {"_target_": "lightning.pytorch.cli.instantiate_class", "args": str(m),
                                     "init": {"class_path": "builtins.open", "init_args": {"mode": "w"}}},
                          "lightning.pytorch.cli.instantiate_class"),
    "Path.write_text": (lambda m: {"_target_": "pathlib.Path.write_text",
                                   "_args_": [{"_target_": "pathlib.Path", "_args_": [str(m)]}, "pwned"]},
                        "pathlib.Path.write_text"),
    "builtins.open": (_opener, "builtins.open"),
    "joblib.load": (lambda m: {"_target_": "joblib.load", "filename": str(_pickled(m))}, "joblib.load"),
    "nested in an allowed builder": (lambda m: {**RECIPE, "num_classes": _opener(m)}, "builtins.open"),
    "a _partial_ an allowed builder calls": (lambda m: {"_target_": "torchvision.models.resnet18", "num_classes": 4,
                                                        "norm_layer": {**_opener(m), "_partial_": True}}, "builtins.open"),
    "a module seen through an allowed package": (
        lambda m: {"_target_": "torchvision.models.resnet.torch.serialization.os.makedirs", "_args_": [str(m)]},
        "torchvision.models.resnet.torch.serialization.os.makedirs"),
    "a list of recipes": (lambda m: [RECIPE, {"_target_": "pathlib.Path.touch", "_args_": [
        {"_target_": "pathlib.Path", "_args_": [str(m)]}]}], "pathlib.Path.touch"),
}


@pytest.fixture(params=list(PAYLOADS))
def payload(request, tmp_path) -> tuple[object, str, Path]:
    """(hostile recipe, the target its refusal must name, the marker it would create)."""
    marker = tmp_path / "pwned"
    recipe, target = PAYLOADS[request.param]
    return recipe(marker), target, marker


def refused(error: pytest.ExceptionInfo, target: str, source: str) -> bool:
    message = str(error.value)
    return repr(target) in message and source in message and "trusted_targets" in message


def tiny_generator(prototype_config: object = RECIPE) -> Generator:
    torch.manual_seed(0)
    return Generator.from_prototype(cifar_resnet(depth=8, width=8, num_classes=4), TINY_SHAPE, prototype_config=prototype_config)


def save_generator(path: Path, prototype_config: object = RECIPE) -> Generator:
    """A generator file as a run writes it (the gate, inquisitor and answer ``build_family`` needs)."""
    generator = tiny_generator(prototype_config)
    report = NetworkReport.measure(generator.parent, TINY_SHAPE, 0.5, True)
    extra = {"gate": Gate("val/acc", 0.0, relative=False).to_dict(), "inquisitor": Inquisitor().state_dict(),
             "prototype": report.to_dict(), "best": report.to_dict(), "best_arch": generator.parent_arch.to_dict()}
    generator.save(path, extra=extra)
    return generator


def save_best(folder: Path, prototype_config: object = RECIPE) -> torch.nn.Module:
    generator = tiny_generator(prototype_config)
    save_network(folder, generator.parent, generator.parent_arch, generator.graph, prototype_config)
    return generator.parent


def run_config(run_dir: Path, **sections: object) -> Path:
    """The .hydra/config.yaml of a tiny train.py run, with ``sections`` replaced."""
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[*TINY, "logger=none"])
    OmegaConf.set_struct(cfg, False)
    for key, value in sections.items():
        cfg[key] = value
    path = run_dir / ".hydra" / "config.yaml"
    path.parent.mkdir(parents=True)
    OmegaConf.save(cfg, path)
    return path


def cli(app: Callable, monkeypatch, capsys, *arguments: str) -> tuple[int, str]:
    """A Hydra console script run as a user runs it (in this process): its exit code and output."""
    monkeypatch.setattr(sys, "argv", [app.__name__, *arguments])
    try:
        app()
        code = 0
    except SystemExit as exit:
        code = exit.code
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_the_payloads_run_when_the_whole_file_is_trusted(payload, tmp_path):
    """What the refusals below prevent is real: trusted wholesale, every payload creates its marker."""
    recipe, _, marker = payload
    with suppress(Exception):  # most payloads fail after they ran: they build no network
        instantiate_trusted(recipe, "prototype", tmp_path / "file", trust_recipe=True)
    assert marker.exists()


def test_generator_load_refuses_a_hostile_recipe(payload, tmp_path):
    recipe, target, marker = payload
    path = tmp_path / RunDirectory.GENERATOR
    save_generator(path, recipe)
    with pytest.raises(UntrustedRecipeError) as error:
        Generator.load(path)
    assert refused(error, target, str(path)) and not marker.exists()


def test_load_network_refuses_a_hostile_recipe(payload, tmp_path):
    recipe, target, marker = payload
    save_best(tmp_path / "best", recipe)
    with pytest.raises(UntrustedRecipeError) as error:
        load_network(tmp_path / "best")
    assert refused(error, target, "architecture.json") and not marker.exists()


def test_build_family_refuses_a_hostile_generator(payload, tmp_path):
    recipe, target, marker = payload
    path = tmp_path / RunDirectory.GENERATOR
    save_generator(path, recipe)
    data = SyntheticDataModule(num_classes=4, image_size=16, train_size=32, val_size=32)
    with pytest.raises(UntrustedRecipeError) as error:
        build_family(path, data, ClassificationTask(4), output_dir=tmp_path / "family")
    assert refused(error, target, str(path)) and not marker.exists() and not (tmp_path / "family").exists()


def test_export_cli_refuses_a_hostile_network_folder(payload, tmp_path, monkeypatch, capsys):
    recipe, target, marker = payload
    save_best(tmp_path / "best", recipe)
    code, output = cli(export, monkeypatch, capsys, f"network_dir={tmp_path / 'best'}", "batch_sizes=[1]", "repeats=1")
    assert code == 1 and repr(target) in output and "trusted_targets" in output and not marker.exists()
    assert not (tmp_path / "best" / "network.onnx").exists()


@pytest.mark.parametrize("section", ["data", "task", "optimizer", "scheduler"])
def test_generate_cli_refuses_a_hostile_run_config(section, tmp_path, monkeypatch, capsys):
    marker = tmp_path / "pwned"
    save_generator(RunDirectory(tmp_path).generator)
    recipe, target = PAYLOADS["Path.write_text" if section in ("data", "task") else "torch.load of a base64 pickle"]
    config = run_config(tmp_path, **{section: recipe(marker)})
    code, output = cli(generate, monkeypatch, capsys, f"run_dir={tmp_path}", "targets=[1.0]", "finetune_epochs=0")
    assert code == 1 and f"the {section} recipe has {target!r}" in output and str(config) in output
    assert not marker.exists()


def test_generate_cli_refuses_a_hostile_generator_and_interpolated_targets(tmp_path, monkeypatch, capsys):
    marker = tmp_path / "pwned"
    save_generator(RunDirectory(tmp_path).generator, PAYLOADS["joblib.load"][0](marker))
    run_config(tmp_path)
    code, output = cli(generate, monkeypatch, capsys, f"run_dir={tmp_path}", "num_networks=1")
    assert code == 1 and "'joblib.load'" in output and "generator.safetensors" in output and not marker.exists()
    # a target the run config builds by interpolation is checked as it resolves
    other = tmp_path / "interpolated"
    save_generator(RunDirectory(other).generator)
    config = run_config(other, evil="builtins.open", task={"_target_": "${evil}", "_args_": [str(marker), "w"]})
    code, output = cli(generate, monkeypatch, capsys, f"run_dir={other}", "num_networks=1")
    assert code == 1 and "'builtins.open'" in output and str(config) in output and not marker.exists()


def test_builder_arguments_may_not_reach_for_files_or_downloads(tmp_path):
    checkpoint = _pickled(tmp_path / "pwned")
    for recipe, named in [
        ({"_target_": "timm.create_model", "model_name": "resnet18", "checkpoint_path": str(checkpoint)}, "checkpoint_path"),
        ({"_target_": "timm.create_model", "model_name": "resnet18", "pretrained": True,
          "pretrained_cfg_overlay": {"file": str(checkpoint)}}, "pretrained"),
        ({"_target_": "timm.create_model", "model_name": f"local-dir:{tmp_path}"}, "local-dir"),
        ({"_target_": "torchvision.models.resnet18", "weights": "DEFAULT"}, "weights='DEFAULT'"),
        ({"_target_": "gensynth_pl.models.smp_segmenter", "arch": "Unet", "encoder_name": "resnet18",
          "encoder_weights": "imagenet", "num_classes": 2}, "encoder_weights='imagenet'"),
    ]:
        with pytest.raises(UntrustedRecipeError, match=named):
            instantiate_trusted(recipe, "prototype", tmp_path / "file")
    for recipe in ({"_target_": "timm.create_model", "model_name": "resnet18", "pretrained": False, "drop_path_rate": 0.1,
                    "num_classes": 3},
                   {"_target_": "torchvision.models.resnet18", "weights": None, "num_classes": 3}):
        assert instantiate_trusted(recipe, "prototype", tmp_path / "file").eval()(torch.zeros(1, 3, 32, 32)).shape == (1, 3)


def test_targets_that_are_not_dotted_names_are_refused(tmp_path):
    for recipe, reason in [({"_target_": 7}, "a target must be a dotted name"),
                           ({"_target_": "gensynth_pl..models.cifar_resnet"}, "not a dotted name"),
                           ({"_target_": "gensynth_pl.models.__builtins__"}, "not a dotted name"),
                           ({"_target_": "torchvision.models._utils.sequence_to_str"}, "not a dotted name"),
                           ({"_target_": "gensynth_pl.models.CifarResNet.forward"}, "is not the module of that name"),
                           ({"_target_": "torchvision.models.get_model", "name": "resnet18"}, "not one of torchvision")]:
        with pytest.raises(UntrustedRecipeError, match=reason):
            instantiate_trusted(recipe, "prototype", tmp_path / "file")


def test_trust_lets_through_only_what_the_user_names(tmp_path, monkeypatch, capsys):
    recipe = {**RECIPE, "_target_": CUSTOM}
    path = tmp_path / RunDirectory.GENERATOR
    save_generator(path, recipe)
    with pytest.raises(UntrustedRecipeError) as error:
        Generator.load(path)
    assert refused(error, CUSTOM, str(path))
    generator, _ = Generator.load(path, trusted_targets=[CUSTOM])
    assert generator.build(generator.sample(3))(torch.zeros(1, *TINY_SHAPE)).shape == (1, 4)
    assert Generator.load(path, trust_recipe=True)[0].sample(3) == generator.sample(3)
    marker = tmp_path / "pwned"  # trusting one target trusts nothing nested in it
    save_generator(path, {**recipe, "num_classes": _opener(marker)})
    with pytest.raises(UntrustedRecipeError, match="'builtins.open'"):
        Generator.load(path, trusted_targets=[CUSTOM])
    assert not marker.exists()

    save_best(tmp_path / "best", recipe)
    arguments = (f"network_dir={tmp_path / 'best'}", "batch_sizes=[1]", "repeats=1", "warmup=0")
    code, output = cli(export, monkeypatch, capsys, *arguments)
    assert code == 1 and repr(CUSTOM) in output
    code, output = cli(export, monkeypatch, capsys, *arguments, f"trusted_targets=[{CUSTOM}]")
    assert code == 0 and "matches PyTorch" in output, output[-2000:]
    assert (tmp_path / "best" / "latency.json").is_file()


def test_a_prototype_passed_in_means_the_recipe_is_never_used(payload, tmp_path):
    recipe, _, marker = payload
    path = tmp_path / RunDirectory.GENERATOR
    saved = save_generator(path, recipe)
    generator, _ = Generator.load(path, cifar_resnet(depth=8, width=8, num_classes=4))
    x = torch.randn(2, *TINY_SHAPE)
    assert torch.equal(generator.parent.eval()(x), saved.parent.eval()(x)) and not marker.exists()


def test_generate_cli_samples_a_legitimate_run_directory(tmp_path, monkeypatch, capsys):
    save_generator(RunDirectory(tmp_path).generator)
    run_config(tmp_path)
    out = tmp_path / "generated"
    code, output = cli(generate, monkeypatch, capsys, f"run_dir={tmp_path}", "targets=[1.0]", "finetune_epochs=0",
                       f"hydra.run.dir={out}")
    assert code == 0, output[-3000:]
    (row,) = json.loads((out / "family.json").read_text())["rows"]
    member = out / row["name"]
    assert {WEIGHTS_FILE, "architecture.json", "network.onnx"} <= {p.name for p in member.iterdir()}
    x = torch.randn(2, *TINY_SHAPE)
    assert load_network(member)(x).shape == (2, 4)


def test_files_of_the_previous_version_still_load_and_their_recipes_are_checked(tmp_path):
    """generator.pt and weights.pt: torch pickles of tensors and plain data, read with weights_only=True."""
    generator = tiny_generator()
    legacy = {"format": LEGACY_FORMAT, "prototype_config": RECIPE, "input_shape": list(TINY_SHAPE),
              "output_layers": generator.graph.output_layers, "removable_blocks": generator.graph.removable_blocks,
              "min_channels": generator.min_channels, "channel_multiple": 1, "state": generator.state_dict(), "extra": {}}
    torch.save(legacy, tmp_path / RunDirectory.LEGACY_GENERATOR)
    files = RunDirectory(tmp_path)
    assert files.saved_generator.name == RunDirectory.LEGACY_GENERATOR
    loaded, extra = Generator.load(files.saved_generator)
    assert loaded.sample(5) == generator.sample(5)
    loaded.save(files.generator, extra=extra)  # converted, as docs/guides/trusting-files.md shows
    assert files.saved_generator == files.generator and Generator.load(files.generator)[0].sample(5) == generator.sample(5)
    marker = tmp_path / "pwned"
    torch.save({**legacy, "prototype_config": _opener(marker)}, tmp_path / "hostile.pt")
    with pytest.raises(UntrustedRecipeError, match="'builtins.open'"):
        Generator.load(tmp_path / "hostile.pt")
    torch.save({"format": LEGACY_FORMAT, "payload": Touch(marker)}, tmp_path / "pickled.pt")
    with pytest.raises(ValueError, match="cannot be read as tensors and plain data"):
        Generator.load(tmp_path / "pickled.pt")
    assert not marker.exists()

    network = save_best(tmp_path / "best")
    (tmp_path / "best" / WEIGHTS_FILE).unlink()
    torch.save(cpu_state_dict(network), tmp_path / "best" / LEGACY_WEIGHTS_FILE)
    x = torch.randn(2, *TINY_SHAPE)
    assert torch.equal(load_network(tmp_path / "best")(x), network.eval()(x))


def test_every_shipped_config_passes_the_allow_list():
    """What runs of this version write is what the allow-list admits: every model, data and task option of conf/,
    and the optimizer and scheduler, resolved as a run saves them."""
    checks = [(["model=detectnet", "task=detection"], "model", "prototype"), (["task=segmentation"], "model", "prototype"),
              (["model=refinenet", "task=segmentation"], "model", "prototype"), ([], "model", "prototype"),
              (["data=cifar10"], "data", "data"), (["data=imagefolder", "data.root=x"], "data", "data"),
              (["data=coco", "data.root=x", "task=detection"], "data", "data"),
              (["data=camvid", "data.root=x", "task=segmentation"], "data", "data"),
              (["task=detection"], "data", "data"), (["task=segmentation"], "data", "data"), ([], "data", "data"),
              ([], "task", "task"), (["task=detection"], "task", "task"), (["task=segmentation"], "task", "task"),
              ([], "optimizer", "optimizer"), ([], "scheduler", "scheduler")]
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        for overrides, section, what in checks:
            node = compose("train", overrides=overrides)[section]
            check_recipe(OmegaConf.to_container(node, resolve=True), what, f"conf with {overrides}")
