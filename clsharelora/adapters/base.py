"""`AdapterStrategy`: the contract every adapter plug-in (strategies/*.py) fulfils.

An adapter strategy decides how a base model gets its trainable parameters. Training code only calls
apply / save / load; analysis calls expected_params to check the measured trainable count.
Options every adapter shares (r, alpha, dropout, targets, rslora) are validated here, so a new plug-in
only adds its own.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar

import torch

from ..errors import ConfigError
from ..registry import Strategy
from .config import parse_targets
from .dropout import DEFAULT as DROPOUT_MASKS_DEFAULT
from .dropout import HELP as DROPOUT_MASKS_HELP
from .dropout import OPTION as DROPOUT_MASKS
from .dropout import check as check_dropout_masks
from .dropout import use_input_dropout


class AdapterStrategy(Strategy):
    """Base of adapter plug-ins (kind "adapter"). Defaults: r=8, alpha=16, dropout=0.05, targets=all-linear."""

    kind: ClassVar[str] = "adapter"
    defaults: ClassVar[dict[str, Any]] = {
        "r": 8, "alpha": 16, "dropout": 0.05, "targets": "all-linear", "rslora": False,
        DROPOUT_MASKS: DROPOUT_MASKS_DEFAULT,
    }
    option_help: ClassVar[dict[str, str]] = {
        "r": "rank of the low-rank update (positive integer)",
        "alpha": "scaling numerator: the update is scaled by alpha / r (alpha / sqrt(r) with rslora)",
        "dropout": "dropout on the adapter's input, in [0, 1)",
        "targets": "adapted linear layers: all-linear | q,k,v,o,gate,up,down names | module suffixes | re:<regex>",
        "rslora": "rank-stabilised scaling alpha / sqrt(r) (peft use_rslora)",
        DROPOUT_MASKS: DROPOUT_MASKS_HELP,
    }

    def validate(self) -> None:
        o = self.options
        if "r" in o and (isinstance(o["r"], bool) or not isinstance(o["r"], int) or o["r"] <= 0):
            raise ConfigError(f"{self.name}: option 'r' must be a positive integer, got {o['r']!r}")
        if "alpha" in o and (isinstance(o["alpha"], bool) or not isinstance(o["alpha"], (int, float))
                             or o["alpha"] <= 0):
            raise ConfigError(f"{self.name}: option 'alpha' must be a positive number, got {o['alpha']!r}")
        if "dropout" in o and (isinstance(o["dropout"], bool) or not isinstance(o["dropout"], (int, float))
                               or not 0 <= o["dropout"] < 1):
            raise ConfigError(f"{self.name}: option 'dropout' must be in [0, 1), got {o['dropout']!r}")
        if "rslora" in o and not isinstance(o["rslora"], bool):
            raise ConfigError(f"{self.name}: option 'rslora' must be true or false, got {o['rslora']!r}")
        if DROPOUT_MASKS in o:
            check_dropout_masks(o[DROPOUT_MASKS], f"{self.name}: option")
        if "targets" in o:
            try:
                parse_targets(o["targets"])
            except ConfigError as exc:
                raise ConfigError(f"{self.name}: {exc}") from None

    def apply(self, model: torch.nn.Module) -> torch.nn.Module:
        """Return a peft model around `model` in which only the adapter's parameters are trainable."""
        raise NotImplementedError(f"adapter strategy {self.name!r} must implement apply()")

    def expected_params(self, config: Any) -> int:
        """Closed-form trainable-parameter count of this adapter on an architecture config."""
        raise NotImplementedError(f"adapter strategy {self.name!r} must implement expected_params()")

    def save(self, model: torch.nn.Module, directory: str | os.PathLike, *, state_dict: dict | None = None) -> None:
        """Default: peft's save_pretrained (adapter_config.json + adapter_model.safetensors). `state_dict`:
        the tensors gathered whole, for a model that holds only shards (train.engine=fsdp)."""
        model.save_pretrained(str(directory), **({} if state_dict is None else {"state_dict": state_dict}))

    def load(self, base_model: torch.nn.Module, directory: str | os.PathLike, *,
             is_trainable: bool = True) -> torch.nn.Module:
        """Default: peft's PeftModel.from_pretrained."""
        from peft import PeftModel

        if not (Path(directory) / "adapter_config.json").is_file():
            raise ConfigError(f"{directory}: no adapter_config.json; not a saved adapter directory")
        model = PeftModel.from_pretrained(base_model, str(directory), is_trainable=is_trainable)
        return self.with_dropout_masks(model) if is_trainable else model

    def with_dropout_masks(self, model: torch.nn.Module) -> torch.nn.Module:
        """A loaded model trains with the same `dropout_masks` choice as an applied one (peft's load knows
        only per-module dropout)."""
        if self.options.get(DROPOUT_MASKS) == "per_input":
            use_input_dropout(model)
        return model
