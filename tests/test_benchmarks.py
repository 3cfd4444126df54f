"""Smoke runs of every benchmark on generated data, checking the numbers they report."""
import json
import math
import shutil

import pytest
import torch

from benchmarks import gpu_scale, inference_speed, recovery, synthesis_overhead, synthesis_quality, task_runs
from benchmarks.baselines import MAC_TOLERANCE, reinitialised
from benchmarks.common import across_seeds
from gensynth_pl import count_macs, netscore
from gensynth_pl.models import cifar_resnet
from gensynth_pl.timing import BOOKKEEPING, DISTILLATION, PROBE_AND_UPDATE

TINY = ["--experiment", "null", "--latency-repeats", "2", "data.train_size=64", "data.val_size=64", "data.test_size=64", "data.image_size=16",
        "data.batch_size=32", "data.noise=0.5", "model.depth=8", "model.width=16", "synthesis.prototype_epochs=1",
        "synthesis.cycles=2", "synthesis.epochs_per_cycle=1", "synthesis.probe_batches=2", "synthesis.inquisitor.step=0.4",
        "gate.threshold=1.0", "synthesis.channel_multiple=1", "synthesis.polish_epochs=1"]
LATENCY_KEYS = {"pytorch_b1", "pytorch_b64", "onnxruntime_b1", "onnxruntime_b64"}


@pytest.fixture(scope="module")
def quality(tmp_path_factory):
    output = tmp_path_factory.mktemp("quality") / "quality.json"
    result = synthesis_quality.main([*TINY, "--output", str(output)])
    return output, result


def rows_by_method(result: dict) -> dict:
    return {row["method"]: row for row in result["rows"]}


def test_quality_compares_every_method_at_the_generated_networks_macs(quality):
    output, result = quality
    written = json.loads(output.read_text())
    rows = rows_by_method(written)
    assert list(rows) == ["prototype", "gensynth", "l1_pruning", "l1_pruning_kd", "random_pruning", "width_scaled",
                          "width_scaled_kd", "gensynth_scratch_kd", "modelpruning_l1"]
    ours = rows["gensynth"]
    assert ours["macs"] == written["target_macs"] == written["synthesis"]["best"]["macs"]
    assert ours["macs"] < rows["prototype"]["macs"]  # the gate accepts everything, so the synthesis compressed
    for method in ("l1_pruning", "random_pruning", "width_scaled"):
        assert abs(rows[method]["macs"] - ours["macs"]) <= MAC_TOLERANCE * ours["macs"], method
    assert 0 < rows["l1_pruning"]["pruning_ratio"] < 0.95 and 0 < rows["width_scaled"]["width"] < 1
    for row in rows.values():
        assert {"params", "macs", "val_acc", "test_acc", "epochs", "netscore", "information_density", "latency_ms",
                "wall_s"} <= set(row)
        assert 0 <= row["test_acc"] <= 1  # on the data's test split, for every method
        assert set(row["latency_ms"]) == LATENCY_KEYS and all(v > 0 for v in row["latency_ms"].values())
        assert 0 <= row["val_acc"] <= 1 and row["netscore"] == pytest.approx(netscore(row["val_acc"], row["params"], row["macs"]))
        assert row["method"] in written["table"]
    assert ours["test_acc"] == written["synthesis"]["best"]["test"]["acc"]
    assert rows["l1_pruning"]["epochs"] == ours["epochs"] == 3  # 2 cycles of 1 epoch + a 1-epoch polish
    assert rows["width_scaled"]["epochs"] == rows["prototype"]["epochs"] + ours["epochs"]
    scratch = rows["gensynth_scratch_kd"]  # our architecture, freshly initialised, trained as the width-scaled network
    assert (scratch["macs"], scratch["params"], scratch["epochs"]) == (ours["macs"], ours["params"], rows["width_scaled"]["epochs"])


