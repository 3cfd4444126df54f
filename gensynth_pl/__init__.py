"""gensynth-pl: generative synthesis of efficient networks for PyTorch Lightning."""
from gensynth_pl import config  # registers the structured-config schemas with Hydra's ConfigStore
from gensynth_pl.callbacks import GenerativeSynthesis
from gensynth_pl.export import export_onnx, load_network, save_network
from gensynth_pl.gates import Gate
from gensynth_pl.generator import Generator, GeneratorDelta
from gensynth_pl.graph import Architecture, NetworkGraph
from gensynth_pl.inquisitor import Inquisitor
from gensynth_pl.metrics import NetworkReport, count_macs, count_params, information_density, netscore
from gensynth_pl.module import SynthesisModule

__all__ = [
    "Architecture",
    "Gate",
    "GenerativeSynthesis",
    "Generator",
    "GeneratorDelta",
    "Inquisitor",
    "NetworkGraph",
    "NetworkReport",
    "SynthesisModule",
    "count_macs",
    "count_params",
    "export_onnx",
    "information_density",
    "load_network",
    "netscore",
    "save_network",
]
