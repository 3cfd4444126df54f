"""Interruption, multiple processes, determinism and bad input: nothing lost, clear errors."""
import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from PIL import Image

from gensynth_pl import Gate, GenerativeSynthesis, Inquisitor, SynthesisModule
from gensynth_pl.data import ImageFolderDataModule, SyntheticDataModule
from gensynth_pl.models import cifar_resnet
from gensynth_pl.rundir import ONNX_FILE, SPEC_FILE, WEIGHTS_FILE
from gensynth_pl.tasks import ClassificationTask

from conftest import quiet_trainer
from test_train_cli import ROOT, TINY, run_train, write_image_folder

SLOWER_TINY = [o for o in TINY if not o.startswith(("data.train_size", "synthesis.cycles", "synthesis.epochs"))] + [
    "data.train_size=2048", "synthesis.cycles=4", "synthesis.epochs_per_cycle=2", "logger=none",
]


def summary_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


@pytest.mark.slow
def test_run_killed_mid_cycle_resumes_to_a_complete_run_directory(tmp_path):
    command = [sys.executable, str(ROOT / "train.py"), f"hydra.run.dir={tmp_path}", *SLOWER_TINY]
    process = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not ((tmp_path / "summary.json").exists() and summary_of(tmp_path)["cycles"]):
        assert process.poll() is None and time.monotonic() < deadline, "the run ended before its first cycle"
        time.sleep(0.2)
    time.sleep(random.uniform(0.2, 1.5))  # somewhere inside cycle 2
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    assert len(summary_of(tmp_path)["cycles"]) < 4

    resumed = run_train(tmp_path, *SLOWER_TINY, f"ckpt_path={tmp_path / 'checkpoints' / 'last.ckpt'}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = summary_of(tmp_path)
    assert [c["cycle"] for c in summary["cycles"]] == [1, 2, 3, 4]
    assert summary["best"]["macs"] < summary["prototype"]["macs"]
    assert {SPEC_FILE, WEIGHTS_FILE, ONNX_FILE} <= {p.name for p in (tmp_path / "best").iterdir()}


@pytest.mark.slow
def test_ddp_with_two_cpu_processes_trains_one_architecture_per_cycle(tmp_path):
    result = run_train(tmp_path, *TINY, "trainer=ddp", "logger=none")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = summary_of(tmp_path)
    assert len(summary["cycles"]) == 2 and summary["best"]["macs"] < summary["prototype"]["macs"]
    # every cycle the ranks compared their own sample with rank 0's (a mismatch raises); rank 0 alone wrote
    assert result.stdout.count("GenSynth: prototype") == 1


def tiny_run(tmp_path: Path, module: SynthesisModule, data, gate: Gate, **kwargs) -> GenerativeSynthesis:
    settings = dict(cycles=2, epochs_per_cycle=1, prototype_epochs=1, probe_batches=3, inquisitor=Inquisitor(step=0.4),
                    channel_multiple=1, polish_epochs=0)
    callback = GenerativeSynthesis(gate, output_dir=tmp_path, **{**settings, **kwargs})
    quiet_trainer(callback.total_epochs, [callback], deterministic=True).fit(module, datamodule=data)
    return callback


def test_same_config_and_seed_give_the_same_architectures_and_metrics(tmp_path, tiny_data):
    runs = []
    for name in ("a", "b"):
        torch.manual_seed(0)
        module = SynthesisModule(cifar_resnet(depth=8, width=8, num_classes=4), ClassificationTask(4))
        callback = tiny_run(tmp_path / name, module, tiny_data, Gate("val/acc", 1.0))
        runs.append([{k: v for k, v in c.to_dict().items() if k != "seconds"} for c in callback.record.cycles])
    assert runs[0] == runs[1]


def test_gate_that_cannot_be_met_ends_normally_and_keeps_the_prototype(tmp_path):
    result = run_train(tmp_path, *TINY, "gate.relative=false", "gate.threshold=1.01", "logger=none")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = summary_of(tmp_path)
    assert not summary["any_candidate_passed"] and not summary["best"]["gate_passed"]
    assert summary["best_cycle"] == 0 and summary["best"]["macs"] == summary["prototype"]["macs"]
    assert "NO network passed the gate" in result.stdout and (tmp_path / "best" / WEIGHTS_FILE).is_file()


class DivergingModule(SynthesisModule):
    """The prototype trains normally; every generated candidate's loss turns NaN."""

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        return loss * float("nan") if self.trainer.current_epoch >= 1 else loss


def test_nan_loss_rejects_and_rolls_back_the_cycle_not_the_run(tmp_path, tiny_data):
    module = DivergingModule(cifar_resnet(depth=8, width=8, num_classes=4), ClassificationTask(4))
    callback = tiny_run(tmp_path, module, tiny_data, Gate("val/acc", 1.0))
    assert [(c.diverged, c.accepted) for c in callback.record.cycles] == [(True, False), (True, False)]
    assert callback.record.best_cycle == 0 and len(callback.loop.generator.lineage) == 1
    assert summary_of(tmp_path)["best"]["gate_passed"]


def test_resuming_with_another_prototype_is_refused(tmp_path, tiny_data):
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_top_k=1)
    gate = Gate("val/acc", 1.0)
    callback = GenerativeSynthesis(gate, cycles=1, epochs_per_cycle=1, prototype_epochs=1, probe_batches=2, polish_epochs=0)
    module = SynthesisModule(cifar_resnet(depth=8, width=8, num_classes=4), ClassificationTask(4))
    quiet_trainer(2, [callback, checkpoints], enable_checkpointing=True).fit(module, datamodule=tiny_data)
    other = SynthesisModule(cifar_resnet(depth=8, width=4, num_classes=4), ClassificationTask(4))
    fresh = GenerativeSynthesis(gate, cycles=2, epochs_per_cycle=1, prototype_epochs=1, probe_batches=2, polish_epochs=0)
    with pytest.raises(ValueError, match="different prototype"):
        quiet_trainer(3, [fresh]).fit(other, datamodule=tiny_data, ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))


