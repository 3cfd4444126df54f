"""The operational requirement 1_r: a monitored torchmetrics value and a threshold."""
from __future__ import annotations

import math


class Gate:
    """``monitor`` must reach ``threshold`` (absolute), or stay within ``threshold`` of the prototype's
    own score when ``relative`` (e.g. threshold=0.01: at most 1 point below φ's accuracy)."""

    def __init__(self, monitor: str = "val/acc", threshold: float = 0.01, relative: bool = True, higher_is_better: bool = True) -> None:
        if not isinstance(monitor, str) or not monitor:
            raise ValueError("gate.monitor must name a logged metric, e.g. 'val/acc'")
        if not math.isfinite(threshold):
            raise ValueError(f"gate.threshold={threshold} must be a finite number")
        if relative and threshold < 0:
            raise ValueError(f"gate.threshold={threshold}: a relative gate is the allowed drop from the prototype, use >= 0")
        self.monitor, self.threshold, self.relative, self.higher_is_better = monitor, float(threshold), relative, higher_is_better
        self.bound: float | None = None if relative else float(threshold)
        self.prototype_metric: float | None = None

    def resolve(self, prototype_metric: float) -> float:
        """Fix the bound from the prototype's score (relative gates need it) and return it."""
        self.prototype_metric = float(prototype_metric)
        if self.relative:
            sign = -1.0 if self.higher_is_better else 1.0
            self.bound = self.prototype_metric + sign * self.threshold
        return self.bound

    def margin(self, value: float) -> float:
        """How far ``value`` is on the passing side of the bound (negative: it fails)."""
        if self.bound is None:
            raise RuntimeError("a relative gate needs the prototype's score first: call resolve()")
        return value - self.bound if self.higher_is_better else self.bound - value

    def passes(self, value: float, allowance: float = 0.0) -> bool:
        """``value`` meets the bound, or comes within ``allowance`` of it (an intermediate candidate whose further
        fine-tuning is expected to recover that much)."""
        return math.isfinite(value) and self.margin(value) + allowance >= 0

    def describe(self) -> str:
        op = ">=" if self.higher_is_better else "<="
        bound = "?" if self.bound is None else f"{self.bound:.4f}"
        if self.relative:
            sign = "-" if self.higher_is_better else "+"
            base = "?" if self.prototype_metric is None else f"{self.prototype_metric:.4f}"
            return f"{self.monitor} {op} {bound} (prototype {base} {sign} {self.threshold:g})"
        return f"{self.monitor} {op} {bound}"

    @classmethod
    def from_record(cls, record: dict) -> "Gate":
        """The resolved, absolute gate a run recorded (``to_dict``: generator file, summary.json)."""
        return cls(record["metric"], record["threshold"], relative=False, higher_is_better=record.get("higher_is_better", True))

    def state_dict(self) -> dict:
        return {"bound": self.bound, "prototype_metric": self.prototype_metric}

    def load_state_dict(self, state: dict) -> None:
        self.bound, self.prototype_metric = state["bound"], state["prototype_metric"]

    def to_dict(self) -> dict:
        return {
            "metric": self.monitor,
            "threshold": self.bound,
            "relative": self.relative,
            "allowed_drop" if self.relative else "absolute": self.threshold,
            "higher_is_better": self.higher_is_better,
            "prototype_metric": self.prototype_metric,
        }
