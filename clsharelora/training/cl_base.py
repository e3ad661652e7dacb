"""The contract of a continual-learning method plug-in: the Avalanche plugins it adds to training."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..registry import Strategy


@dataclass
class CLContext:
    """What a CL method may need to build its plugins."""

    seed: int
    datasets: list[Any]                  # the AvalancheDataset of every experience, in stream order
    dist: Any = None
    extra: dict[str, Any] = field(default_factory=dict)


class CLStrategy(Strategy):
    """kind "cl": returns Avalanche SupervisedPlugins; plugins with state_dict()/load_state_dict()
    are checkpointed and restored on resume."""

    def plugins(self, context: CLContext) -> list:
        return []
