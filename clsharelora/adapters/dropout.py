"""Option `dropout_masks`: peft's per-module LoRA dropout masks, or one mask per distinct input tensor.

Why: peft gives every adapted projection its own `nn.Dropout`, so q/k/v (and gate/up), which read the same
hidden states, each draw a full-size Bernoulli mask: 7 draws per Llama layer, ~14 % of a CPU step at
p = 0.05 (issue #28). `per_input` puts one `InputDropout` module in every `lora_dropout[adapter]` slot (an
ordinary ModuleDict entry; peft's code is unchanged). It remembers the last input it saw and its scaled
mask, and reuses the mask when the very same tensor (same object, same version) comes again, as it does
for q, k and v and for gate and up: 4 draws per layer instead of 7, and one saved mask instead of three.

What differs from peft: each projection still sees Bernoulli(1 - p) masks scaled by 1 / (1 - p), but q, k
and v (gate and up) now see the *same* mask within a step, so their dropout noise is correlated instead of
independent. Gradient checkpointing recomputes a layer with the RNG state restored (torch.utils.checkpoint
preserves it) and the draws happen in the same order, so the recomputed masks equal the original ones.
"""

from __future__ import annotations

import weakref

import torch

from ..errors import ConfigError

OPTION = "dropout_masks"
CHOICES = ("per_module", "per_input")
DEFAULT = "per_module"
HELP = ("per_module (peft: every projection draws its own dropout mask) | per_input (one mask per input "
        "tensor: q/k/v and gate/up share it; fewer draws; docs/sharelora.md)")


def check(value, owner: str = "option") -> str:
    if value not in CHOICES:
        raise ConfigError(f"{owner} {OPTION!r} must be one of {', '.join(CHOICES)}, got {value!r}")
    return value


class InputDropout(torch.nn.Module):
    """Inverted dropout whose mask is drawn once per distinct input tensor and reused for that tensor."""

    def __init__(self, p: float) -> None:
        super().__init__()
        if not 0 < p < 1:
            raise ConfigError(f"InputDropout: p must be in (0, 1), got {p!r}")
        self.p = float(p)
        self._input: weakref.ref | None = None
        self._version = -1
        self._mask: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        if self._input is None or self._input() is not x or self._version != x._version:
            # a new input: drop the old entry first (its mask must not outlive the step it belongs to)
            self._mask = None
            self._mask = torch.empty_like(x).bernoulli_(1 - self.p).div_(1 - self.p)
            self._input, self._version = weakref.ref(x), x._version
        return x * self._mask

    def clear(self) -> None:
        self._input, self._version, self._mask = None, -1, None

    def train(self, mode: bool = True) -> "InputDropout":
        self.clear()
        return super().train(mode)

    def extra_repr(self) -> str:
        return f"p={self.p}, one mask per input tensor"


def use_input_dropout(model: torch.nn.Module, adapter_name: str = "default") -> InputDropout | None:
    """Replace every `lora_dropout[adapter_name]` nn.Dropout of `model` by one shared InputDropout (in place);
    returns it, or None when the adapter has no dropout (p = 0: peft's Identity, nothing to draw)."""
    slots = [m.lora_dropout for m in model.modules()
             if isinstance(getattr(m, "lora_dropout", None), torch.nn.ModuleDict) and adapter_name in m.lora_dropout]
    ps = {float(s[adapter_name].p) for s in slots if isinstance(s[adapter_name], torch.nn.Dropout)}
    if not ps:
        return None
    if len(ps) > 1:
        raise ConfigError(f"{OPTION}=per_input: the adapter's modules use different dropout rates {sorted(ps)}")
    shared = InputDropout(ps.pop())
    shared.train(model.training)
    for s in slots:
        s[adapter_name] = shared
    return shared
