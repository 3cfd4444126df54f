"""The callback end to end on generated data: our own module, a user's module, and the gate."""
import json

import lightning as L
import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from gensynth_pl import Gate, GenerativeSynthesis, Inquisitor, SynthesisModule, count_macs, load_network
from gensynth_pl.module import cosine_per_phase
from gensynth_pl.data import SyntheticDataModule
from gensynth_pl.models import cifar_resnet
from gensynth_pl.family import FamilySettings, build_family
from gensynth_pl.graph import Architecture
from gensynth_pl.rundir import RunDirectory
from gensynth_pl.tasks import ClassificationTask

from conftest import TINY_SHAPE, quiet_trainer


def tiny_callback(gate: Gate, **kwargs) -> GenerativeSynthesis:
    settings = dict(cycles=2, epochs_per_cycle=1, prototype_epochs=1, probe_batches=3, inquisitor=Inquisitor(step=0.4),
                    channel_multiple=1, polish_epochs=0)
    settings.update(kwargs)
    return GenerativeSynthesis(gate, **settings)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A real (tiny) synthesis run whose gate accepts every candidate within 100 points of φ."""
    out = tmp_path_factory.mktemp("run")
    torch.manual_seed(0)
    data = SyntheticDataModule(num_classes=4, image_size=16, train_size=256, val_size=128, noise=0.5, batch_size=32)
    module = SynthesisModule(cifar_resnet(depth=14, width=8, num_classes=4), ClassificationTask(4))
    callback = tiny_callback(Gate("val/acc", 1.0, relative=True), output_dir=out, prototype_config={
        "_target_": "gensynth_pl.models.cifar_resnet", "depth": 14, "width": 8, "num_classes": 4})
    quiet_trainer(callback.total_epochs, [callback]).fit(module, datamodule=data)
    return out, callback, module, data


def test_run_writes_the_output_contract_and_shrinks_the_network(finished_run):
    out, callback, module, _ = finished_run
    summary = json.loads((out / "summary.json").read_text())
    assert summary["task"] == "custom" and summary["gate"]["metric"] == "val/acc"
    for key in ("params", "macs", "metric", "netscore", "information_density", "gate_passed"):
        assert key in summary["prototype"] and key in summary["best"]
    assert [c["cycle"] for c in summary["cycles"]] == [1, 2]
    for cycle in summary["cycles"]:
        assert {"cycle", "seed", "params", "macs", "metric", "netscore", "gate_passed", "accepted", "seconds"} <= set(cycle)
        assert cycle["accepted"] and cycle["macs"] < summary["prototype"]["macs"]
    assert summary["cycles"][1]["macs"] < summary["cycles"][0]["macs"]  # each cycle compresses its parent further
    assert summary["best"]["macs"] < summary["prototype"]["macs"]
    assert count_macs(module.net, TINY_SHAPE) == summary["best"]["macs"]  # the best network is left in the module
    assert RunDirectory(out).generator.is_file() and (out / "best" / "network.onnx").is_file()


def test_best_network_reloads_from_spec_and_weights_with_identical_outputs(finished_run):
    out, callback, _, _ = finished_run
    reloaded = load_network(out / "best")
    x = torch.randn(4, *TINY_SHAPE)
    expected = callback.loop.best.network.eval()(x)
    assert torch.equal(reloaded(x), expected)
    onnx_out = ort.InferenceSession(str(out / "best" / "network.onnx")).run(None, {"input": x.numpy()})[0]
    np.testing.assert_allclose(onnx_out, expected.detach().numpy(), atol=1e-4)


def test_learned_generator_gives_distinct_networks_at_the_answers_budget(finished_run, tmp_path):
    out, callback, _, data = finished_run
    settings = FamilySettings(finetune_epochs=1)
    result = build_family(RunDirectory(out).generator, data, ClassificationTask(4), settings, output_dir=tmp_path, variations=3)
    rows, graph = result["rows"], callback.loop.graph
    archs = [Architecture.from_dict(json.loads((tmp_path / r["name"] / "architecture.json").read_text())["architecture"])
             for r in rows]
    assert len(rows) == 3 and result["diversity"] > 0
    assert all(not graph.same_shape(a, b) for i, a in enumerate(archs) for b in archs[i + 1:])  # distinct widths
    assert all(not graph.same_shape(a, callback.loop.best.arch) for a in archs)  # and not the answer's architecture
    answer = callback.record.best.macs
    for row in rows:
        assert abs(row["macs"] / answer - 1) <= 0.05 and row["reached"]  # the answer's budget
        assert 0.0 <= row["metric"] <= 1.0 and row["gate_passed"] and row["latency_ms"] > 0
        assert (tmp_path / row["name"] / "network.onnx").is_file()
    assert {"family.json", "family.csv", "family.png"} <= {p.name for p in tmp_path.iterdir()}


def test_a_network_for_each_budget_or_the_closest_when_none_fits(finished_run, tmp_path):
    out, callback, _, data = finished_run
    settings = FamilySettings(targets=(0.5, 0.25, 0.001), finetune_epochs=0)
    rows = build_family(RunDirectory(out).generator, data, ClassificationTask(4), settings)["rows"]
    prototype = callback.record.prototype.macs
    for row, fraction in zip(rows[:2], (0.5, 0.25)):
        assert row["reached"] and abs(row["macs"] / (fraction * prototype) - 1) <= 0.05, row
    assert not rows[2]["reached"] and rows[2]["macs"] < rows[1]["macs"]  # unreachable: the closest it can build


def test_a_member_at_the_answers_budget_is_the_answer_as_the_run_left_it(finished_run):
    out, callback, _, data = finished_run
    best = callback.record.best
    settings = FamilySettings(targets=(float(best.macs),), finetune_epochs=1)
    (row,) = build_family(RunDirectory(out).generator, data, ClassificationTask(4), settings)["rows"]
    assert row["macs"] == best.macs and row["epochs"] == 0  # not fine-tuned again
    assert row["metric"] == pytest.approx(best.metric, abs=1e-6)


class MacsGatedModule(SynthesisModule):
    """Logs val/full_size = 1 only for a network as large as the prototype: every candidate must fail."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__(net, ClassificationTask(4))
        self.prototype_macs = count_macs(net, TINY_SHAPE)

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        self.log("val/full_size", float(count_macs(self.net, TINY_SHAPE) >= self.prototype_macs))


