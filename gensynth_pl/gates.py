"""The operational requirement 1_r: monitored torchmetrics values with thresholds, and cost budgets."""
from __future__ import annotations

import math
from dataclasses import asdict

from torch import nn

from gensynth_pl.latency import LatencyMeter
from gensynth_pl.metrics import Verdict


class Gate:
    """One metric condition of 1_r: ``monitor`` must reach ``threshold`` (absolute), or stay within ``threshold`` of
    the prototype's own score when ``relative`` (threshold=0.01: at most 1 point below φ's accuracy).

    A relative gate has no bound until ``resolve`` gives it φ's score; the synthesis does that after φ's training.

    Args:
        monitor: the logged metric (``val/acc``, ``val/miou``, ``val/map_50``, or any name your module logs at the
            end of every validation epoch).
        threshold: the bound itself (absolute), or the allowed distance from φ's score (relative, >= 0).
        relative: measure ``threshold`` from the prototype's score.
        higher_is_better: False for metrics to minimise (a loss): the bound is then an upper bound.

    Raises:
        ValueError: an empty ``monitor``, a non-finite ``threshold``, or a negative ``threshold`` on a relative gate.

    Example:
        ```python
        gate = Gate("val/acc", threshold=0.01)            # at most 1 point below φ
        gate.resolve(0.9120)                              # φ's score: the bound becomes 0.9020
        gate.passes(0.9050), gate.describe()              # (True, 'val/acc >= 0.9020 (prototype 0.9120 - 0.01)')
        Gate("val/acc", threshold=0.89, relative=False)   # the paper's "accuracy >= 89%"
        ```
    """

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
        return cls(record["metric"], record["bound"], relative=False, higher_is_better=record["higher_is_better"])

    def state_dict(self) -> dict:
        return {"bound": self.bound, "prototype_metric": self.prototype_metric}

    def load_state_dict(self, state: dict) -> None:
        self.bound, self.prototype_metric = state["bound"], state["prototype_metric"]

    def to_dict(self) -> dict:
        """``bound``: the value a network must reach (resolved from φ when relative); ``threshold``: as configured
        (the allowed drop of a relative gate, the bound itself of an absolute one)."""
        return {
            "metric": self.monitor,
            "bound": self.bound,
            "threshold": self.threshold,
            "relative": self.relative,
            "higher_is_better": self.higher_is_better,
            "prototype_metric": self.prototype_metric,
        }