def test_reinitialised_keeps_the_architecture_and_draws_new_seeded_weights():
    trained = cifar_resnet(depth=8, width=8, num_classes=4).eval()
    first, again = reinitialised(trained, seed=3), reinitialised(trained, seed=3)
    assert first.training and not trained.training
    shapes = [p.shape for p in trained.parameters()]
    assert [p.shape for p in first.parameters()] == shapes
    convs = [(a, b) for a, b in zip(trained.parameters(), first.parameters()) if a.dim() == 4]
    assert convs and not any(torch.equal(a, b) for a, b in convs)
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), again.state_dict().values()))


def test_unstructured_pruning_keeps_the_dense_macs_at_the_generated_parameter_count(quality):
    rows = rows_by_method(quality[1])
    pruned, ours, prototype = rows["modelpruning_l1"], rows["gensynth"], rows["prototype"]
    assert pruned["macs"] == prototype["macs"] and pruned["dense_params"] == prototype["params"]
    assert pruned["params"] < prototype["params"]
    assert abs(pruned["params"] - ours["params"]) <= 0.02 * prototype["params"]  # non-zero weights match ours


def test_quality_run_records_the_overhead_of_each_phase(quality):
    overhead = quality[1]["overhead"]
    assert [row["phase"] for row in overhead] == ["cycle 1", "cycle 2", "polish"]
    for row in overhead:
        parts = sum(row[c] for c in (*PROBE_AND_UPDATE, *DISTILLATION, *BOOKKEEPING))
        assert 0 < row["distill"] and row["probe_and_update_s"] <= parts < row["wall_s"]
        assert row["share"] == pytest.approx(row["probe_and_update_s"] / row["wall_s"])
        assert row["share_with_distillation"] == pytest.approx((row["probe_and_update_s"] + row["distill"]) / row["wall_s"])
    assert all(row["probe"] > 0 for row in overhead[:2]) and overhead[2]["probe"] == 0  # the polish is not probed
    assert overhead[0]["propose"] > 0 and overhead[0]["build"] > 0  # cycle 1 generates cycle 2's candidate
    assert overhead[1]["propose"] == overhead[1]["build"] == 0  # the last cycle generates nothing: the polish follows


def test_overhead_report_runs_its_own_synthesis_and_reads_a_quality_run(quality, tmp_path):
    own = synthesis_overhead.main([*TINY, "--output", str(tmp_path / "overhead.json")])
    cycles = [row for row in own["overhead"] if row["phase"] != "polish"]
    assert len(cycles) == 2 and all(row["probe"] > 0 for row in cycles)
    total = sum(r["probe_and_update_s"] for r in cycles) / sum(r["wall_s"] for r in cycles)
    assert f"{100 * total:.2f}%" in own["table"].splitlines()[-1]
    read = synthesis_overhead.main(["--from-json", str(quality[0]), "--output", str(tmp_path / "read.json")])
    assert read["overhead"] == quality[1]["overhead"]


def test_inference_speed_measures_the_lineage_against_the_prototype(quality, tmp_path):
    run_dir = quality[0].with_suffix("") / "gensynth_run"
    result = inference_speed.main([str(run_dir), "--repeats", "2", "--rounds", "2", "--output", str(tmp_path / "speed.json")])
    rows = result["rows"]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert rows[0]["network"].startswith("prototype") and rows[0]["macs"] == summary["prototype"]["macs"]
    assert len(rows) == 1 + sum(c["accepted"] for c in summary["cycles"])
    best = [row for row in rows if row["network"].endswith("(best)")]
    assert len(best) == 1 and best[0]["macs"] == summary["best"]["macs"]
    for row in rows:
        assert row["mac_reduction"] == pytest.approx(rows[0]["macs"] / row["macs"])
        for setting, speedup in row["speedup"].items():
            assert speedup == pytest.approx(rows[0]["latency_ms"][setting] / row["latency_ms"][setting])
            assert row["speedup_per_mac_reduction"][setting] == pytest.approx(speedup / row["mac_reduction"])
    assert math.isclose(rows[0]["speedup"]["pytorch_b64"], 1.0)


