"""The README's examples run as written."""
import json
import re
from pathlib import Path

import pytest

from gensynth_pl.rundir import RunDirectory

README = Path(__file__).resolve().parents[1] / "README.md"


def python_block_after(heading: str) -> str:
    section = README.read_text().split(heading, 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.slow
def test_plug_in_example_runs_and_writes_a_run_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(python_block_after("## Plug-in use"), "README-plug-in", "exec"), {})
    summary = json.loads((tmp_path / "gensynth_run" / "summary.json").read_text())
    assert len(summary["cycles"]) == 4 and summary["prototype"]["macs"] > 0
    assert RunDirectory(tmp_path / "gensynth_run").generator.is_file()