class Requirements:
    """1_r as users state it: a conjunction of metric gates and cost budgets, all of which the answer must meet.

    The first gate is the primary one: what the run's recovery allowance and early rejection measure. A budget never
    rejects an intermediate candidate: it keeps the compression going until a network meets it. The answer is the
    network with the highest NetScore that meets every condition; when none does, the run keeps the closest one and
    says which condition failed. In Hydra this is the ``gate`` node of ``python train.py``.

    Args:
        monitor: the primary gate's metric, as ``Gate``.
        threshold: the primary gate's bound, as ``Gate``.
        relative: the primary gate's threshold is measured from φ's score, as ``Gate``.
        higher_is_better: as ``Gate``.
        metrics: more metric gates, as ``Gate`` arguments in dicts (or ``Gate`` objects), e.g.
            ``({"monitor": "val/acc_macro", "threshold": 0.02},)``.
        max_macs: a MAC budget: a count, or a fraction of φ's MACs when at most 1.
        max_params: a parameter budget: a count, or a fraction of φ's parameters when at most 1.
        max_latency_ms: median milliseconds per batch, measured on this machine as ``latency`` says.
        latency: how latency is measured: runtime (``onnxruntime`` or ``pytorch``), batch, threads, repeats.

    Raises:
        ValueError: a budget that is not > 0, or an invalid metric gate (see ``Gate``). A budget below the smallest
            network the prototype can become is an error when the synthesis starts, before any training.

    Example:
        ```python
        requirements = Requirements("val/acc", threshold=0.01, max_macs=0.25,
                                    metrics=({"monitor": "val/acc_macro", "threshold": 0.02},))
        synthesis = GenerativeSynthesis(requirements, network_attr="backbone")
        ```
    """

    def __init__(
        self,
        monitor: str = "val/acc",
        threshold: float = 0.01,
        relative: bool = True,
        higher_is_better: bool = True,
        metrics: tuple[dict, ...] = (),
        max_macs: float | None = None,
        max_params: float | None = None,
        max_latency_ms: float | None = None,
        latency: LatencyMeter = LatencyMeter(),
    ) -> None:
        self.primary = Gate(monitor, threshold, relative, higher_is_better)
        self.gates = [self.primary, *(m if isinstance(m, Gate) else Gate(**dict(m)) for m in metrics)]
        for name, limit in (("max_macs", max_macs), ("max_params", max_params), ("max_latency_ms", max_latency_ms)):
            if limit is not None and not limit > 0:
                raise ValueError(f"gate.{name}={limit} must be > 0 (null: no budget)")
        self.limits = {"macs": max_macs, "params": max_params, "latency_ms": max_latency_ms}
        self.latency = latency
        self.bounds: dict[str, float] = {}  # budgets resolved against the prototype

    @classmethod
    def of(cls, gate: "Gate | Requirements") -> "Requirements":
        """Requirements from a single gate (the Python API's ``Gate(...)``), or as given."""
        if isinstance(gate, Requirements):
            return gate
        requirements = cls(gate.monitor, gate.threshold, gate.relative, gate.higher_is_better)
        requirements.primary = requirements.gates[0] = gate
        return requirements

    @classmethod
    def from_record(cls, record: dict) -> "Requirements":
        """Every condition a run resolved (``to_dict``): absolute metric gates and budgets, so a network built
        later from the run's generator is judged exactly as the run's own candidates were. A single gate's record
        (``Gate.to_dict``) holds no other conditions."""
        requirements = cls.of(Gate.from_record(record))
        requirements.gates += [Gate.from_record(gate) for gate in record.get("metrics", [])]
        requirements.limits.update(record.get("budgets", {}))
        requirements.bounds = dict(record.get("budgets", {}))
        if record.get("latency"):
            requirements.latency = LatencyMeter(**record["latency"])
        return requirements

    @property
    def budgets(self) -> dict[str, float]:
        return {name: limit for name, limit in self.limits.items() if limit is not None}

    def resolve_budgets(self, prototype_macs: int, prototype_params: int) -> dict[str, float]:
        """Fractions of the prototype's MACs/params become counts."""
        scale = {"macs": prototype_macs, "params": prototype_params, "latency_ms": 1.0}
        self.bounds = {n: (v * scale[n] if n != "latency_ms" and v <= 1 else float(v)) for n, v in self.budgets.items()}
        return self.bounds

    def resolve(self, prototype_metrics: dict[str, float]) -> None:
        for gate in self.gates:
            gate.resolve(prototype_metrics[gate.monitor])

    def costs(self, network: nn.Module, input_shape: tuple[int, ...], macs: int, params: int) -> dict[str, float]:
        """The network's value for each budget (latency measured only when there is a latency budget)."""
        values = {"macs": float(macs), "params": float(params)}
        if "latency_ms" in self.bounds:
            values["latency_ms"] = self.latency.measure(network, input_shape)
        return {name: values[name] for name in self.bounds}

    def verdicts(self, metrics: dict[str, float], costs: dict[str, float] | None, allowance: float = 0.0) -> list[Verdict]:
        """Every condition's verdict (the metric gates' alone when ``costs`` is None); metric gates within
        ``allowance`` of their bound pass."""
        verdicts = []
        for gate in self.gates:
            value = metrics.get(gate.monitor, math.nan)
            op = ">=" if gate.higher_is_better else "<="
            verdicts.append(Verdict(gate.monitor, value, gate.bound, gate.passes(value, allowance), False, op))
        if costs is not None:
            verdicts += [Verdict(n, costs[n], b, costs[n] <= b, True, "<=") for n, b in self.bounds.items()]
        return verdicts

    def describe(self) -> str:
        budgets = [f"{n} <= {self.bounds.get(n, v):.4g}" for n, v in self.budgets.items()]
        if "latency_ms" in self.budgets:
            budgets[-1] += f" ({self.latency.describe()})"
        return " and ".join([g.describe() for g in self.gates] + budgets)

    def to_dict(self) -> dict:
        """The primary gate's record (what summary.json's ``gate`` always held), with the other conditions."""
        return {**self.primary.to_dict(), "metrics": [g.to_dict() for g in self.gates[1:]], "budgets": dict(self.bounds),
                "latency": asdict(self.latency) if "latency_ms" in self.budgets else None}

    def state_dict(self) -> dict:
        return {"gates": [g.state_dict() for g in self.gates], "bounds": dict(self.bounds)}

    def load_state_dict(self, state: dict) -> None:
        for gate, gate_state in zip(self.gates, state["gates"]):
            gate.load_state_dict(gate_state)
        self.bounds = dict(state["bounds"])
