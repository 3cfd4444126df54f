"""train.py and its Hydra configs, as a user runs them."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from PIL import Image

from gensynth_pl.data import CIFAR10DataModule, ImageFolderDataModule
from gensynth_pl.rundir import ONNX_FILE, SPEC_FILE, WEIGHTS_FILE, RunDirectory

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "data.train_size=256", "data.val_size=128", "data.image_size=16", "data.noise=0.5", "data.num_classes=4",
    "model.depth=8", "model.width=8", "synthesis.cycles=2", "synthesis.prototype_epochs=1",
    "synthesis.epochs_per_cycle=1", "synthesis.probe_batches=3", "gate.threshold=1.0", "trainer.enable_progress_bar=false",
    "synthesis.channel_multiple=1",  # exact widths: multiples of 8 leave a width-8 ResNet little to choose from
    "synthesis.polish_epochs=0", "data.test_size=0", "synthesis.family.targets=[]",
]


def run_train(run_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    run_dir.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, str(ROOT / "train.py"), f"hydra.run.dir={run_dir}", *overrides]
    env = {**os.environ, "WANDB_MODE": "disabled"}
    return subprocess.run(command, cwd=run_dir, capture_output=True, text=True, timeout=600, env=env)


def test_every_config_group_option_composes():
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        for overrides in ([], ["data=cifar10"], ["data=imagefolder", "data.root=x"], ["trainer=gpu", "logger=wandb"], ["logger=none"]):
            cfg = compose("train", overrides=overrides)
            assert cfg.synthesis._target_.endswith("GenerativeSynthesis") and cfg.gate.monitor == "val/acc"
        cfg = compose("train", overrides=["logger=none", "synthesis.cycles=3"])
        callback = instantiate(cfg.synthesis, gate=instantiate(cfg.gate))
        s = cfg.synthesis
        assert callback.total_epochs == s.prototype_epochs + 3 * s.epochs_per_cycle + s.polish_epochs


def test_train_py_writes_the_run_directory(tmp_path):
    result = run_train(tmp_path, *TINY, "logger=csv", "data.test_size=64", "synthesis.family.targets=[0.5]",
                       "synthesis.family.finetune_epochs=1")
    assert result.returncode == 0, result.stderr[-3000:]
    console = result.stdout + result.stderr  # Lightning's banner once: the family's trainer runs quietly
    assert console.count("GPU available") == 1 and console.count("Tip:") == 1, console[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["task"] == "classification" and len(summary["cycles"]) == 2
    assert summary["best"]["macs"] < summary["prototype"]["macs"]
    assert {SPEC_FILE, WEIGHTS_FILE, ONNX_FILE} <= {p.name for p in (tmp_path / "best").iterdir()}
    assert RunDirectory(tmp_path).generator.is_file() and list(tmp_path.glob("csv/version_0/metrics.csv"))
    assert "cycle |" in result.stdout and "best (cycle" in result.stdout  # the per-cycle table and final summary
    for network in ("prototype", "best"):  # the test split, evaluated after the synthesis
        assert 0.0 <= summary[network]["test"]["acc"] <= 1.0 and f"test split, {network}: acc" in result.stdout
    assert all("test" not in cycle for cycle in summary["cycles"])
    family = json.loads((tmp_path / "family" / "family.json").read_text())  # the run ends with its family
    assert len(family["rows"]) == 1 and (tmp_path / "family" / family["rows"][0]["name"] / "network.onnx").is_file()
    assert "members meet every condition" in result.stdout


def test_bad_config_value_and_missing_dataset_fail_with_the_fix(tmp_path):
    bad = run_train(tmp_path / "bad", "synthesis.cycles=0", "logger=none")
    assert bad.returncode != 0 and "synthesis.cycles=0" in bad.stderr and "integer >= 1" in bad.stderr
    missing = run_train(tmp_path / "missing", "data=imagefolder", "data.root=/no/such/cifar", "logger=none")
    assert missing.returncode != 0 and "data.root" in missing.stderr and "/no/such/cifar" in missing.stderr
    assert not (tmp_path / "missing" / "summary.json").exists()


def write_image_folder(root: Path, classes: int = 2, per_class: int = 8) -> None:
    for c in range(classes):
        (root / "train" / f"class{c}").mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (32, 32), (40 * c, 10 * i, 100)).save(root / "train" / f"class{c}" / f"{i}.png")


def test_image_folder_carves_a_fixed_validation_split(tmp_path):
    write_image_folder(tmp_path)
    splits = []
    for _ in range(2):
        data = ImageFolderDataModule(str(tmp_path), val_size=4, num_classes=2, batch_size=4, num_workers=0)
        data.setup("fit")
        splits.append((list(data.train_set.indices), list(data.val_set.indices)))
        assert len(data.train_set) == 12 and not set(splits[-1][0]) & set(splits[-1][1])
    assert splits[0] == splits[1]
    images, labels = next(iter(data.train_dataloader()))
    assert images.shape == (4, 3, 32, 32) and labels.dtype.is_floating_point is False
    with pytest.raises(ValueError, match="data.num_classes=10"):
        ImageFolderDataModule(str(tmp_path), val_size=4, num_classes=10).setup("fit")


def test_unreadable_image_names_the_file(tmp_path):
    write_image_folder(tmp_path)
    broken = tmp_path / "train" / "class0" / "3.png"
    broken.write_bytes(b"not a png")
    data = ImageFolderDataModule(str(tmp_path), val_size=4, num_classes=2, augment=False, num_workers=0)
    data.setup("fit")
    dataset = data.train_set.dataset
    index = dataset.samples.index((str(broken), 0))
    with pytest.raises(OSError, match="3.png"):
        dataset[index]


def test_missing_cifar_points_to_root_or_download(tmp_path):
    with pytest.raises(FileNotFoundError, match="data.download=true"):
        CIFAR10DataModule(str(tmp_path / "nothing")).setup("fit")


@pytest.mark.slow
def test_default_job_compresses_at_least_3x_and_passes_its_gate(tmp_path):
    """`python train.py` exactly as in the README (embedded synthetic data, default config)."""
    result = run_train(tmp_path, "trainer.enable_progress_bar=false")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["best"]["gate_passed"] and summary["best_cycle"] > 0
    assert summary["prototype"]["macs"] / summary["best"]["macs"] >= 3.0
