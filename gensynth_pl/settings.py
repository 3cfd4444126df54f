"""The synthesis settings as one frozen object: the one source of their defaults and of their checks.

``GenerativeSynthesis`` takes them as keyword arguments (its signature's defaults are these, and the Hydra
schema is generated from that signature); ``SynthesisLoop`` takes the object, or the same keywords.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from gensynth_pl.costs import CostFactory, resolve_costs
from gensynth_pl.distillation import check_distillation_settings
from gensynth_pl.metrics import NetScoreUnits


@dataclass(frozen=True)
class SynthesisSettings:
    """How the generator samples (``seed``, ``temperature``, ``min_channels`` kept of every group, widths rounded to
    multiples of ``channel_multiple``), what a channel costs (``cost``: ``macs``, ``latency`` or a factory, see
    gensynth_pl.costs), how the inquisitor probes (``probe_batches``), how candidates are judged
    (``recovery_allowance``: the share of the measured recovery an intermediate candidate may be below the bound;
    ``early_reject_margin``: reject after one epoch when even the recovery leaves it this far below; None: never),
    distillation from φ (``distill_weight``, 0: off; ``distill_temperature``; on every ``distill_every``-th batch),
    whether the answer is exported to ONNX, and NetScore's units."""

    seed: int = 0
    temperature: float = 1.0
    min_channels: float = 0.1
    channel_multiple: int = 8
    probe_batches: int = 16
    recovery_allowance: float = 0.75
    early_reject_margin: float | None = 0.02
    distill_weight: float = 1.0
    distill_temperature: float = 4.0
    distill_every: int = 1
    cost: str | CostFactory = "macs"
    export_onnx: bool = True
    netscore_units: NetScoreUnits = field(default_factory=NetScoreUnits)

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ValueError(f"synthesis.temperature={self.temperature} must be > 0")
        if not 0 < self.min_channels <= 1:
            raise ValueError(f"synthesis.min_channels={self.min_channels} must be a fraction in (0, 1]")
        for name in ("channel_multiple", "probe_batches"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"synthesis.{name}={value!r} is invalid: it must be an integer >= 1")
        if self.recovery_allowance < 0 or (self.early_reject_margin is not None and self.early_reject_margin < 0):
            raise ValueError(
                f"synthesis.recovery_allowance={self.recovery_allowance} and synthesis.early_reject_margin="
                f"{self.early_reject_margin} must be >= 0 (early_reject_margin=null: never reject early)"
            )
        check_distillation_settings(self.distill_weight, self.distill_temperature, self.distill_every)
        resolve_costs(self.cost)


DEFAULTS = SynthesisSettings()
