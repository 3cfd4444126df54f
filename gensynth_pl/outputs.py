"""What a run writes into its directory (summary.json, the generator file, best/, the Pareto plot and ONNX export),
rewritten after every phase so that an interrupted run loses nothing."""
from __future__ import annotations

import json

from gensynth_pl.export import export_onnx, save_network
from gensynth_pl.generator import Generator
from gensynth_pl.inquisitor import Inquisitor
from gensynth_pl.record import SynthesisRecord
from gensynth_pl.referee import Choice, Referee
from gensynth_pl.report import pareto_plot
from gensynth_pl.rundir import ONNX_FILE, RunDirectory, write_text_atomic
from gensynth_pl.timing import timed


@timed("save")
def save_run(files: RunDirectory, record: SynthesisRecord, generator: Generator, inquisitor: Inquisitor,
             referee: Referee, best_changed: bool) -> None:
    """The record, the generator (with what networks built from it later are judged and built with: every condition,
    the recovery the run measured, θ_I, the answer) and, when the answer changed, best/."""
    record.write(files.summary)
    best = referee.best
    extra = {"gate": referee.requirements.to_dict(), "recoveries": [list(pair) for pair in referee.recoveries], "task": record.task,
             "inquisitor": inquisitor.state_dict(), "prototype": record.prototype.to_dict(),
             "best": record.best.to_dict(), "best_arch": best.arch.to_dict()}
    generator.save(files.generator, extra=extra)
    if best_changed:
        save_network(files.best, best.network, best.arch, generator.graph, generator.prototype_config,
                     best.report.to_dict())


def finish_run(files: RunDirectory, record: SynthesisRecord, best: Choice, input_shape: tuple[int, ...],
               onnx: bool, mac_rows: list[dict]) -> None:
    """After the last phase: the Pareto plot, where the MACs are (mac_map.json) and the answer's ONNX export."""
    pareto_plot(record, files.pareto)
    write_text_atomic(files.mac_map, json.dumps(mac_rows, indent=2))
    if onnx:
        export_onnx(best.network, input_shape, files.best / ONNX_FILE)