def test_gate_blocks_failing_candidates_and_the_inquisitor_rolls_back(tiny_data):
    module = MacsGatedModule(cifar_resnet(depth=8, width=8, num_classes=4))
    callback = tiny_callback(Gate("val/full_size", 0.5, relative=False), cycles=3)
    quiet_trainer(callback.total_epochs, [callback]).fit(module, datamodule=tiny_data)
    record = callback.record
    assert record.prototype.gate_passed and record.best_cycle == 0
    assert all(not c.report.gate_passed and not c.accepted for c in record.cycles)
    for entry in record.cycles:  # after each failure the step is half of what the failing candidate cut
        assert entry.cut > 0 and entry.step == pytest.approx(max(0.02, entry.cut / 2), abs=1e-4)
    generator = callback.loop.generator
    assert len(generator.lineage) == 1  # nothing but the prototype was ever accepted
    passing_logits, _ = generator._passing_logits
    assert all(torch.equal(generator.channel_logits[g], passing_logits[g]) for g in passing_logits)
    assert count_macs(module.net, TINY_SHAPE) == module.prototype_macs  # the user keeps the passing prototype


class UserModule(L.LightningModule):
    """A user's own module: the network lives in ``backbone`` and knows nothing about gensynth-pl."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 4),
        )
        self.accuracy = MulticlassAccuracy(4, average="micro")

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self.backbone(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.accuracy(self.backbone(x), y)
        self.log("val_acc", self.accuracy)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=3e-3)


def test_plug_in_callbacks_synthesise_a_users_own_module(tiny_data):
    module = UserModule()
    before = count_macs(module.backbone, TINY_SHAPE)
    callback = tiny_callback(Gate("val_acc", 1.0, relative=True), network_attr="backbone")
    quiet_trainer(callback.total_epochs, [callback]).fit(module, datamodule=tiny_data)
    assert len(callback.record.cycles) == 2 and callback.loop.graph.output_layers == ["8"]
    assert count_macs(module.backbone, TINY_SHAPE) < before
    assert module.backbone[-1].out_features == 4  # the classifier's outputs are never pruned
    assert module.backbone(torch.randn(2, *TINY_SHAPE)).shape == (2, 4)


def test_misconfigured_synthesis_fails_before_training_with_the_fix(tiny_data):
    with pytest.raises(ValueError, match=r"synthesis.cycles=0"):
        GenerativeSynthesis(Gate(), cycles=0)
    callback = tiny_callback(Gate(), network_attr="backbone")
    with pytest.raises(ValueError, match=r"trainer.max_epochs=2 is too small.*max_epochs=3"):
        quiet_trainer(2, [callback]).fit(UserModule(), datamodule=tiny_data)
    with pytest.raises(AttributeError, match="network_attr"):
        quiet_trainer(callback.total_epochs, [tiny_callback(Gate(), network_attr="net")]).fit(UserModule(), datamodule=tiny_data)
    with pytest.raises(KeyError, match="gate.monitor"):
        quiet_trainer(callback.total_epochs, [tiny_callback(Gate("val/acc"), network_attr="backbone")]).fit(
            UserModule(), datamodule=tiny_data
        )


class LearningRates(L.Callback):
    """The learning rate of every optimizer step, per epoch."""

    def __init__(self) -> None:
        self.per_epoch: dict[int, list[float]] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        lr = trainer.optimizers[0].param_groups[0]["lr"]
        self.per_epoch.setdefault(trainer.current_epoch, []).append(lr)


def test_cosine_schedule_restarts_for_every_generated_network_at_the_fine_tuning_rate(tiny_resnet, tiny_data):
    module = SynthesisModule(tiny_resnet, ClassificationTask(4), scheduler=cosine_per_phase)
    callback = tiny_callback(Gate("val/acc", 1.0, relative=True), prototype_epochs=2, finetune_lr_scale=0.2)
    rates = LearningRates()
    quiet_trainer(callback.total_epochs, [callback, rates]).fit(module, datamodule=tiny_data)
    prototype = rates.per_epoch[0] + rates.per_epoch[1]  # one cosine over both prototype epochs
    assert prototype[0] == pytest.approx(0.05) and prototype == sorted(prototype, reverse=True)
    assert prototype[-1] < 0.002
    for cycle_epoch in (2, 3):  # each candidate restarts at the fine-tuning rate and decays within its own cycle
        cycle = rates.per_epoch[cycle_epoch]
        assert cycle[0] == pytest.approx(0.01) and cycle == sorted(cycle, reverse=True) and cycle[-1] < 0.002
    assert len(rates.per_epoch[2]) == len(rates.per_epoch[0])


def test_a_trained_prototype_comes_through_its_rate_0_epoch_unchanged(tiny_resnet, tiny_data):
    """prototype_epochs=0: φ's one epoch at rate 0 validates and probes it. Its batches must not re-estimate the
    normalization statistics either, so the generator's φ and φ's score are those of the network given."""
    quiet_trainer(2, []).fit(SynthesisModule(tiny_resnet, ClassificationTask(4)), datamodule=tiny_data)
    given = {name: value.clone() for name, value in tiny_resnet.state_dict().items()}
    (scores,) = quiet_trainer(1, []).validate(SynthesisModule(tiny_resnet, ClassificationTask(4)), datamodule=tiny_data,
                                              verbose=False)
    callback = tiny_callback(Gate("val/acc", 1.0, relative=True), prototype_epochs=0, cycles=1)
    quiet_trainer(callback.total_epochs, [callback]).fit(SynthesisModule(tiny_resnet, ClassificationTask(4)),
                                                        datamodule=tiny_data)
    kept = callback.loop.generator.prototype.state_dict()
    assert set(kept) == set(given) and all(torch.equal(kept[name], value) for name, value in given.items())
    assert callback.record.prototype.metric == pytest.approx(scores["val/acc"])


def test_a_log_without_a_terminal_gets_a_progress_line_per_epoch(tiny_resnet, tiny_data, capsys):
    module = SynthesisModule(tiny_resnet, ClassificationTask(4))
    callback = tiny_callback(Gate("val/acc", 1.0, relative=True))
    quiet_trainer(callback.total_epochs, [callback]).fit(module, datamodule=tiny_data)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[gensynth] epoch")]
    assert [line.split(" | ")[:2] for line in lines] == [
        ["[gensynth] epoch 1/3", "prototype"], ["[gensynth] epoch 2/3", "cycle 1"], ["[gensynth] epoch 3/3", "cycle 2"]
    ]
    assert all("val/acc" in line and "elapsed" in line and "eta" in line for line in lines)


def test_the_run_says_where_the_macs_are(finished_run):
    out, callback, _, _ = finished_run
    rows = json.loads((out / "mac_map.json").read_text())
    partition = [r for r in rows if r["kind"] in ("group", "fixed", "other")]  # blocks overlap their groups
    assert sum(r["share"] for r in partition) == pytest.approx(1.0)
    assert sum(r["phi_macs"] for r in partition) == callback.record.prototype.macs
    assert sum(r["answer_macs"] for r in partition) == callback.record.best.macs
    groups = [r for r in rows if r["kind"] == "group"]
    assert all(r["can_shrink"] for r in groups) and any(r["answer_macs"] < r["phi_macs"] for r in groups)
    assert [r["kind"] for r in rows if r["name"] == "fc"] == ["fixed"]  # the classifier's outputs cannot shrink
