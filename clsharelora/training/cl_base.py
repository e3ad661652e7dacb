"""The contract of a continual-learning method plug-in: the Avalanche plugins it adds to training, plus four
optional hooks (all no-ops by default) for methods that change more than the training loop:

- `check_model(model)`: refuse an adapter this method cannot work with, on the meta-device model, before
  anything is written (O-LoRA and LwF need peft LoRA layers);
- `schedule(experiences)`: which experiences the runner trains (joint training trains one, on the union);
- `plan(model, adapter_params, n_experiences)`: extra dry-run lines (O-LoRA's per-experience counts);
- a plugin method `save_adapters(model, directory)`: called by the scoring plugin after the adapter strategy
  saved an experience's adapter into `directory`, to add what that row also needs (O-LoRA's frozen adapters).
"""

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
    model: Any = None                    # the peft model being trained (adapter already applied)
    store: Any = None                    # the run's ResultsStore (per-experience cost figures go in .cost)
    extra: dict[str, Any] = field(default_factory=dict)


class CLStrategy(Strategy):
    """kind "cl": returns Avalanche SupervisedPlugins; plugins with state_dict()/load_state_dict()
    are checkpointed and restored on resume."""

    def plugins(self, context: CLContext) -> list:
        return []

    def check_model(self, model) -> None:
        """Raise ConfigError when the adapted `model` (on the meta device) is one this method cannot train."""

    def schedule(self, experiences: list) -> list:
        """The experiences to train, in order (default: all of them, one after another)."""
        return experiences

    def plan(self, model, adapter_params: int, n_experiences: int) -> list[str]:
        """Dry-run lines about this method's parameters on the meta-device `model` (default: none)."""
        return []
