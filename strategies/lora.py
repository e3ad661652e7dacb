"""Plain LoRA (peft), the baseline: an A and a B per targeted module and layer."""

from __future__ import annotations

from typing import Any

import torch

from clsharelora.adapters import ShareLoraConfig, apply_sharelora, expected_params
from clsharelora.adapters.base import AdapterStrategy
from clsharelora.registry import register


@register("lora", "adapter")
class LoRA(AdapterStrategy):
    """peft LoRA; options r, alpha, dropout, targets, rslora (AdapterStrategy.defaults)."""

    def adapter_config(self) -> ShareLoraConfig:
        o = self.options
        return ShareLoraConfig(variant="lora", r=o["r"], alpha=o["alpha"], dropout=o["dropout"],
                               targets=o["targets"], rslora=o["rslora"])

    def apply(self, model: torch.nn.Module) -> torch.nn.Module:
        return apply_sharelora(model, self.adapter_config())

    def expected_params(self, config: Any) -> int:
        return expected_params(config, "lora", self.options["r"], self.options["targets"])
