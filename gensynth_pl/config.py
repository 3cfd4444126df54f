"""Structured-config schemas (Hydra ConfigStore), generated from the Python signatures.

The one source of every default is the signature of the class a config node instantiates
(``GenerativeSynthesis``, ``Inquisitor``, ``Gate``, ``NetScoreUnits``): the schemas copy its parameters,
types and defaults, so the YAML in conf/ only sets what differs (an experiment, the seed). A typo or a
wrong type in the synthesis or gate settings fails at composition, with Hydra's message naming the key.
``python train.py --cfg job`` prints every value a run uses.
"""
from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from dataclasses import field, make_dataclass
from typing import Any, Dict, List, Optional, Union

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from gensynth_pl.callbacks import GenerativeSynthesis
from gensynth_pl.family import FamilySettings
from gensynth_pl.gates import Requirements
from gensynth_pl.inquisitor import Inquisitor
from gensynth_pl.latency import LatencyMeter
from gensynth_pl.metrics import NetScoreUnits

_PLAIN = (int, float, bool, str)


def _config_type(annotation: Any) -> Any:
    """The closest type OmegaConf can check: plain types, Optional, lists and dicts of them; Any otherwise."""
    if annotation in _PLAIN:
        return annotation
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1 and len(args) == 2:
            inner = _config_type(rest[0])
            return Any if inner is Any else Optional[inner]
        return Any
    if origin in (list, tuple) and args and args[0] in _PLAIN and (len(args) == 1 or args[1] is Ellipsis):
        return List[args[0]]
    if origin is dict:
        return Dict[str, Any]
    return Any


def schema(target: type, exclude: tuple[str, ...] = (), nested: dict[str, type] | None = None) -> type:
    """A dataclass with ``_target_`` and one field per parameter of ``target``: its type and its default.
    ``nested`` gives parameters whose config is another schema (instantiated recursively)."""
    nested = nested or {}
    hints = typing.get_type_hints(target if dataclasses.is_dataclass(target) else target.__init__)
    fields = [("_target_", str, field(default=f"{target.__module__}.{target.__qualname__}"))]
    for name, parameter in inspect.signature(target).parameters.items():
        if name in exclude or parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        if name in nested:
            fields.append((name, nested[name], field(default_factory=nested[name])))
            continue
        default = MISSING if parameter.default is parameter.empty else parameter.default
        fields.append((name, _config_type(hints.get(name, Any)), field(default=default)))
    return make_dataclass(f"{target.__name__}Config", fields)


GateConfig = schema(Requirements, nested={"latency": schema(LatencyMeter)})
InquisitorConfig = schema(Inquisitor)
NetScoreUnitsConfig = schema(NetScoreUnits)
FamilyConfig = schema(FamilySettings)
SynthesisConfig = schema(
    GenerativeSynthesis,
    exclude=("gate", "prototype_config"),  # given by train.py: the top-level gate node and the model's recipe
    nested={"inquisitor": InquisitorConfig, "netscore_units": NetScoreUnitsConfig, "family": FamilyConfig},
)


@dataclasses.dataclass
class TrainConfig:
    """The primary config of train.py; groups without a schema stay free-form (Any)."""

    task: Any = None
    data: Any = None
    model: Any = None
    synthesis: SynthesisConfig = field(default_factory=SynthesisConfig)
    gate: GateConfig = field(default_factory=GateConfig)
    trainer: Any = None
    logger: Any = None
    callbacks: Any = None
    optimizer: Any = None
    scheduler: Any = None
    seed: int = MISSING
    ckpt_path: Optional[str] = None
    output_dir: Optional[str] = None
    prototype_weights: Optional[str] = None


_store = ConfigStore.instance()
_store.store(name="train_schema", node=TrainConfig)
_store.store(group="synthesis", name="synthesis_schema", node=SynthesisConfig)
