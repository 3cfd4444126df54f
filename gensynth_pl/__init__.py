"""gensynth-pl: generative synthesis of efficient networks for PyTorch Lightning."""
from gensynth_pl import config  # registers the structured-config schemas with Hydra's ConfigStore
from gensynth_pl.callbacks import GenerativeSynthesis
from gensynth_pl.export import export_onnx, load_network, save_network
from gensynth_pl.gates import Gate, Requirements
from gensynth_pl.generator import Generator, KeepLogits
from gensynth_pl.graph import Architecture, NetworkGraph
from gensynth_pl.importance import IMPORTANCES, Importance
from gensynth_pl.inquisitor import Inquisitor
from gensynth_pl.loop import SynthesisLoop
from gensynth_pl.proposer import Proposal, Proposer
from gensynth_pl.referee import Decision, Reason, Referee
from gensynth_pl.settings import SynthesisSettings
from gensynth_pl.metrics import NetworkReport, count_macs, count_params, information_density, netscore
from gensynth_pl.module import SynthesisModule
from gensynth_pl.record import CycleEntry, SynthesisRecord
from gensynth_pl.schedule import Schedule, training_phase

__all__ = [
    "IMPORTANCES",
    "Architecture",
    "CycleEntry",
    "Decision",
    "Gate",
    "GenerativeSynthesis",
    "Generator",
    "Importance",
    "Inquisitor",
    "KeepLogits",
    "NetworkGraph",
    "NetworkReport",
    "Proposal",
    "Proposer",
    "Reason",
    "Referee",
    "Requirements",
    "Schedule",
    "SynthesisLoop",
    "SynthesisModule",
    "SynthesisRecord",
    "SynthesisSettings",
    "count_macs",
    "count_params",
    "export_onnx",
    "information_density",
    "load_network",
    "netscore",
    "save_network",
    "training_phase",
]
