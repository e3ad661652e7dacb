"""VeRA (peft): one frozen random A and B shared by all layers, trainable scaling vectors per layer.

A cheap extra baseline for ShareLoRA: sharing taken to the limit. Trainable params per targeted module:
r (lambda_d) + d_out (lambda_b).
"""

from __future__ import annotations

from typing import Any

import torch

from clsharelora.adapters.base import AdapterStrategy
from clsharelora.adapters.config import resolve_targets
from clsharelora.adapters.counting import projection_dims
from clsharelora.errors import ConfigError
from clsharelora.registry import register


@register("vera", "adapter")
class VeRA(AdapterStrategy):
    """Defaults follow peft's VeraConfig (r=256, no dropout, d_initial=0.1); rslora/alpha do not apply."""

    defaults = {"r": 256, "dropout": 0.0, "targets": "all-linear", "d_initial": 0.1, "projection_prng_key": 0,
                "save_projection": True}
    option_help = {**AdapterStrategy.option_help, "r": "rank of the shared frozen random projections",
                   "d_initial": "initial value of the trainable scaling vector d",
                   "projection_prng_key": "seed of the frozen random A and B",
                   "save_projection": "store A and B in the checkpoint (else regenerated from the key)"}

    def validate(self) -> None:
        super().validate()
        d = self.options["d_initial"]
        if isinstance(d, bool) or not isinstance(d, (int, float)):
            raise ConfigError(f"vera: option 'd_initial' must be a number, got {d!r}")
        if isinstance(self.options["projection_prng_key"], bool) or not isinstance(
                self.options["projection_prng_key"], int):
            raise ConfigError(f"vera: option 'projection_prng_key' must be an integer, "
                              f"got {self.options['projection_prng_key']!r}")
        if not isinstance(self.options["save_projection"], bool):
            raise ConfigError(f"vera: option 'save_projection' must be true or false, "
                              f"got {self.options['save_projection']!r}")

    def apply(self, model: torch.nn.Module) -> torch.nn.Module:
        from peft import VeraConfig, get_peft_model

        o = self.options
        names = resolve_targets(model, o["targets"])
        config = VeraConfig(r=o["r"], target_modules=sorted(names), vera_dropout=float(o["dropout"]),
                            d_initial=float(o["d_initial"]), projection_prng_key=o["projection_prng_key"],
                            save_projection=o["save_projection"], bias="none")
        return get_peft_model(model, config)

    def expected_params(self, config: Any) -> int:
        r = self.options["r"]
        return sum(layers * (r + d_out) for _, d_out, layers in projection_dims(config, self.options["targets"]).values())
