"""Pluggable importance rules: how the inquisitor turns a channel's insights into one number (higher = keep).

Each rule is a small callable (Torch-Pruning's ``Importance`` pattern) taking the per-channel insight
tensors of one group, all in the same channel order, and returning one importance per channel. The
inquisitor divides it by the channel's MAC cost and ranks. Select one by name from the config
(``synthesis.inquisitor.importance=taylor``) or pass an instance.
"""
from __future__ import annotations

from typing import Protocol

from torch import Tensor

INSIGHTS = ("taylor", "entropy", "mutual_info", "redundancy", "magnitude")


class Importance(Protocol):
    def __call__(self, insights: dict[str, Tensor]) -> Tensor: ...


class InformationImportance:
    """Loss sensitivity weighted by how much information the response carries and how unique it is:
    taylor · (0.5 + 0.5 · max(entropy, mutual information)) · (1 − 0.5 · redundancy)."""

    def __call__(self, insights: dict[str, Tensor]) -> Tensor:
        information = insights["entropy"].maximum(insights["mutual_info"])
        return insights["taylor"] * (0.5 + 0.5 * information) * (1.0 - 0.5 * insights["redundancy"])


class TaylorImportance:
    """First-order Taylor loss sensitivity |Σ a · dL/da| alone (Molchanov et al. 2017)."""

    def __call__(self, insights: dict[str, Tensor]) -> Tensor:
        return insights["taylor"]


class MagnitudeImportance:
    """Mean absolute weight of the channel's producing layers (L1-magnitude pruning's criterion)."""

    def __call__(self, insights: dict[str, Tensor]) -> Tensor:
        return insights["magnitude"]


IMPORTANCES: dict[str, type] = {
    "information": InformationImportance,
    "taylor": TaylorImportance,
    "magnitude": MagnitudeImportance,
}


def resolve_importance(rule: str | Importance) -> Importance:
    """An importance rule from its name (``IMPORTANCES``) or the rule itself."""
    if isinstance(rule, str):
        if rule not in IMPORTANCES:
            raise ValueError(f"inquisitor.importance={rule!r} is unknown; choose one of {sorted(IMPORTANCES)}")
        return IMPORTANCES[rule]()
    if not callable(rule):
        raise TypeError(f"inquisitor.importance must be a rule name or a callable, got {type(rule).__name__}")
    return rule