def test_unwritable_output_dir_fails_before_training(tmp_path, tiny_data):
    (tmp_path / "a_file").write_text("x")
    module = SynthesisModule(cifar_resnet(depth=8, width=8, num_classes=4), ClassificationTask(4))
    with pytest.raises(PermissionError, match="not writable.*output_dir"):
        tiny_run(tmp_path / "a_file" / "run", module, tiny_data, Gate())
    assert module.trainer.current_epoch == 0


def test_truncated_image_and_empty_datasets_give_clear_errors(tmp_path):
    write_image_folder(tmp_path / "imgs")
    victim = tmp_path / "imgs" / "train" / "class1" / "2.jpg"
    Image.new("RGB", (32, 32), (1, 2, 3)).save(victim, quality=95)
    victim.write_bytes(victim.read_bytes()[: len(victim.read_bytes()) // 3])
    data = ImageFolderDataModule(str(tmp_path / "imgs"), val_size=4, num_classes=2, augment=False, num_workers=0)
    data.setup("fit")
    folder = data.train_set.dataset
    with pytest.raises(OSError, match="2.jpg"):
        folder[folder.samples.index((str(victim), 1))]

    for empty in ("empty/train/class0", "empty/train/class1"):
        (tmp_path / empty).mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no class folders with images"):
        ImageFolderDataModule(str(tmp_path / "empty"), val_size=1, num_classes=2).setup("fit")
    with pytest.raises(ValueError, match="train_size"):
        SyntheticDataModule(train_size=0)


class CrashAt(L.Callback):
    """Stops a run the way a crash does: an exception at the start of ``epoch``."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch:
            raise RuntimeError("simulated crash")


def test_a_run_interrupted_in_its_polish_resumes_and_completes_it(tmp_path, tiny_data):
    def synthesis() -> GenerativeSynthesis:
        return GenerativeSynthesis(Gate("val/acc", 1.0), cycles=1, epochs_per_cycle=1, prototype_epochs=1, polish_epochs=2,
                                   probe_batches=2, channel_multiple=1, inquisitor=Inquisitor(step=0.4), output_dir=tmp_path)

    def module() -> SynthesisModule:
        torch.manual_seed(0)
        return SynthesisModule(cifar_resnet(depth=8, width=8, num_classes=4), ClassificationTask(4))

    first = synthesis()
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    with pytest.raises(RuntimeError, match="simulated crash"):  # epochs: 0 φ, 1 cycle 1, 2-3 the polish
        quiet_trainer(4, [first, checkpoints, CrashAt(3)], enable_checkpointing=True).fit(module(), datamodule=tiny_data)
    assert first.schedule.phase.kind == "polish" and summary_of(tmp_path)["polish"] is None
    resumed = synthesis()
    quiet_trainer(4, [resumed]).fit(module(), datamodule=tiny_data, ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    polish = summary_of(tmp_path)["polish"]
    assert polish["epochs"] == 2 and polish["cycle"] == 1 and resumed.schedule.phase is None
    assert [c["cycle"] for c in summary_of(tmp_path)["cycles"]] == [1]
    assert polish["after"]["macs"] == summary_of(tmp_path)["cycles"][0]["macs"]  # the cycle's network, polished
