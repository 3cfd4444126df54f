"""Structured-config schemas (Hydra ConfigStore): a typo or a wrong type in the synthesis or gate
settings fails at composition, with Hydra's own message naming the key, before anything runs.

The schemas hold types only; the values live in conf/ (one place for each default)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


@dataclass
class GateConfig:
    _target_: str = "gensynth_pl.gates.Gate"
    monitor: str = MISSING
    threshold: float = MISSING
    relative: bool = MISSING
    higher_is_better: bool = MISSING


@dataclass
class InquisitorConfig:
    _target_: str = "gensynth_pl.inquisitor.Inquisitor"
    step: float = MISSING
    min_step: float = MISSING
    max_step: float = MISSING
    growth: float = MISSING
    comfortable_margin: float = MISSING
    sharpness: float = MISSING
    memory: float = MISSING
    bins: int = MISSING
    max_responses: int = MISSING


@dataclass
class SynthesisConfig:
    _target_: str = "gensynth_pl.callbacks.GenerativeSynthesis"
    cycles: int = MISSING
    epochs_per_cycle: int = MISSING
    prototype_epochs: int = MISSING
    probe_batches: int = MISSING
    seed: int = MISSING
    temperature: float = MISSING
    min_channels: float = MISSING
    channel_multiple: int = MISSING
    finetune_lr_scale: float = MISSING
    export_onnx: bool = MISSING
    inquisitor: InquisitorConfig = field(default_factory=InquisitorConfig)


@dataclass
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


_store = ConfigStore.instance()
_store.store(name="train_schema", node=TrainConfig)
_store.store(group="synthesis", name="synthesis_schema", node=SynthesisConfig)
