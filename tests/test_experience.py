"""The user's stack: config errors at composition, multirun sweeps with offline W&B runs, the CLIs."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from test_train_cli import ROOT, TINY, run_train
from wandb_reader import history, read_records

BIN = Path(sys.executable).parent


@pytest.mark.parametrize(
    "override, named",
    [
        ("synthesis.cycels=3", "cycels"),
        ("synthesis.cycles=many", "synthesis.cycles"),
        ("gate.threshold=high", "gate.threshold"),
        ("gate.thresold=0.5", "thresold"),
        ("data=cifar100", "data/cifar100"),
        ("logger=tensorboardx", "logger/tensorboardx"),
    ],
)
def test_config_mistakes_fail_at_composition_naming_the_key(override, named):
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        with pytest.raises((HydraException, OmegaConfBaseException)) as error:
            compose("train", overrides=[override])
    assert named in str(error.value)


def test_launcher_configs_compose_for_joblib_and_slurm():
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        local = compose("train", overrides=["hydra/launcher=local_parallel"], return_hydra_config=True)
        slurm = compose("train", overrides=["hydra/launcher=slurm"], return_hydra_config=True)
    assert local.hydra.launcher._target_.endswith("JoblibLauncher") and local.hydra.launcher.n_jobs == 2
    assert slurm.hydra.launcher._target_.endswith("SlurmLauncher") and slurm.hydra.launcher.gpus_per_node == 1


def test_optuna_sweeper_config_searches_the_synthesis_settings():
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["hydra/sweeper=synthesis_search"], return_hydra_config=True)
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper") and sweeper.direction == "maximize"
    assert {"synthesis.inquisitor.step", "synthesis.recovery_allowance", "synthesis.inquisitor.importance"} <= set(sweeper.params)


@pytest.mark.slow
def test_optuna_sweep_over_requirements_runs_its_trials(tmp_path):
    result = sweep(tmp_path, "hydra/sweeper=synthesis_search", "hydra.sweeper.n_trials=2", "gate.max_macs=0.6", "logger=none")
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(list(tmp_path.glob("*/summary.json"))) == 2
    assert (tmp_path / "optimization_results.yaml").is_file()


def sweep(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    command = [sys.executable, str(ROOT / "train.py"), "-m", f"hydra.sweep.dir={tmp_path}", *TINY, *overrides]
    env = {**os.environ, "WANDB_MODE": "offline"}
    return subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=900, env=env)


@pytest.mark.slow
def test_multirun_sweep_gives_each_job_its_own_dir_and_offline_wandb_run(tmp_path):
    result = sweep(tmp_path, "synthesis.seed=0,1", "logger=wandb", "synthesis.family.targets=[0.5]",
                   "synthesis.family.finetune_epochs=0")
    assert result.returncode == 0, result.stderr[-3000:]
    run_ids = set()
    for job in ("0", "1"):
        summary = json.loads((tmp_path / job / "summary.json").read_text())
        assert len(summary["cycles"]) == 2
        (run_dir,) = (tmp_path / job / "wandb").glob("offline-run-*")
        run_ids.add(run_dir.name.rsplit("-", 1)[1])
        rows = history(run_dir)
        keys = set().union(*rows)
        assert {"cycle", "synthesis/params", "synthesis/macs", "synthesis/metric", "synthesis/netscore",
                "synthesis/information_density", "synthesis/gate_passed", "synthesis/step"} <= keys
        assert sorted(r["cycle"] for r in rows if "synthesis/macs" in r) == [0, 1, 2]
        assert any(k.startswith("synthesis/architectures") for k in keys) and any(k.startswith("synthesis/pareto") for k in keys)
        assert any(k.startswith("family/table") for k in keys)  # the family the run ends with
        tables = (run_dir / "files" / "media" / "table").rglob("architectures_*.json")  # architectures_<step>_<hash>.table.json
        table = json.loads(max(tables, key=lambda path: int(path.name.split("_")[1])).read_text())
        assert table["columns"][:3] == ["cycle", "seed", "accepted"] and len(table["data"]) == 2
        configs = [r for r in read_records(next(run_dir.glob("run-*.wandb"))) if r.WhichOneof("record_type") == "config"]
        assert any(item.key == "synthesis" for r in configs for item in r.config.update)  # the resolved Hydra config
        artifacts = [r for r in read_records(next(run_dir.glob("run-*.wandb"))) if r.WhichOneof("record_type") == "artifact"]
        assert {a.artifact.type for a in artifacts} >= {"model", "generator"}
    assert len(run_ids) == 2


@pytest.mark.slow
def test_parallel_local_launcher_runs_a_sweep(tmp_path):
    result = sweep(tmp_path, "hydra/launcher=local_parallel", "synthesis.seed=0,1", "logger=none")
    assert result.returncode == 0, result.stderr[-3000:]
    assert all((tmp_path / job / "summary.json").is_file() for job in ("0", "1"))


@pytest.mark.slow
def test_generate_and_export_clis_on_a_finished_run(tmp_path):
    run = tmp_path / "run"
    assert run_train(run, *TINY, "logger=none").returncode == 0
    generated = subprocess.run(
        [str(BIN / "gensynth-generate"), f"run_dir={run}", "num_networks=4", f"hydra.run.dir={tmp_path / 'gen'}"],
        capture_output=True, text=True, timeout=600,
    )
    assert generated.returncode == 0, generated.stderr[-3000:]
    family = json.loads((tmp_path / "gen" / "family.json").read_text())
    rows = family["rows"]
    assert all(isinstance(r["gate_passed"], bool) for r in rows)
    assert len({json.dumps([r["widths"], r["removed_blocks"]], sort_keys=True) for r in rows}) == len(rows)  # distinct
    assert len(rows) == 4 or "4 were asked for" in family["shortfall"]  # four distinct, or the shortfall said
    assert "members meet every condition" in generated.stdout and (tmp_path / "gen" / "family.csv").is_file()
    budgets = subprocess.run(
        [str(BIN / "gensynth-generate"), f"run_dir={run}", "targets=[0.5,0.3]", "finetune_epochs=0",
         f"hydra.run.dir={tmp_path / 'budgets'}"], capture_output=True, text=True, timeout=600,
    )
    assert budgets.returncode == 0, budgets.stderr[-3000:]
    prototype = json.loads((run / "summary.json").read_text())["prototype"]["macs"]
    for row, fraction in zip(json.loads((tmp_path / "budgets" / "family.json").read_text())["rows"], (0.5, 0.3)):
        assert abs(row["macs"] / (fraction * prototype) - 1) <= 0.05

    network_dir = tmp_path / "gen" / rows[-1]["name"] if rows else run / "best"
    exported = subprocess.run(
        [str(BIN / "gensynth-export"), f"network_dir={network_dir}", "batch_sizes=[1,8]", "repeats=3", "threads=1"],
        capture_output=True, text=True, timeout=600,
    )
    assert exported.returncode == 0, exported.stderr[-3000:]
    report = json.loads((network_dir / "latency.json").read_text())
    assert report["max_abs_difference"] < 1e-4
    assert {(r["runtime"], r["batch"]) for r in report["latency"]} == {(rt, b) for rt in ("pytorch", "onnxruntime") for b in (1, 8)}