def test_resumed_quality_run_measures_only_the_rows_it_lacks(quality, tmp_path):
    output, result = quality
    shutil.copytree(output.with_suffix(""), tmp_path / "moved")
    interrupted = {**json.loads(output.read_text()), "rows": result["rows"][:-3]}  # stopped after width_scaled
    (tmp_path / "moved.json").write_text(json.dumps(interrupted))
    with pytest.raises(ValueError, match="other settings"):
        synthesis_quality.main([*TINY, "gate.threshold=0.5", "--output", str(tmp_path / "moved.json"), "--resume"])
    resumed = synthesis_quality.main([*TINY, "--output", str(tmp_path / "moved.json"), "--resume"])
    assert resumed["rows"][:-3] == result["rows"][:-3]  # kept as measured, not run again
    assert [row["method"] for row in resumed["rows"][-3:]] == ["width_scaled_kd", "gensynth_scratch_kd", "modelpruning_l1"]
    for new, first in zip(resumed["rows"][-3:], result["rows"][-3:]):
        assert new["macs"] == first["macs"] and new["val_acc"] == pytest.approx(first["val_acc"], abs=0.05)


def test_a_resumed_run_measures_only_the_methods_asked_for(quality, tmp_path):
    output, result = quality
    shutil.copytree(output.with_suffix(""), tmp_path / "moved")
    synthesized = {**json.loads(output.read_text()), "rows": result["rows"][:2]}  # φ and ours only
    (tmp_path / "moved.json").write_text(json.dumps(synthesized))
    with pytest.raises(ValueError, match="no such method"):
        synthesis_quality.main([*TINY, "--output", str(tmp_path / "moved.json"), "--resume", "--methods", "width_kd"])
    resumed = synthesis_quality.main([*TINY, "--output", str(tmp_path / "moved.json"), "--resume", "--methods", "width_scaled_kd"])
    assert [row["method"] for row in resumed["rows"]] == ["prototype", "gensynth", "width_scaled_kd"]


def test_gpu_scale_runs_end_to_end_on_cpu_with_a_matched_mobilenet(tmp_path):
    result = gpu_scale.main(["--tiny", "--latency-repeats", "2", "--output", str(tmp_path / "gpu.json")])
    rows = rows_by_method(result)
    assert result["config"]["trainer"]["accelerator"] == "cpu" and "mobilenet_v2" in rows and "width_scaled" in rows
    target = rows["gensynth"]["macs"]
    assert abs(rows["mobilenet_v2"]["macs"] - target) <= MAC_TOLERANCE * target


