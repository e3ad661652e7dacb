"""Plain LoRA (peft), the baseline: an A and a B per targeted module and layer.

Option `match` (share_a | share_b | share_ab; default none) makes it the parameter-matched control: the rank
becomes the one whose trainable count is nearest that of the named ShareLoRA variant at the configured r and
targets (closed form, `matched_lora_rank`); `r` then names the ShareLoRA rank being matched, and alpha is kept
as configured (peft's scaling becomes alpha / matched rank).
"""

from __future__ import annotations

from typing import Any

import torch

from clsharelora.adapters import ShareLoraConfig, apply_sharelora, expected_params
from clsharelora.adapters.base import AdapterStrategy
from clsharelora.adapters.config import ALL_LINEAR, parse_targets
from clsharelora.adapters.counting import matched_lora_rank
from clsharelora.errors import ConfigError
from clsharelora.registry import register

MATCHABLE = ("share_a", "share_b", "share_ab")


@register("lora", "adapter")
class LoRA(AdapterStrategy):
    """peft LoRA; options r, alpha, dropout, targets, rslora (AdapterStrategy.defaults) and match."""

    defaults = {**AdapterStrategy.defaults, "match": None}
    option_help = {**AdapterStrategy.option_help,
                   "match": "share_a | share_b | share_ab: train at the rank whose count matches that ShareLoRA "
                            "variant's at this r and targets (the confound control; docs/baselines.md)"}

    def validate(self) -> None:
        super().validate()
        match = self.options["match"]
        if match is not None and match not in MATCHABLE:
            raise ConfigError(f"lora: option 'match' must be one of {', '.join(MATCHABLE)} (or null), got {match!r}")
        spec = parse_targets(self.options["targets"])
        if match is not None and isinstance(spec, str) and spec != ALL_LINEAR:
            raise ConfigError(f"lora: option 'match' needs the closed-form count, so 'targets' must be all-linear "
                              f"or short names (q,k,v,o,gate,up,down), not the regex {self.options['targets']!r}")

    def matched(self, config: Any) -> dict[str, Any] | None:
        """The chosen rank and both counts when `match` is set (recorded in results.json and the dry run)."""
        o = self.options
        return None if o["match"] is None else matched_lora_rank(config, o["match"], o["r"], o["targets"])

    def rank(self, config: Any) -> int:
        matched = self.matched(config)
        return self.options["r"] if matched is None else matched["rank"]

    @property
    def variant_label(self) -> str | None:
        """How results name this run's variant: 'match_share_a' for the matched control, else plain LoRA."""
        return None if self.options["match"] is None else f"match_{self.options['match']}"

    def adapter_config(self, config: Any = None) -> ShareLoraConfig:
        o = self.options
        r = o["r"] if config is None else self.rank(config)
        return ShareLoraConfig(variant="lora", r=r, alpha=o["alpha"], dropout=o["dropout"], targets=o["targets"],
                               rslora=o["rslora"], dropout_masks=o["dropout_masks"])

    def apply(self, model: torch.nn.Module) -> torch.nn.Module:
        return apply_sharelora(model, self.adapter_config(model.config))

    def expected_params(self, config: Any) -> int:
        return expected_params(config, "lora", self.rank(config), self.options["targets"])
