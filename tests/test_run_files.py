"""Run files: named in one place, written atomically, read back as typed records."""
import json

import pytest

from gensynth_pl.metrics import NetworkReport
from gensynth_pl.record import CycleEntry, SynthesisRecord
from gensynth_pl.referee import Reason
from gensynth_pl.rundir import RunDirectory, write_atomic, write_text_atomic


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "summary.json"
    write_text_atomic(target, '{"complete": true}')

    class Interrupted(Exception):
        pass

    def half_written(temporary):
        temporary.write_text('{"compl')
        raise Interrupted

    with pytest.raises(Interrupted):
        write_atomic(target, half_written)
    assert json.loads(target.read_text()) == {"complete": True}
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_record_round_trips_through_summary_json(tmp_path):
    report = NetworkReport(params=10, macs=100, metric=0.5, netscore=1.0, information_density=2.0, gate_passed=True)
    entry = CycleEntry(cycle=1, seed=3, report=report, reason=Reason.PASSED, step=0.3, seconds=1.5, widths={"conv1": 4},
                       removed_blocks=["layer1.0"], redraws=2)
    record = SynthesisRecord("classification", {"metric": "val/acc"}, report, report, 1, [entry])
    files = RunDirectory(tmp_path)
    record.write(files.summary)
    written = json.loads(files.summary.read_text())
    assert {"cycle", "seed", "params", "macs", "metric", "netscore", "gate_passed", "accepted", "seconds"} <= set(written["cycles"][0])
    assert written["any_candidate_passed"] and SynthesisRecord.load(files.summary) == record
    with pytest.raises(FileNotFoundError, match="summary.json of a synthesis run"):
        SynthesisRecord.load(tmp_path / "missing" / "summary.json")
