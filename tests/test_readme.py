"""The README's examples run as written."""
import functools
import json
import re
from pathlib import Path

import pytest

import gensynth_pl.data
from gensynth_pl.data import SyntheticDataModule
from gensynth_pl.rundir import WEIGHTS_FILE, RunDirectory

README = Path(__file__).resolve().parents[1] / "README.md"


def python_block_after(heading: str) -> str:
    section = README.read_text().split(heading, 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def run_plug_in_example(directory: Path) -> dict:
    """Execute the README's plug-in example in ``directory``; its summary.json, after checking the run directory."""
    exec(compile(python_block_after("## Plug-in use"), "README-plug-in", "exec"), {})
    summary = json.loads((directory / "gensynth_run" / "summary.json").read_text())
    # its 4 cycles, or more when early rejection frees epochs for another (on the small data it depends on the draws)
    assert len(summary["cycles"]) >= 4 and summary["prototype"]["macs"] > 0
    run = RunDirectory(directory / "gensynth_run")
    assert run.generator.is_file() and (run.best / WEIGHTS_FILE).is_file()
    return summary


def test_plug_in_example_runs_on_smaller_data(tmp_path, monkeypatch):
    """The example's code as written, on a smaller generated data set so that it fits the default suite."""
    monkeypatch.chdir(tmp_path)
    small = functools.partial(SyntheticDataModule, image_size=8, train_size=64, val_size=32, batch_size=32)
    monkeypatch.setattr(gensynth_pl.data, "SyntheticDataModule", small)
    summary = run_plug_in_example(tmp_path)
    assert summary["best"]["macs"] <= summary["prototype"]["macs"]


@pytest.mark.slow
def test_plug_in_example_runs_and_writes_a_run_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_plug_in_example(tmp_path)
