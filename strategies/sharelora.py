"""ShareLoRA (arXiv 2406.10785): LoRA with A and/or B shared across layers, per projection type.

Option `variant`: share_a (default; the paper's main variant), share_b, share_ab. Saves peft's format plus
sharelora.json; load re-ties the per-layer copies into one tensor per group.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from clsharelora.adapters import (
    ShareLoraConfig, apply_sharelora, expected_params, load_sharelora, save_sharelora,
)
from clsharelora.adapters.base import AdapterStrategy
from clsharelora.errors import ConfigError
from clsharelora.registry import register

SHARED_VARIANTS = ("share_a", "share_b", "share_ab")


@register("sharelora", "adapter")
class ShareLoRA(AdapterStrategy):
    defaults = {**AdapterStrategy.defaults, "variant": "share_a"}
    option_help = {**AdapterStrategy.option_help,
                   "variant": "share_a (one A per projection type) | share_b (one B) | share_ab (both)"}

    def validate(self) -> None:
        super().validate()
        if self.options["variant"] not in SHARED_VARIANTS:
            raise ConfigError(
                f"sharelora: option 'variant' must be one of {', '.join(SHARED_VARIANTS)}, "
                f"got {self.options['variant']!r} (plain LoRA is the 'lora' adapter)"
            )

    def adapter_config(self) -> ShareLoraConfig:
        o = self.options
        return ShareLoraConfig(variant=o["variant"], r=o["r"], alpha=o["alpha"], dropout=o["dropout"],
                               targets=o["targets"], rslora=o["rslora"], dropout_masks=o["dropout_masks"])

    def apply(self, model: torch.nn.Module) -> torch.nn.Module:
        return apply_sharelora(model, self.adapter_config())

    def save(self, model: torch.nn.Module, directory: str | os.PathLike, *, state_dict: dict | None = None) -> None:
        save_sharelora(model, directory, state_dict=state_dict)

    def load(self, base_model: torch.nn.Module, directory: str | os.PathLike, *,
             is_trainable: bool = True) -> torch.nn.Module:
        model = load_sharelora(base_model, directory, is_trainable=is_trainable)
        return self.with_dropout_masks(model) if is_trainable else model

    def expected_params(self, config: Any) -> int:
        return expected_params(config, self.options["variant"], self.options["r"], self.options["targets"])