def test_width_scaled_resnet_and_cifar_mobilenet_have_the_requested_shape():
    network = cifar_resnet(20, 10, 16, stage_widths=(5, 10, 20))
    assert network.conv1.out_channels == 5 and network.layer3[0].conv2.out_channels == 20 and network.fc.in_features == 20
    assert count_macs(network, (3, 32, 32)) < count_macs(cifar_resnet(20), (3, 32, 32))
    mobilenet = gpu_scale.cifar_mobilenet_v2(0.5).eval()
    assert mobilenet(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    assert mobilenet.features[0][0].stride == (1, 1)


def test_task_runs_compare_segmentation_and_detection_prototypes_with_their_best_networks(tmp_path):
    tiny = ["logger=none", "callbacks=none", "trainer.enable_progress_bar=false", "data.train_size=96", "data.noise=0.1",
            "data.val_size=16", "synthesis.prototype_epochs=1", "synthesis.cycles=1", "synthesis.probe_batches=2",
            "synthesis.inquisitor.step=0.4", "gate.threshold=1.0"]
    result = task_runs.main(["--synthetic", "--output", str(tmp_path / "tasks.json"), "--override", *tiny])
    runs = {run["task"]: run for run in result["runs"]}
    assert runs["segmentation"]["monitor"] == "val/miou" and runs["detection"]["monitor"] == "val/map_50"
    for task, run in runs.items():
        summary = json.loads((tmp_path / "tasks" / task / "summary.json").read_text())
        assert run["best"] == summary["best"] and run["prototype"] == summary["prototype"]
        assert run["best"]["macs"] < run["prototype"]["macs"] and run["best_cycle"] == 1 and run["cycles_accepted"] == 1
        assert run["best"]["netscore"] == pytest.approx(netscore(run["best"]["metric"], run["best"]["params"], run["best"]["macs"]))
    assert json.loads((tmp_path / "tasks.json").read_text())["table"] == result["table"]
    assert len(result["table"].splitlines()) == 6  # header, rule, prototype and best of each task


def test_seeds_are_an_axis_each_seed_its_own_run_and_the_table_mean_and_spread(tmp_path):
    seen = []

    def measure(overrides, output):  # a comparison per seed: φ at 100 MACs, ours at 40 or 50
        seen.append((overrides, output.name))
        ours = 40 if overrides == ["seed=0"] else 50
        return {"rows": [{"method": "prototype", "macs": 100, "val_acc": 0.80, "test_acc": 0.79},
                         {"method": "gensynth", "macs": ours, "val_acc": 0.78 + ours / 1000, "test_acc": None}]}

    result = across_seeds(tmp_path / "quality.json", 2, measure)
    assert seen == [(["seed=0"], "quality_seed0.json"), (["seed=1"], "quality_seed1.json")]
    ours = next(r for r in result["rows"] if r["method"] == "gensynth")
    assert ours["seeds"] == 2 and ours["reduction_mean"] == pytest.approx(2.25)  # 2.5x and 2.0x
    assert ours["reduction_std"] == pytest.approx(0.3536, abs=1e-4) and ours["val_acc_mean"] == pytest.approx(0.825)
    assert ours["test_acc_mean"] is None and "± 0.35" in result["table"]
    assert json.loads((tmp_path / "quality.json").read_text())["seeds"] == [0, 1]
    assert across_seeds(tmp_path / "one.json", 1, lambda overrides, output: {"overrides": overrides})["overrides"] == []


def test_recovery_estimates_are_scored_on_what_each_candidate_reached(tmp_path):
    cycle = {"epochs": 2, "reason": "passed", "accepted": True, "cut": 0.3}
    summary = {"gate": {"metric": "val/acc", "bound": 0.80, "higher_is_better": True}, "prototype": {"metric": 0.90},
               "cycles": [{**cycle, "cycle": 1, "first_metric": 0.80, "metric": 0.86},    # drop 0.10, rise 0.06
                          {**cycle, "cycle": 2, "first_metric": 0.76, "metric": 0.82},    # drop 0.10, rise 0.06: passes
                          {**cycle, "cycle": 3, "first_metric": 0.70, "metric": 0.72,     # drop 0.12, rise 0.02: fails
                           "reason": "rolled back", "accepted": False}]}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    result = recovery.main([str(tmp_path), "--allowance", "1.0", "--output", str(tmp_path / "recovery.json")])
    rows = {row["estimate"]: row for row in result["rows"]}
    assert rows["none"]["candidates"] == 2 and rows["none"]["mae"] == pytest.approx((0.06 + 0.02) / 2)
    assert rows["first_cycle"]["mae"] == pytest.approx((0.0 + 0.04) / 2)
    assert rows["first_cycle_by_drop"]["mae"] == pytest.approx((0.0 + abs(0.6 * 0.12 - 0.02)) / 2)
    assert rows["running_median"]["mae"] == pytest.approx((0.0 + 0.04) / 2)
    assert rows["prototype_curve"]["candidates"] == 0  # no CSV log: φ was not trained in this run
    # accepting cycle 2 (0.76 + 0.06 >= 0.80) and cycle 3 (0.70 + 0.06 < 0.80: rejected) agrees with both outcomes;
    # without an estimate cycle 2 is wrongly rejected
    assert rows["first_cycle"]["agreement"] == 1.0 and rows["none"]["agreement"] == 0.5
