"""Many networks that all pass: the answer kept as the run left it, distinct variations (or a plain shortfall),
members fine-tuned until they meet every condition, and one member per job of a Hydra sweep."""
import json
import subprocess

import pytest
import torch
from hydra import compose, initialize_config_dir
from safetensors.torch import load_file

from gensynth_pl import Gate, GenerativeSynthesis, Inquisitor, SynthesisModule
from gensynth_pl.data import SyntheticDataModule
from gensynth_pl.family import FamilySettings, build_family
from gensynth_pl.generator import Generator
from gensynth_pl.members import EPOCH_LIMIT, PASSED, REJECTED_EARLY, THE_ANSWER
from gensynth_pl.models import cifar_resnet
from gensynth_pl.tasks import ClassificationTask

from conftest import quiet_trainer
from test_experience import BIN
from test_train_cli import ROOT, TINY, run_train


@pytest.fixture(scope="module")
def polished_run(tmp_path_factory):
    """A tiny run whose answer was polished (so the generator holds it twice: before and after its polish) and whose
    two-epoch cycles measured a recovery."""
    out = tmp_path_factory.mktemp("run")
    torch.manual_seed(0)
    data = SyntheticDataModule(num_classes=4, image_size=16, train_size=256, val_size=128, noise=0.5, batch_size=32)
    module = SynthesisModule(cifar_resnet(depth=14, width=8, num_classes=4), ClassificationTask(4))
    callback = GenerativeSynthesis(Gate("val/acc", 1.0), cycles=2, epochs_per_cycle=2, prototype_epochs=1,
                                   polish_epochs=3, probe_batches=3, inquisitor=Inquisitor(step=0.4), channel_multiple=1,
                                   output_dir=out, prototype_config={"_target_": "gensynth_pl.models.cifar_resnet",
                                                                     "depth": 14, "width": 8, "num_classes": 4})
    quiet_trainer(callback.total_epochs, [callback]).fit(module, datamodule=data)
    assert callback.record.polish.accepted
    return out, callback, data


def weights_of(folder):
    found = list(folder.glob("weights.*"))
    return load_file(found[0]) if found[0].suffix == ".safetensors" else torch.load(found[0], weights_only=True)


def test_a_member_that_is_the_answer_keeps_the_polished_answers_weights_and_metric(polished_run, tmp_path):
    out, callback, data = polished_run
    best = callback.record.best
    settings = FamilySettings(targets=(float(best.macs),), finetune_epochs=2)
    (row,) = build_family(out / "generator.safetensors", data, ClassificationTask(4), settings, output_dir=tmp_path)["rows"]
    assert row["macs"] == best.macs and row["epochs"] == 0 and row["stop"] == THE_ANSWER
    assert row["metric"] == pytest.approx(best.metric, abs=1e-6)
    answer, member = weights_of(out / "best"), weights_of(tmp_path / row["name"])
    assert answer.keys() == member.keys() and all(torch.equal(answer[k], member[k]) for k in answer)


def test_variations_are_distinct_from_each_other_and_the_answer_or_the_shortfall_is_said(polished_run):
    out, callback, data = polished_run
    settings = FamilySettings(finetune_epochs=0, temperature=1e-4)  # nearly deterministic: few distinct draws
    result = build_family(out / "generator.safetensors", data, ClassificationTask(4), settings, variations=4)
    rows, answer = result["rows"], callback.loop.best.arch
    assert len(rows) < 4 and "were asked for" in result["shortfall"]  # not the answer or one network repeated
    keys = [json.dumps([r["widths"], r["removed_blocks"]], sort_keys=True) for r in rows]
    assert len(set(keys)) == len(keys)
    assert json.dumps([answer.widths(), answer.removed_blocks], sort_keys=True) not in keys


def with_gate(out, tmp_path, **gate) -> str:
    """A copy of the run's generator file whose recorded gate is changed (as another run would have recorded it)."""
    generator, extra = Generator.load(out / "generator.safetensors")
    extra["gate"] = {**extra["gate"], **gate}
    path = tmp_path / "generator.safetensors"
    path.parent.mkdir(exist_ok=True)
    generator.save(path, extra=extra)
    return str(path)


def test_members_fine_tune_until_they_meet_every_condition_and_say_why_they_stopped(polished_run, tmp_path):
    out, _, data = polished_run
    task = ClassificationTask(4)
    (easy,) = build_family(out / "generator.safetensors", data, task, FamilySettings(targets=(0.5,), finetune_epochs=3))["rows"]
    assert easy["gate_passed"] and easy["stop"] == PASSED and easy["epochs"] == 1  # passed after one of three epochs
    impossible = with_gate(out, tmp_path, bound=1.01)  # no network reaches 101% accuracy
    settings = FamilySettings(targets=(0.5,), finetune_epochs=2, early_reject_margin=None)
    (row,) = build_family(impossible, data, task, settings)["rows"]
    assert not row["gate_passed"] and row["epochs"] == 2 and row["stop"] == EPOCH_LIMIT and row["unmet"] == ["val/acc"]
    if "replaces" in row:  # a larger network within the budget was tried in its place, and failed too
        assert row["replaces"]["macs"] < row["macs"] <= 0.5 * 1.05 * json.loads((out / "summary.json").read_text())[
            "prototype"]["macs"]
    else:
        assert row["replacement"].startswith("none")
    out_of_reach = with_gate(out, tmp_path / "far", bound=3.0)  # even the recovery the run measured cannot close the gap
    settings = FamilySettings(targets=(0.5,), finetune_epochs=3, early_reject_margin=0.02)
    (rejected,) = build_family(out_of_reach, data, task, settings)["rows"]
    assert rejected["stop"] == REJECTED_EARLY and rejected["epochs"] == 1


def test_members_as_jobs_of_a_sweep_compose_for_slurm():
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("generate", overrides=["run_dir=/runs/r", "targets=[0.5]", "hydra/launcher=slurm",
                                             "hydra.launcher.partition=gpu"], return_hydra_config=True)
    assert cfg.hydra.launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert cfg.hydra.launcher.partition == "gpu" and cfg.hydra.launcher.tasks_per_node == 1
    assert cfg.hydra.sweep.dir.startswith("/runs/r/generated/multirun_") and list(cfg.targets) == [0.5]


@pytest.mark.slow
def test_two_parallel_jobs_build_members_that_gather_into_one_family(tmp_path):
    run = tmp_path / "run"
    assert run_train(run, *TINY, "logger=none").returncode == 0
    sweep = tmp_path / "sweep"
    jobs = subprocess.run(
        [str(BIN / "gensynth-generate"), "-m", f"run_dir={run}", "targets=[0.5],[0.3]", "hydra/launcher=local_parallel",
         f"hydra.sweep.dir={sweep}"], capture_output=True, text=True, timeout=900)
    assert jobs.returncode == 0, jobs.stderr[-3000:]
    gathered = subprocess.run([str(BIN / "gensynth-gather"), f"dir={sweep}"], capture_output=True, text=True, timeout=600)
    assert gathered.returncode == 0, gathered.stderr[-3000:]
    family = json.loads((sweep / "family.json").read_text())
    assert [row["name"] for row in family["rows"]] == ["macs_0.5", "macs_0.3"] and family["jobs"] == 2
    assert (sweep / "family.csv").is_file() and (sweep / "family.png").is_file() and family["diversity"] > 0
