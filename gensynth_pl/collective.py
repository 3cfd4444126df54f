"""How the synthesis keeps several training processes in agreement (DDP ranks); a single process needs nothing."""
from __future__ import annotations

from typing import Any, Protocol

from torch import Tensor


class Collective(Protocol):
    is_main: bool

    def all_agree(self, decision: bool) -> bool: ...

    def mean(self, value: Tensor) -> Tensor: ...

    def broadcast(self, obj: Any) -> Any: ...


class SingleProcess:
    is_main = True

    def all_agree(self, decision: bool) -> bool:
        return decision

    def mean(self, value: Tensor) -> Tensor:
        return value

    def broadcast(self, obj: Any) -> Any:
        return obj
